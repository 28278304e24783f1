"""Read strategies: one object per way the layout keeps an entity's records.

A strategy owns everything that depends on that way: what a sync reads and how, in chunks
(`plan`), which records the reconciliation check looks up in Postgres (`sample`) and what
retention deletes from Redis (`expire`). An `EntitySpec` names its strategy; `strategy_of`
is the one place that turns the name into the object. A new way of storing records is one new
class here, registered in STRATEGIES; a new entity stored an existing way is one more spec.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pandas as pd
import psycopg
from redis.cluster import RedisCluster

from . import layout
from .bookkeeping import Bookkeeping
from .entities import (
    BY_NAME,
    EXPERIMENTS,
    HASH_BY_ID,
    MEMBERS_PER_EXPERIMENT,
    METRIC_SERIES,
    PARAMS_PER_RUN,
    TRAINING_RUNS,
    EntitySpec,
)
from .extract import (
    META_COLUMNS,
    Read,
    RedisSource,
    chunks,
    pipelined,
    raise_refusal,
    read_hash_chunks,
)
from .mapping import parse_timestamp
from .retention import BATCH, confirmed, hash_deleter
from .settings import SyncConfig
from .sources import resolve_origin

# A run in none of these states may still log metric points: its series are looked for each cycle.
TERMINAL_RUN_STATUSES = frozenset(
    {
        "completed",
        "failed",
        "cancelled",
        "canceled",
        "crashed",
        "stopped",
        "killed",
        "finished",
        "succeeded",
        "success",
        "error",
    }
)


@dataclass
class ReadPlan:
    """What one sync of an entity reads, decided before reading (it asks Postgres)."""

    reads: Iterator[Read]  # chunks to load; iterating only reads Redis
    watermark: int | None = None  # the highest Redis id covered: stored when the sync commits
    series_cards: dict[str, int] = field(default_factory=dict)  # metric series' sizes as read

    def keep_waiting(self, waiting: pd.DataFrame) -> None:
        """A series with a point still waiting for its run is read again next cycle: its size is
        not recorded."""
        if self.series_cards:
            for key in set(waiting["_key"].tolist()):
                self.series_cards.pop(key, None)


class ReadStrategy:
    """The base: every record read again each cycle (`frames`), chunks closing on records (the
    records are narrow); no retention."""

    name: str
    # Whether a Redis counter allocates the records' ids (the backlog counts them; rows keep the
    # Redis id they came from).
    allocates_ids = False

    description: str  # how the records are stored, in a few words; "{counter}" = the spec's

    def describe(self, spec: EntitySpec) -> str:
        """How this entity's records are stored (the asset's description)."""
        return self.description.format(counter=spec.counter)

    def expires(self, spec: EntitySpec) -> bool:
        """Whether `expire` can delete this entity's records (retention can be set for it)."""
        return False

    def plan(
        self,
        spec: EntitySpec,
        src: RedisSource,
        book: Bookkeeping,
        config: SyncConfig,
        pending: set[str],
        chunk_bytes: int,
    ) -> ReadPlan:
        """Decide what to read (touching Postgres, so in the caller's thread); the plan's reads
        close at `config.chunk_size` records or `chunk_bytes` bytes."""
        return ReadPlan(self.read(spec, src, config.chunk_size, chunk_bytes))

    def read(
        self, spec: EntitySpec, src: RedisSource, chunk_size: int, max_bytes: int
    ) -> Iterator[Read]:
        """Every current record, in chunks: narrow records, so chunks close on records."""
        return _sized(self.frames(spec, src, chunk_size))

    def frames(self, spec: EntitySpec, src: RedisSource, chunk_size: int) -> Iterator[pd.DataFrame]:
        raise NotImplementedError

    def sample(
        self, spec: EntitySpec, src: RedisSource, book_of, size: int, max_bytes: int
    ) -> Iterable[pd.DataFrame]:
        """Records of the last sync's range to look up in Postgres (reconciliation), at most about
        `size`; `book_of(entity)` is the bookkeeping of an entity of this data set."""
        raise NotImplementedError

    def expire(
        self,
        spec: EntitySpec,
        src: RedisSource,
        conn: psycopg.Connection,
        config: SyncConfig,
        cutoff: float,
    ) -> int:
        """Delete records older than `cutoff` (Unix time) that Postgres durably holds."""
        raise ValueError(f"retention is not supported for {spec.name}")


