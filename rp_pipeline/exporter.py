"""Prometheus exporter: `/metrics` from the state the syncs leave in Postgres and Redis.

Nothing is counted in this process: every scrape reads the bookkeeping in Postgres
(`sync_status`, one row per source and entity, with its watermark and oldest waiting
record) and the id counters in Redis, so the figures are right however the syncs run
(Dagster schedule, CLI, API, one process or many). One scrape costs a fixed number of
round trips (README, "Monitoring"): Redis 1 pipeline (generation marker + 6 counters)
and 1 more when something waits (one HMGET per waiting entity), Postgres 2 statements; with
several sources in REDIS_URL, that per source, the sources read side by side.

Each server is read under a short deadline. A server that is down, silent or refuses
the credentials turns `rp_pipeline_up{target=...}` to 0 and the values read from it
last are repeated with the time they were read as their timestamp.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

import psycopg
import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from .backlog import COUNTED, counter_keys, counter_value, unsynced_ids
from .bookkeeping import source_labels, sync_status
from .connections import WatchedConnection
from .entities import BY_NAME, EntitySpec
from .errors import first_line
from .layout import GENERATION_KEY
from .settings import (
    ConfigError,
    SyncConfig,
    hide_passwords,
    psycopg_url,
    redact_url,
)
from .writer import is_cluster_node

log = logging.getLogger("rp_pipeline")

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 9188
READ_DEADLINE_SECONDS = (
    2.0  # per server; a scrape answers within about twice this, well under Prometheus's 10 s
)
OUTCOMES = ("inserted", "updated", "unchanged", "skipped", "rejected")
LABELS = ("entity", "source")

# name: (type, help, extra label names). Help texts are fixed strings: no URL, no password.
METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "rp_pipeline_backlog_records": (
        "gauge",
        "Records in Redis not yet in Postgres: ids allocated past the watermark plus records waiting "
        "(pending); only entities with an id counter",
        (),
    ),
    "rp_pipeline_lag_seconds": (
        "gauge",
        "Age of the oldest record still waiting (first unsynced id's timestamp, oldest pending record); "
        "0 when nothing waits; only entities with an id counter",
        (),
    ),
    "rp_pipeline_last_success_timestamp_seconds": (
        "gauge",
        "Unix time the last successful sync of the entity committed",
        (),
    ),
    "rp_pipeline_last_attempt_timestamp_seconds": (
        "gauge",
        "Unix time the last sync of the entity started, successful or not",
        (),
    ),
    "rp_pipeline_sync_duration_seconds": (
        "gauge",
        "Duration of the last successful sync of the entity",
        (),
    ),
    "rp_pipeline_rows": (
        "counter",
        "Records handled by successful syncs, by outcome",
        ("outcome",),
    ),
    "rp_pipeline_sync_attempts": ("counter", "Entity syncs started", ()),
    "rp_pipeline_sync_successes": ("counter", "Entity syncs committed", ()),
    "rp_pipeline_rejected_records": (
        "gauge",
        "Records held in the rejected-records table, as of the last sync",
        (),
    ),
    "rp_pipeline_pending_records": (
        "gauge",
        "Records waiting for a parent or for their hash, as of the last sync",
        (),
    ),
}


@dataclass
class Sample:
    name: str
    labels: dict[str, str]
    value: float


@dataclass
class Reading:
    """Samples read from one or two servers, and when (for repeating them while a server is out)."""

    samples: list[Sample] = field(default_factory=list)
    read_at: float = 0.0


def timestamp_of(text: str | None) -> float | None:
    """Unix time of an aidb timestamp (naive ISO-8601 = UTC); None when absent or unreadable."""
    if not text or not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


def created_field(spec: EntitySpec) -> str | None:
    """The Redis field that dates a record of this entity (for the lag), if it has one."""
    names = {c.name: c.redis_field for c in spec.columns}
    return next((names[n] for n in ("timestamp", "created_at", "started_at") if n in names), None)


class SyncCollector:
    """Reads Postgres and Redis at each `collect()` (one at a time) and yields the metric families."""

    def __init__(
        self,
        config: SyncConfig,
        deadline_seconds: float = READ_DEADLINE_SECONDS,
        sync_interval_seconds: float | None = None,
    ):
        self.config = config
        self.deadline = deadline_seconds
        self.sync_interval = sync_interval_seconds
        self._lock = threading.Lock()
        self._conn: psycopg.Connection | None = None
        self._options = dict(
            decode_responses=True,
            encoding_errors="surrogateescape",
            socket_timeout=deadline_seconds,
            socket_connect_timeout=deadline_seconds,
        )
        try:
            self._redis = redis.Redis.from_url(
                config.redis_url, retry=Retry(NoBackoff(), 0), **self._options
            )  # one try: no doubled deadline
        except ValueError:
            raise ConfigError(
                f"REDIS_URL is not a valid Redis URL ({redact_url(config.redis_url)})"
            ) from None
        self._is_cluster: bool | None = None  # known at the first scrape that reaches Redis
        self._last = {"postgres": Reading(), "backlog": Reading()}
        self._current: str | None = None  # origin of the data set the marker names, once known
        self._up = {"redis": None, "postgres": None}
        self.named = ""  # " (source <label>)" in its log lines when the exporter reads several

    # -- reading ---------------------------------------------------------------------------------
    def _postgres(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            url = self.config.require_postgres_url()
            ms = int(self.deadline * 1000)
            conn = WatchedConnection.connect(
                psycopg_url(url),
                autocommit=True,
                connect_timeout=max(2, round(self.deadline)),
                application_name="rp_pipeline_exporter",
                options=f"-c statement_timeout={ms} -c lock_timeout={ms}",
            )
            conn.deadline_seconds = self.deadline + 1  # a server that stops answering mid-query
            self._conn = conn
        return self._conn

    def _client(self) -> redis.Redis | RedisCluster:
        """The Redis to read; a Redis Cluster node is swapped for a cluster client once detected, since a
        plain client would read the counters of the node's own slots only (the others as no sample)."""
        if self._is_cluster is None:
            self._is_cluster = is_cluster_node(self._redis)
            if self._is_cluster:
                self._redis.close()
                self._redis = RedisCluster.from_url(self.config.redis_url, **self._options)
        return self._redis

    def _read_redis_counters(self) -> tuple[str | None, dict[str, int | None]]:
        """The generation marker (GET only: the exporter never writes) and every id counter, in one round trip
        (one per node on a cluster)."""
        prefix = self.config.key_prefix
        pipe = self._client().pipeline(transaction=False)
        pipe.get(prefix + GENERATION_KEY)
        for key in counter_keys(prefix):
            pipe.get(key)
        marker, *values = pipe.execute(raise_on_error=False)
        # None: unreadable, reported as no sample
        counters = {spec.name: counter_value(value) for spec, value in zip(COUNTED, values)}
        return (marker if isinstance(marker, str) else None), counters

    def _oldest_unsynced(self, first_ids: dict[str, int]) -> dict[str, float | None]:
        """Timestamp of the first record past each watermark: one HMGET per entity, one round trip."""
        asked = [
            (BY_NAME[name], first_id)
            for name, first_id in first_ids.items()
            if created_field(BY_NAME[name])
        ]
        if not asked:
            return {}
        pipe = self._client().pipeline(transaction=False)
        for spec, first_id in asked:
            pipe.hmget(self.config.key_prefix + spec.key.format(id=first_id), [created_field(spec)])
        replies = pipe.execute(raise_on_error=False)
        return {
            spec.name: timestamp_of(reply[0]) if isinstance(reply, list) else None
            for (spec, _), reply in zip(asked, replies)
        }

    def _label(self, labels: dict[str, str | None], source: str) -> str:
        """The `source` label: SYNC_SOURCE as the sync recorded it (else as this exporter is configured),
        else the address this exporter reads (host:port/db/prefix, never credentials); both stay the
        same across a Redis flush, unlike the data set's origin."""
        return labels.get(source) or self.config.source or self.config.redis_address

    def scrape(self) -> list[Metric]:
        with self._lock:
            now = time.time()
            marker = counters = rows = None
            labels: dict[str, str] = {}
            try:
                marker, counters = self._read_redis_counters()
                self._set_up("redis", True)
            except redis.RedisError as exc:
                self._set_up("redis", False, exc)
            try:
                conn = self._postgres()
                labels, resolved = source_labels(conn, self.config.sync_schema, marker)
                self._current = resolved or self._current
                # Only the data set the marker names: after a flush the previous one is history, and its
                # frozen last success must not look like a stale sync.
                rows = [
                    row
                    for row in sync_status(conn, self.config.sync_schema)
                    if row["source"] == self._current
                ]
                self._set_up("postgres", True)
                self._last["postgres"] = Reading(self._status_samples(rows, labels), now)
            except (psycopg.Error, ConfigError) as exc:
                self._close_postgres()
                self._set_up("postgres", False, exc)
            if counters is not None and rows is not None:
                try:
                    self._last["backlog"] = Reading(
                        self._backlog_samples(marker, counters, rows, self._current, labels), now
                    )
                except redis.RedisError as exc:
                    self._set_up("redis", False, exc)
            return self._families(now)

    def _status_samples(self, rows: list[dict], labels: dict[str, str]) -> list[Sample]:
        samples = []
        for row in rows:
            tags = {"entity": row["entity"], "source": self._label(labels, row["source"])}
            for name, column in (
                ("rp_pipeline_last_success_timestamp_seconds", "last_success"),
                ("rp_pipeline_last_attempt_timestamp_seconds", "last_attempt"),
                ("rp_pipeline_sync_duration_seconds", "last_duration_seconds"),
                ("rp_pipeline_sync_attempts", "attempts"),
                ("rp_pipeline_sync_successes", "successes"),
                ("rp_pipeline_rejected_records", "rejected_held"),
                ("rp_pipeline_pending_records", "pending"),
            ):
                if row[column] is not None:
                    samples.append(Sample(name, tags, float(row[column])))
            samples += [
                Sample("rp_pipeline_rows", {**tags, "outcome": o}, float(row[f"{o}_total"]))
                for o in OUTCOMES
            ]
        return samples

    def _backlog_samples(
        self,
        marker: str | None,
        counters: dict[str, int | None],
        rows: list[dict],
        current: str | None,
        labels: dict[str, str | None],
    ) -> list[Sample]:
        """Backlog and lag of the configured Redis: counter minus the watermark of its current generation
        (a watermark from before a flush counts as 0), plus the records held as pending."""
        mine = {row["entity"]: row for row in rows if row["source"] == current}
        synced = {
            name: int(row["last_id"])
            for name, row in mine.items()
            if row.get("last_id") is not None and row.get("generation") == marker
        }
        unsynced = unsynced_ids(counters, synced)
        backlog = {
            name: ids + int(mine.get(name, {}).get("pending") or 0)
            for name, ids in unsynced.items()
        }
        waiting_from = {name: synced.get(name, 0) + 1 for name, ids in unsynced.items() if ids}
        dated = self._oldest_unsynced(waiting_from)
        now = time.time()
        samples = []
        source = self._label(labels, current)
        for name, count in backlog.items():
            tags = {"entity": name, "source": source}
            ages = [
                now - dated[name] if dated.get(name) is not None else None,
                mine.get(name, {}).get("oldest_pending_age"),
            ]
            lag = max([max(0.0, float(a)) for a in ages if a is not None], default=0.0)
            samples += [
                Sample("rp_pipeline_backlog_records", tags, float(count)),
                Sample("rp_pipeline_lag_seconds", tags, lag),
            ]
        return samples

    def _families(self, now: float) -> list[Metric]:
        families: dict[str, Metric] = {}
        for name, (kind, help_text, extra) in METRICS.items():
            cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            families[name] = cls(name, help_text, labels=[*LABELS, *extra])
        for reading in self._last.values():
            fresh = reading.read_at == now
            for sample in reading.samples:
                families[sample.name].add_metric(
                    [sample.labels[k] for k in (*LABELS, *METRICS[sample.name][2])],
                    sample.value,
                    timestamp=None if fresh else reading.read_at,
                )
        up = GaugeMetricFamily(
            "rp_pipeline_up",
            "1 if the server answered this scrape within the deadline, else 0",
            labels=["target"],
        )
        for target, ok in self._up.items():
            up.add_metric([target], 1.0 if ok else 0.0)
        info = InfoMetricFamily(
            "rp_pipeline_build", "Version of rp_pipeline and of Python serving these metrics"
        )
        info.add_metric([], build_info())
        result = [*families.values(), up, info]
        if self.sync_interval:
            interval = GaugeMetricFamily(
                "rp_pipeline_sync_interval_seconds",
                "Configured seconds between syncs (for the stale-sync alert)",
            )
            interval.add_metric([], float(self.sync_interval))
            result.append(interval)
        return result

    def _set_up(self, target: str, ok: bool, exc: BaseException | None = None) -> None:
        if not ok and self._up[target] is not False:
            log.warning(
                "metrics: %s%s unreachable (%s); serving its last values with their timestamps",
                target,
                self.named,
                self._describe(exc),
            )
        elif ok and self._up[target] is False:
            log.info("metrics: %s%s answers again", target, self.named)
        self._up[target] = ok

    def _describe(self, exc: BaseException | None) -> str:
        text = first_line(exc) if exc is not None else "unknown error"
        urls = (self.config.postgres_url, *(s.redis_url for s in self.config.sources))
        return hide_passwords(text, urls)

    def _close_postgres(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None

    def collect(self) -> Iterator[Metric]:
        yield from self.scrape()

    def close(self) -> None:
        with self._lock:
            self._close_postgres()
            self._redis.close()


class SourcesCollector:
    """Several sources: one SyncCollector per source, read side by side at each scrape (so a scrape
    still answers within one source's deadline), their series merged, each labelled source=<label>.
    `rp_pipeline_up` gains the `source` label: each source's Redis and its Postgres connection."""

    def __init__(
        self,
        config: SyncConfig,
        deadline_seconds: float = READ_DEADLINE_SECONDS,
        sync_interval_seconds: float | None = None,
    ):
        self.collectors: list[SyncCollector] = []
        try:
            for label in config.labels:
                collector = SyncCollector(
                    config.for_source(label), deadline_seconds, sync_interval_seconds
                )
                collector.named = f" (source {label})"
                self.collectors.append(collector)
        except ConfigError:
            self.close()
            raise
        self._pool = ThreadPoolExecutor(len(self.collectors), thread_name_prefix="rp_metrics")

    def scrape(self) -> list[Metric]:
        readings = list(self._pool.map(SyncCollector.scrape, self.collectors))
        merged: dict[str, Metric] = {}
        up = GaugeMetricFamily(
            "rp_pipeline_up",
            "1 if the server answered this scrape within the deadline, else 0",
            labels=["target", "source"],
        )
        for collector, families in zip(self.collectors, readings):
            for family in families:
                if family.name == "rp_pipeline_up":
                    for sample in family.samples:
                        up.add_metric(
                            [sample.labels["target"], collector.config.label], sample.value
                        )
                elif family.name not in merged:
                    merged[family.name] = family
                elif family.name not in ("rp_pipeline_build", "rp_pipeline_sync_interval_seconds"):
                    merged[family.name].samples.extend(family.samples)
        return [*merged.values(), up]

    def collect(self) -> Iterator[Metric]:
        yield from self.scrape()

    def close(self) -> None:
        if hasattr(self, "_pool"):
            self._pool.shutdown(wait=True)
        for collector in self.collectors:
            collector.close()


def build_info() -> dict[str, str]:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    try:
        own = version("rp_pipeline")
    except PackageNotFoundError:
        own = "unknown"
    return {"version": own, "python": platform.python_version()}


@dataclass
class Exporter:
    """A running `/metrics` endpoint; `close()` stops it."""

    collector: SyncCollector | SourcesCollector
    server: object
    thread: threading.Thread
    host: str
    port: int

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.collector.close()


def serve_metrics(
    config: SyncConfig,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    deadline_seconds: float = READ_DEADLINE_SECONDS,
    sync_interval_seconds: float | None = None,
) -> Exporter:
    """Serve `/metrics` on host:port from a background thread."""
    from prometheus_client import start_http_server

    kind = SourcesCollector if len(config.sources) > 1 else SyncCollector
    collector = kind(config, deadline_seconds, sync_interval_seconds)
    registry = CollectorRegistry()
    registry.register(collector)
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        collector.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"cannot serve metrics on {host}:{port}: the port is already in use (another "
                "exporter running?); stop it or choose another port with --port"
            ) from None
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
    return Exporter(collector, server, thread, host, server.server_port)