def _sized(frames: Iterable[pd.DataFrame]) -> Iterator[Read]:
    """Frames as chunks read, with their sizes (the memory budget counts them)."""
    for frame in frames:
        sizes = sum(
            (frame[c].str.len().fillna(0) for c in frame.columns if c not in ("_id", "_error")),
            pd.Series(0, index=frame.index),
        )
        yield Read(frame, int(sizes.sum()), int(sizes.max()) if len(sizes) else 0)


def _frame(records: list[dict], spec: EntitySpec, extra: Sequence[str] = ()) -> pd.DataFrame:
    """Records as a frame of strings and None (absent fields are None, never NaN)."""
    columns = META_COLUMNS + [p.column for p in spec.parents] + spec.column_names + list(extra)
    rows = [[record.get(c) for c in columns] for record in records]
    return pd.DataFrame(rows, columns=columns, dtype=object)


def _sample(ids: range, size: int) -> list[int]:
    return sorted(random.sample(ids, min(size, len(ids))))


def _replies(
    src: RedisSource, keys: Sequence[str], *command: str | int
) -> Iterator[tuple[str, object, str | None]]:
    """Each key with its reply to `command` on it (pipelined: `*command[:1], key, *command[1:]`),
    and why it could not be read (None when it could): an unreadable key is a rejected record."""
    name, args = command[0], command[1:]
    for key, reply in zip(keys, pipelined(src.client, ((name, k, *args) for k in keys))):
        yield key, reply, (f"cannot read: {reply}" if isinstance(reply, Exception) else None)


class HashById(ReadStrategy):
    """`{key}` hashes by id: ids from the counter and the index, orphans included; incremental
    entities read only the ids past the watermark, plus those that were pending."""

    name = HASH_BY_ID
    allocates_ids = True
    description = "one hash per record, ids from the counter `{counter}`"

    def expires(self, spec: EntitySpec) -> bool:
        records = spec.records
        return records is not None and records.scored_by_time and records.per_parent

    def plan(self, spec, src, book, config, pending, chunk_bytes) -> ReadPlan:
        if spec.incremental:
            watermark, counter = book.watermark(), src.counter(spec)
            retry = sorted(
                int(k.rsplit(":", 1)[1]) for k in pending if k.rsplit(":", 1)[1].isdigit()
            )

            def incremental():
                for ids in (retry, range(watermark + 1, counter + 1)):
                    yield from read_hash_chunks(src, spec, ids, config.chunk_size, chunk_bytes)

            return ReadPlan(incremental(), watermark=max(watermark, counter))
        ids = src.all_ids(spec)
        # The watermark is what the reconciliation check may expect in Postgres.
        return ReadPlan(
            read_hash_chunks(src, spec, ids, config.chunk_size, chunk_bytes),
            watermark=max(ids, default=0),
        )

    def sample(self, spec, src, book_of, size, max_bytes) -> Iterable[pd.DataFrame]:
        # A chunk at a time, within the sync's memory budget: sampled records can be wide.
        ids = _sample(range(1, book_of(spec.name).watermark() + 1), size)
        return (read.frame for read in read_hash_chunks(src, spec, ids, size, max_bytes))

    def expire(self, spec, src, conn, config, cutoff) -> int:
        """Records whose per-parent index is scored by minus their logging time (predictions):
        old index entries, up to the watermark, each deleted with its index entry by a script
        that checks every field first (retention.py)."""
        if not self.expires(spec):
            return super().expire(spec, src, conn, config, cutoff)
        records = spec.records
        parent = BY_NAME[next(p.entity for p in spec.parents if p.field == records.fields[0])]
        origin = resolve_origin(src, conn, config)
        book = Bookkeeping(conn, config.sync_schema, origin.name, spec.name, origin.generation)
        with conn.transaction():
            synced_up_to = book.watermark()
            waiting = set(book.pending_keys())
        candidates: list[tuple[int, str]] = []  # (id, index key)
        index_keys = [src.prefix + records.index.format(parent=p) for p in src.all_ids(parent)]
        # Index scores are minus the logging time: old records have scores above -cutoff.
        for index_key, members in zip(
            index_keys,
            pipelined(
                src.client, (("ZRANGEBYSCORE", k, f"({-cutoff}", "+inf") for k in index_keys)
            ),
        ):
            if isinstance(members, Exception):
                continue
            candidates += [
                (int(m), index_key) for m in members if m.isdigit() and int(m) <= synced_up_to
            ]
        deleted = 0
        on_cluster = isinstance(src.client, RedisCluster)
        delete = hash_deleter(src.client)
        fields = [p.field for p in spec.parents] + [c.redis_field for c in spec.columns]
        raw_columns = [p.column for p in spec.parents] + spec.column_names
        index_of = dict(candidates)
        # One chunk at a time, closing on records or bytes: the records, their values again as the
        # script's arguments and the confirmed frame are alive together, so about a quarter of the
        # budget.
        for read in read_hash_chunks(
            src, spec, [i for i, _ in candidates], BATCH, max(1, config.memory_budget_bytes // 8)
        ):
            if on_cluster and read.missing:
                # Old, synced, hash already deleted: a pass interrupted between its steps.
                pipe = src.client.pipeline(transaction=False)
                for key in read.missing:
                    record_id = int(key.rsplit(":", 1)[1])
                    pipe.zrem(index_of[record_id], record_id)
                raise_refusal(pipe.execute(raise_on_error=False))
            frame = read.frame[~read.frame["_key"].isin(waiting) & read.frame["_error"].isna()]
            if frame.empty:
                continue
            raw = {row[0]: row[1:] for row in frame[["_id", *raw_columns]].itertuples(index=False)}
            held = confirmed(spec, frame, conn, config, origin)
            pipe = src.client.pipeline(transaction=False)
            for record_id, key in zip(held["_id"].tolist(), held["_key"].tolist()):
                args = [record_id]
                for name, value in zip(fields, raw[record_id]):
                    args += [name, "" if value is None else value]
                delete(pipe, key, index_of[record_id], args)
            done = [
                i
                for i, r in zip(
                    held["_id"].tolist(), raise_refusal(pipe.execute(raise_on_error=False))
                )
                if r == 1
            ]
            if on_cluster and done:
                pipe = src.client.pipeline(transaction=False)
                for record_id in done:
                    pipe.zrem(index_of[record_id], record_id)
                raise_refusal(pipe.execute(raise_on_error=False))
            deleted += len(done)
        return deleted


class _PerParent(ReadStrategy):
    """Records kept per parent record (a training run, an experiment): read parent by parent."""

    parent: EntitySpec

    def frames(self, spec, src, chunk_size) -> Iterator[pd.DataFrame]:
        for ids in chunks(src.all_ids(self.parent), max(1, chunk_size // 20)):
            yield self.read_parents(spec, src, ids)

    def sample(self, spec, src, book_of, size, max_bytes) -> Iterable[pd.DataFrame]:
        parents = _sample(range(1, book_of(self.parent.name).watermark() + 1), max(1, size // 20))
        return [self.read_parents(spec, src, parents)]

    def read_parents(self, spec: EntitySpec, src: RedisSource, ids: Sequence[int]) -> pd.DataFrame:
        raise NotImplementedError


class ParamsPerRun(_PerParent):
    """One hash per training run, one row per field (hyperparameters)."""

    name = PARAMS_PER_RUN
    parent = TRAINING_RUNS
    description = "one hash per training run, one row per field"

    def read_parents(self, spec: EntitySpec, src: RedisSource, run_ids: Sequence[int]):
        """One row per (run, parameter) from each run's hash."""
        keys = [src.key(spec.key, id=i) for i in run_ids]
        records = []
        for run_id, (key, reply, error) in zip(run_ids, _replies(src, keys, "HGETALL")):
            if error:
                records.append({"_key": key, "_error": error, "training_run_id": str(run_id)})
                continue
            for name, value in (reply or {}).items():
                records.append(
                    {
                        "_key": f"{key}#{name}",
                        "_error": None,
                        "training_run_id": str(run_id),
                        "param_name": name,
                        "param_value": value,
                    }
                )
        return _frame(records, spec)


class MembersPerExperiment(_PerParent):
    """A set of run ids per experiment and one hash per (experiment, run) pair."""

    name = MEMBERS_PER_EXPERIMENT
    parent = EXPERIMENTS
    description = "a set of run ids per experiment and one hash per membership"

    def read_parents(self, spec: EntitySpec, src: RedisSource, experiment_ids: Sequence[int]):
        """One row per (experiment, run) pair listed in the experiment's run set."""
        set_keys = [src.key(layout.EXPERIMENT_RUN_SET, id=e) for e in experiment_ids]
        pairs = []
        for experiment_id, reply in zip(
            experiment_ids, pipelined(src.client, (("SMEMBERS", k) for k in set_keys))
        ):
            if not isinstance(reply, Exception):
                pairs.extend((experiment_id, run_id) for run_id in sorted(reply))
        fields = [c.redis_field for c in spec.columns]
        keys = [src.key(spec.key, experiment_id=e, run_id=r) for e, r in pairs]
        records = []
        for (experiment_id, run_id), (key, reply, error) in zip(
            pairs, _replies(src, keys, "HMGET", *fields)
        ):
            record = {
                "_key": key,
                "_error": error,
                "experiment_id": str(experiment_id),
                "training_run_id": run_id,
            }
            if not error:
                record.update(zip(spec.column_names, reply))
            records.append(record)
        return _frame(records, spec)


def _text(value) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value, default=str)


class MetricSeries(ReadStrategy):
    """Sorted sets of JSON points, one per run, metric and split, found by SCAN; only series
    whose size changed since the last sync are read."""

    name = METRIC_SERIES
    description = "sorted sets of JSON points, one per run and metric"

    def expires(self, spec: EntitySpec) -> bool:
        return spec.retention_field is not None

    def plan(self, spec, src, book, config, pending, chunk_bytes) -> ReadPlan:
        cards: dict[str, int] = {}
        series = self.changed_series(src, book, config, cards)
        frames = (
            self.read_series(spec, src, keys)
            for keys in chunks(series, max(1, config.chunk_size // 100))
        )
        return ReadPlan(_sized(frames), series_cards=cards)

    def changed_series(
        self, src: RedisSource, book: Bookkeeping, config: SyncConfig, cards: dict[str, int]
    ) -> list[str]:
        """Metric series that gained points since last synced; their sizes now go into `cards`.

        Finding new series needs a SCAN of the whole keyspace, which costs in proportion to
        everything in Redis (predictions included), so it runs only when runs are active or
        changed, or every `metric_rescan_seconds`; known series are checked by ZCARD each cycle.
        """
        known = book.series_cards()
        run_ids = src.all_ids(TRAINING_RUNS)
        statuses = [
            s if isinstance(s, str) else ""
            for s in pipelined(
                src.client,
                (("HGET", src.key(TRAINING_RUNS.key, id=i), "status") for i in run_ids),
            )
        ]
        # The generation is part of it: after a flush the same run ids and statuses are new runs.
        signature = hashlib.md5(
            repr((book.generation, list(zip(run_ids, statuses)))).encode("utf-8", "surrogateescape")
        ).hexdigest()
        active = any(status not in TERMINAL_RUN_STATUSES for status in statuses)
        last = (book.state("metric_scan") or "0|").split("|", 1)
        stale = time.time() - float(last[0]) > config.metric_rescan_seconds
        keys = set(known)
        if active or stale or last[1] != signature:
            keys.update(src.scan_keys(layout.METRIC_SERIES_HEAD + "*"))
            book.set_state("metric_scan", f"{time.time()}|{signature}")
        keys = sorted(keys)
        sizes = self.sizes(src, keys)
        changed = [k for k, c in zip(keys, sizes) if known.get(k) != c and c != 0]
        cards.update({k: c for k, c in zip(keys, sizes) if k in set(changed)})
        return changed

    @staticmethod
    def sizes(src: RedisSource, keys: Sequence[str]) -> list[int]:
        """ZCARD of each series; -1 where it cannot be read."""
        return [
            c if isinstance(c, int) else -1
            for c in pipelined(src.client, (("ZCARD", k) for k in keys))
        ]

    @staticmethod
    def run_id(src: RedisSource, key: str) -> str:
        """The run id of a series key: the segment after the head (names may contain ':')."""
        return key[len(src.prefix) + len(layout.METRIC_SERIES_HEAD) :].split(":", 1)[0]

    def read_series(self, spec: EntitySpec, src: RedisSource, keys: Sequence[str]) -> pd.DataFrame:
        """One row per point: the JSON member's fields, never parsed out of the key."""
        records = []
        for key, reply, error in _replies(src, keys, "ZRANGE", 0, -1):
            run_id = self.run_id(src, key)
            if error:
                records.append({"_key": key, "_error": error, "training_run_id": run_id})
                continue
            for member in reply:
                record = {"_key": key, "_member": member, "_error": None, "training_run_id": run_id}
                try:
                    point = json.loads(member)
                    if not isinstance(point, dict):
                        raise ValueError("not a JSON object")
                except ValueError as exc:
                    record["_error"] = f"metric point is not a JSON object: {exc}"
                else:
                    for column in spec.columns:
                        record[column.name] = _text(point.get(column.redis_field))
                records.append(record)
        return _frame(records, spec, extra=["_member"])

    def sample(self, spec, src, book_of, size, max_bytes) -> Iterable[pd.DataFrame]:
        cards = book_of(spec.name).series_cards()
        keys = random.sample(sorted(cards), min(len(cards), max(1, size // 100)))
        current = self.sizes(src, keys)
        # Series that grew since the sync are the next cycle's work, not a loss.
        return [self.read_series(spec, src, [k for k, c in zip(keys, current) if c == cards[k]])]

    def expire(self, spec, src, conn, config, cutoff) -> int:
        """Points older than the cutoff (by the spec's retention field), each removed by its
        member: the member is the point itself, so removing it cannot lose a newer write."""
        if not self.expires(spec):
            return super().expire(spec, src, conn, config, cutoff)
        origin = resolve_origin(src, conn, config)
        book = Bookkeeping(conn, config.sync_schema, origin.name, spec.name, origin.generation)
        with conn.transaction():
            series = sorted(book.series_cards())
        deleted = 0
        before = _before(datetime.fromtimestamp(cutoff, timezone.utc))
        moment = spec.retention_field
        for keys in chunks(series, 200):
            frame = self.read_series(spec, src, keys)
            old = frame[frame["_error"].isna() & frame[moment].notna()]
            old = old[old[moment].map(before)]
            if old.empty:
                continue
            held = confirmed(spec, old, conn, config, origin)
            pipe = src.client.pipeline(transaction=False)
            for key, member in zip(held["_key"], held["_member"]):
                pipe.zrem(key, member)
            deleted += sum(
                r for r in raise_refusal(pipe.execute(raise_on_error=False)) if isinstance(r, int)
            )
            with conn.transaction():
                book.set_series_cards(dict(zip(keys, self.sizes(src, keys))))
        return deleted


def _before(cutoff: datetime):
    """Whether a point's ISO-8601 timestamp (any form; naive is UTC) is older than the cutoff."""

    def before(value: str) -> bool:
        moment = parse_timestamp(value)
        return moment is not None and moment < cutoff

    return before


STRATEGIES: dict[str, ReadStrategy] = {
    s.name: s for s in (HashById(), ParamsPerRun(), MembersPerExperiment(), MetricSeries())
}


def strategy_of(spec: EntitySpec) -> ReadStrategy:
    """The object behind the spec's strategy name."""
    try:
        return STRATEGIES[spec.strategy]
    except KeyError:
        raise ValueError(f"unknown strategy {spec.strategy!r} for {spec.name}") from None


def apply_retention(spec: EntitySpec, client, conn: psycopg.Connection, config: SyncConfig) -> int:
    """Delete this entity's synced records older than its retention; returns how many were deleted.
    Runs after the sync committed: what is deleted from Redis is already durable in Postgres."""
    hours = config.retention_hours.get(spec.name)
    if hours is None:
        return 0
    cutoff = time.time() - hours * 3600
    return strategy_of(spec).expire(
        spec, RedisSource(client, config.key_prefix), conn, config, cutoff
    )
