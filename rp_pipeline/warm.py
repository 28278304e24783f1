"""Cache warm: Postgres rows written back into Redis in the aidb layout, without a sync loop.

After a restart or a FLUSHDB the applications find nothing in Redis although Postgres holds it
all. The warm writes selected rows back, exactly as the layout (docs/redis-layout.md, declared in
`layout.py`) has them: hashes, indexes, `model:name_to_id`, metric series, prediction indexes
scored by minus the time.

No loop: every warmed record is, to the forward sync, the Postgres row it came from. Catalog rows
(models, datasets, experiments, versions) get id-map rows for the Redis ids the warm allocated;
runs and predictions are re-homed to the data set they are written into (`origin_source` = its
origin, `origin_redis_id` = the new id), and with them the rows of their hyperparameters and
memberships, so later changes (a run completing, a new description) update the same rows.

Per batch, in this order: allocate a contiguous block of ids (one INCRBY, so the application's
INCR never collides with it), commit that bookkeeping, then write the records, one Lua script per
~1,000 that writes a record only if none of its keys exists. Each block is noted in
`{sync_schema}.state` until the warm finishes, so a warm killed between the commit and the Redis
write is completed by the next one (the script makes rewriting idempotent).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg
import redis
from redis.cluster import RedisCluster

from . import layout
from .bookkeeping import Bookkeeping, IdMapSql
from .connections import connect_postgres, connect_redis
from .engine import lock_key, prefetched
from .entities import (
    BIGINT,
    BY_NAME,
    ENTITIES,
    FLOAT,
    JSONB,
    PARENT_ENTITIES,
    PREDICTIONS,
    TIMESTAMPTZ,
    TRAINING_RUNS,
    Column,
    EntitySpec,
)
from .entities import (
    sql_name as q,
)
from .errors import SyncFailed, first_line
from .extract import RedisSource, read_hashes
from .layout import GENERATION_KEY
from .schema import has_redis_id
from .settings import ConfigError, SyncConfig
from .sources import resolve_origin

log = logging.getLogger("rp_pipeline")

WARMABLE = tuple(spec.name for spec in ENTITIES)
# Written with their run, in the run's own script: they have no ids of their own.
RUN_PARTS = ("hyperparameters", "metrics", "experiment_runs")
# When a row was created, for the entities warmed only over a recent window.
WINDOW_COLUMN = {"training_runs": "started_at", "predictions": "timestamp", "metrics": "timestamp"}

DEFAULT_RUNS_DAYS = 7.0
DEFAULT_PREDICTIONS_HOURS = 0.0
BATCH_ROWS = {"training_runs": 200}  # runs carry their parameters and metric series along
DEFAULT_BATCH_ROWS = 10_000
SCRIPT_RECORDS = 1_000  # records per script call: Redis is never blocked by one huge script
SCRIPT_ARGS = 2_000  # arguments per command inside the script (Lua's unpack has a limit)
PROGRESS_SECONDS = 10.0

# ARGV[1], ARGV[2]: the data set's marker key and the marker the bookkeeping was committed for (a
# flush since then must not receive these records). Then per record: g, g guard keys, c, then c
# commands, each as its argument count followed by the arguments. A record is written only if none
# of its guard keys exists, all of its commands together: no reader ever sees half of it.
_WRITE_IF_ABSENT = """
if redis.call('GET', ARGV[1]) ~= ARGV[2] then return -1 end
local i, written = 3, {}
while i <= #ARGV do
  local g = tonumber(ARGV[i])
  local fresh = g == 0 or redis.call('EXISTS', unpack(ARGV, i + 1, i + g)) == 0
  i = i + 1 + g
  local c = tonumber(ARGV[i])
  i = i + 1
  for _ = 1, c do
    local n = tonumber(ARGV[i])
    if fresh then redis.call(unpack(ARGV, i + 1, i + n)) end
    i = i + 1 + n
  end
  written[#written + 1] = fresh and 1 or 0
end
return written
"""


@dataclass(frozen=True)
class WarmOptions:
    """What to warm: entities, and the windows of runs (days) and predictions (hours)."""

    entities: tuple[str, ...] = WARMABLE
    runs_days: float = DEFAULT_RUNS_DAYS
    predictions_hours: float = DEFAULT_PREDICTIONS_HOURS
    dry_run: bool = False

    def __post_init__(self) -> None:
        unknown = [e for e in self.entities if e not in BY_NAME]
        if unknown:
            raise ConfigError(
                f"cannot warm {', '.join(map(repr, unknown))}: known entities are {', '.join(WARMABLE)}"
            )
        parts = [e for e in self.entities if e in RUN_PARTS]
        if parts and "training_runs" not in self.entities:
            raise ConfigError(
                f"{', '.join(parts)} are warmed with their runs: add training_runs to the entities"
            )
        if self.runs_days < 0 or self.predictions_hours < 0:
            raise ConfigError(
                "warm windows must be zero or more (WARM_RUNS_DAYS, WARM_PREDICTIONS_HOURS)"
            )

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides) -> WarmOptions:
        """WARM_RUNS_DAYS and WARM_PREDICTIONS_HOURS, overridden by the given (not None) values."""
        env = os.environ if env is None else env
        values: dict = {}
        for name, key in (
            ("runs_days", "WARM_RUNS_DAYS"),
            ("predictions_hours", "WARM_PREDICTIONS_HOURS"),
        ):
            if env.get(key):
                try:
                    values[name] = float(env[key])
                except ValueError:
                    raise ConfigError(f"{key} must be a number, got {env[key]!r}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def parse_entities(text: str) -> tuple[str, ...]:
    """'models,predictions' → the entities in dependency order (runs bring their parts unless named alone)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if "training_runs" in names and not set(names) & set(RUN_PARTS):
        names += RUN_PARTS
    return tuple(spec.name for spec in ENTITIES if spec.name in names) + tuple(
        n for n in names if n not in BY_NAME
    )


@dataclass
class WarmResult:
    """What one warm did, per entity (metrics count points)."""

    written: dict[str, int] = field(
        default_factory=dict
    )  # records written into Redis (or that would be)
    reused: dict[str, int] = field(
        default_factory=dict
    )  # already in this Redis (re-created by the application)
    skipped: dict[str, int] = field(
        default_factory=dict
    )  # left out: a parent they point at is not in Redis
    notes: list[str] = field(default_factory=list)  # windows clamped to retention, repairs
    seconds: float = 0.0
    dry_run: bool = False

    def counts(self) -> dict[str, int]:
        return {name: self.written.get(name, 0) for name in WARMABLE}


def warm_windows(config: SyncConfig, options: WarmOptions) -> tuple[dict[str, float], list[str]]:
    """Seconds back from now per windowed entity, never past a retention window of the same entity:
    retention would otherwise delete what the warm writes back, and the next warm write it again."""
    windows = {
        "training_runs": options.runs_days * 86400,
        "metrics": options.runs_days * 86400,
        "predictions": options.predictions_hours * 3600,
    }
    notes = []
    for entity, hours in config.retention_hours.items():
        if entity in windows and windows[entity] > hours * 3600:
            notes.append(
                f"{entity}: warm window clamped from {windows[entity] / 3600:g} h to the retention window "
                f"of {hours:g} h (SYNC_RETENTION_HOURS)"
            )
            windows[entity] = hours * 3600
    return windows, notes


def warm(
    client: redis.Redis,
    conn: psycopg.Connection,
    config: SyncConfig,
    options: WarmOptions = WarmOptions(),
    logger: logging.Logger | None = None,
) -> WarmResult:
    """Write the selected Postgres rows into Redis; returns what was written per entity.

    `conn` must be in autocommit mode (each batch commits on its own); the tables must exist
    (`schema.ensure_schema`). Raises SyncFailed when a server fails or Redis is flushed meanwhile:
    what was committed is completed by the next warm.
    """
    if isinstance(client, RedisCluster):
        # Checked before anything is allocated or committed: each record is written by one script over
        # its hash, indexes and name map, keys a cluster keeps in different slots.
        raise ConfigError(
            "the cache warm writes each record (hash, index entries, name map) with one script, "
            "which a Redis Cluster cannot run across slots; it is not supported on a cluster yet"
        )
    try:
        return _Warm(client, conn, config, options, logger or log).run()
    except psycopg.OperationalError as exc:
        raise SyncFailed(
            f"warm: Postgres failed ({first_line(exc)}); run the warm again, "
            "it completes what was started"
        ) from None
    except redis.RedisError as exc:
        raise SyncFailed(
            f"warm: Redis failed ({first_line(exc)}); run the warm again, "
            "it completes what was started"
        ) from None


def run_warm(
    config: SyncConfig, options: WarmOptions = WarmOptions(), logger: logging.Logger | None = None
) -> WarmResult:
    """Migrate if needed, open connections, warm, close: what the API, the CLI and the asset run."""
    from .schema import ensure_schema

    logger = logger or log
    ensure_schema(config)
    client, conn = connect_redis(config), connect_postgres(config)
    try:
        result = warm(client, conn, config, options, logger)
    finally:
        client.close()
        conn.close()
    written = ", ".join(f"{k} {v}" for k, v in result.counts().items() if v) or "nothing"
    logger.info(
        "=== Warm %s in %.2fs: %s%s ===",
        "planned" if options.dry_run else "complete",
        result.seconds,
        written,
        f"; reused {result.reused}" if result.reused else "",
    )
    return result


@dataclass
class _Batch:
    spec: EntitySpec
    rows: list[tuple]  # (pg id, redis id or None, *layout field texts, index score text)
    parts: dict[int, dict] = field(
        default_factory=dict
    )  # runs: pg id → parameters, series, memberships
    skipped: int = 0


class _Warm:
    def __init__(
        self,
        client: redis.Redis,
        conn: psycopg.Connection,
        config: SyncConfig,
        options: WarmOptions,
        logger: logging.Logger,
    ):
        self.client, self.conn, self.config, self.options, self.log = (
            client,
            conn,
            config,
            options,
            logger,
        )
        self.src = RedisSource(client, config.key_prefix)
        self.result = WarmResult(dry_run=options.dry_run)
        self.windows, notes = warm_windows(config, options)
        self.result.notes += notes
        self.id_map, self.schema = IdMapSql(config.sync_schema), q(config.schema)
        # An eighth of the sync's memory budget: the batch, the records built from it and the next
        # batch read ahead are all in memory at once.
        self.batch_bytes = max(1 << 20, config.memory_budget_bytes // 8)
        self._templates: dict[str, tuple[bytes, int]] = {}

    # -- the plan ----------------------------------------------------------------------------------
    def run(self) -> WarmResult:
        clock = time.perf_counter()
        for note in self.result.notes:
            self.log.warning("  warm: %s", note)
        self.origin = resolve_origin(self.src, self.conn, self.config, self.log)
        self.params = {
            "source": self.origin.name,
            "generation": self.origin.generation,
            "lo": None,
            "hi": None,
        }
        self.sender = _ScriptCalls(
            self.client, self.src.prefix + GENERATION_KEY, self.origin.generation
        )
        self.reader = connect_postgres(self.config, autocommit=False)
        try:
            self.reader.execute("SET TimeZone = 'UTC'")
            if not self.options.dry_run:
                self._complete_interrupted()
            for spec in ENTITIES:
                if spec.name in self.options.entities and spec.name not in RUN_PARTS:
                    self._warm_entity(spec)
            if not self.options.dry_run:
                with self.conn.transaction():
                    self._book(TRAINING_RUNS).clear_warm_ranges()
        finally:
            self.reader.close()
        self.result.seconds = time.perf_counter() - clock
        return self.result

    def _book(self, spec: EntitySpec) -> Bookkeeping:
        return Bookkeeping(
            self.conn, self.config.sync_schema, self.origin.name, spec.name, self.origin.generation
        )

    def _complete_interrupted(self) -> None:
        """Blocks an interrupted warm committed but may not have written: write them now (idempotent)."""
        with self.conn.transaction():
            ranges = self._book(TRAINING_RUNS).warm_ranges()
        if ranges:
            self.log.info(
                "  warm: completing %d block(s) an interrupted warm committed", len(ranges)
            )
            self.result.notes.append(f"completed {len(ranges)} block(s) of an interrupted warm")
        for entity, lo, hi in ranges:
            spec = BY_NAME[entity]
            for batch in self._read(spec, self._repair_where(spec), {"lo": lo, "hi": hi}):
                self._write(batch, [row[1] for row in batch.rows])

    def _warm_entity(self, spec: EntitySpec) -> None:
        name = spec.name
        reused = self._reuse_existing(spec) if not has_redis_id(spec) else 0
        if reused:
            self.result.reused[name] = reused
        where, params = self._new_where(spec)
        total = self.reader.execute(
            f"SELECT count(*) FROM {self.schema}.{q(name)} t WHERE {where}",
            {**self.params, **params},
        ).fetchone()[0]
        self.reader.commit()
        if self.options.dry_run or not total:
            self.result.written[name] = total
            self.log.info(
                "  warm %s: %d to write%s",
                name,
                total,
                " (dry run)" if self.options.dry_run else "",
            )
            return
        self.log.info("  warm %s: %d row(s) to write", name, total)
        clock, shown, done = time.monotonic(), time.monotonic(), 0
        writes = _InOrder()
        try:
            for batch in prefetched(self._read(spec, where, params)):
                self.result.skipped[name] = self.result.skipped.get(name, 0) + batch.skipped
                if not batch.rows:
                    continue
                ids = self._allocate(spec, len(batch.rows))
                self._commit(batch, ids)
                writes.submit(lambda batch=batch, ids=ids: self._write(batch, ids))
                done += len(batch.rows) + batch.skipped
                if time.monotonic() - shown > PROGRESS_SECONDS:
                    shown = time.monotonic()
                    self.log.info(
                        "  warm %s: %d/%d (%.0f rows/s)", name, done, total, done / (shown - clock)
                    )
        finally:
            writes.close()  # every committed batch is written (or the first failure raised) before going on
        self.reader.commit()
        if self.result.skipped.get(name):
            self.log.warning(
                "  warm %s: %d row(s) left out, their parent is not in Redis (warm it too)",
                name,
                self.result.skipped[name],
            )

    # -- selection -------------------------------------------------------------------------------
    def _new_where(self, spec: EntitySpec) -> tuple[str, dict]:
        """Rows this Redis does not hold yet: by the id map (catalog), or by origin within a window."""
        if has_redis_id(spec):
            return (
                f"t.origin_source IS DISTINCT FROM %(source)s AND t.{q(WINDOW_COLUMN[spec.name])} "
                "> now() - make_interval(secs => %(window)s)",
                {"window": self.windows[spec.name]},
            )
        return self.id_map.unmapped(), {"entity": spec.name}

    def _repair_where(self, spec: EntitySpec) -> str:
        """Rows of one block an interrupted warm allocated (its ids, so nothing else, are in the block)."""
        if has_redis_id(spec):
            return "t.origin_source = %(source)s AND t.origin_redis_id BETWEEN %(lo)s AND %(hi)s"
        return self.id_map.mapped_in_block(spec.name)

    def _redis_id_sql(self, spec: EntitySpec) -> str:
        if has_redis_id(spec):
            return "CASE WHEN t.origin_source = %(source)s THEN t.origin_redis_id END"
        # When completing a block, its own id: the row may also map from a record the application made.
        return self.id_map.redis_id(spec.name)

    def _parent_join(self, column: str, entity: str) -> str:
        """The Redis id of each parent row in this data set (the latest, when two carry one name)."""
        return (
            f"LEFT JOIN {self.id_map.redis_ids(entity)} {q('p_' + column)} "
            f"ON {q('p_' + column)}.pg_id = t.{q(column)}"
        )

    def _select_sql(self, spec: EntitySpec, where: str) -> str:
        """Each row as the layout's strings, in the layout's field order, plus its index score."""
        records = spec.records
        parents = {p.field: p for p in spec.parents}
        columns = {c.redis_field: c for c in spec.columns}
        select = ["t.id", self._redis_id_sql(spec)]
        for name in records.fields:
            if name in parents:
                parent = parents[name]
                ref = f"{q('p_' + parent.column)}.redis_id::text"
                # A row without the optional parent says 0; one whose parent is not in Redis is left out.
                select.append(
                    f"CASE WHEN t.{q(parent.column)} IS NULL THEN '{layout.NO_PARENT}' ELSE {ref} END"
                    if parent.optional
                    else ref
                )
            else:
                select.append(text_sql(columns[name], f"t.{q(columns[name].name)}"))
        # The layout scores prediction indexes by minus the logging time, every other index by the id.
        select.append(
            '(-extract(epoch FROM t."timestamp"))::text' if spec is PREDICTIONS else "NULL"
        )
        joins = " ".join(self._parent_join(p.column, p.entity) for p in spec.parents)
        return f"SELECT {', '.join(select)} FROM {self.schema}.{q(spec.name)} t {joins} WHERE {where} ORDER BY t.id"

    def _read(self, spec: EntitySpec, where: str, params: dict) -> Iterator[_Batch]:
        """The rows in batches bounded by rows and bytes, through a server-side cursor (flat memory)."""
        limit = BATCH_ROWS.get(spec.name, DEFAULT_BATCH_ROWS)
        with self.reader.cursor(name=f"rp_warm_{spec.name}") as cur:
            cur.itersize = min(limit, 5_000)
            cur.execute(self._select_sql(spec, where), {**self.params, **params})
            batch, size = _Batch(spec, []), 0
            for row in cur:
                if (
                    None in row[2:-1]
                ):  # a parent that is not in Redis (every other field is a string)
                    batch.skipped += 1
                    continue
                batch.rows.append(row)
                size += sum(map(len, row[2:-1]))
                if len(batch.rows) >= limit or size >= self.batch_bytes:
                    yield self._with_parts(batch)
                    batch, size = _Batch(spec, []), 0
            if batch.rows or batch.skipped:
                yield self._with_parts(batch)

    def _with_parts(self, batch: _Batch) -> _Batch:
        """A run batch with the runs' parameters, metric points (within the window) and memberships."""
        if batch.spec is not TRAINING_RUNS or not batch.rows:
            return batch
        ids = [row[0] for row in batch.rows]
        parts = {i: {"params": [], "series": {}, "members": []} for i in ids}
        wanted = self.options.entities
        if "hyperparameters" in wanted:
            for run, name, value in self.reader.execute(
                f"SELECT training_run_id, param_name, COALESCE(param_value, '') FROM {self.schema}.hyperparameters "
                "WHERE training_run_id = ANY(%s) ORDER BY training_run_id, param_name",
                (ids,),
            ):
                parts[run]["params"] += (name, value)
        if "metrics" in wanted:
            ts = text_sql(Column("timestamp", TIMESTAMPTZ), '"timestamp"')
            for run, name, split, epoch, step, value, stamp in self.reader.execute(
                f"SELECT training_run_id, metric_name, split, epoch, step, metric_value, {ts} FROM "
                f'{self.schema}.metrics WHERE training_run_id = ANY(%s) AND "timestamp" > now() - '
                "make_interval(secs => %s) ORDER BY id",
                (ids, self.windows["metrics"]),
            ):
                point = {
                    "epoch": epoch,
                    "step": step,
                    "metric_name": name,
                    "metric_value": value,
                    "split": split,
                    "timestamp": stamp,
                }
                score = epoch if epoch is not None else step if step is not None else 0
                parts[run]["series"].setdefault(f"{name}:{split}", []).append(
                    (str(score), json.dumps(point, default=str))
                )
        if "experiment_runs" in wanted:
            for run, experiment, variant, notes in self.reader.execute(
                f"SELECT r.training_run_id, e.redis_id, COALESCE(r.variant_name, ''), COALESCE(r.notes, '') "
                f"FROM {self.schema}.experiment_runs r JOIN {self.id_map.redis_ids('experiments')} "
                "e ON e.pg_id = r.experiment_id WHERE r.training_run_id = ANY(%(ids)s) "
                "ORDER BY r.id",
                {**self.params, "ids": ids},
            ):
                parts[run]["members"].append((str(experiment), variant, notes))
        batch.parts = parts
        return batch

    # -- records the application (or a sync) already has -----------------------------------------------
    def _reuse_existing(self, spec: EntitySpec) -> int:
        """Catalog records already in this Redis (a model the application re-created, say) are mapped to
        their rows instead of being written again; returns how many rows that covers."""
        frame, _ = read_hashes(self.src, spec, self.src.all_ids(spec))
        book = self._book(spec)
        keys = {}
        for column in spec.natural_key:
            values = frame[column]
            parent = next((p for p in spec.parents if p.column == column), None)
            if parent is not None:  # a parent's Redis id, as its Postgres id
                raw = [
                    int(v) if isinstance(v, str) and v.isascii() and v.isdigit() else None
                    for v in values
                ]
                with self.conn.transaction():
                    known = book.resolve(parent.entity, {r for r in raw if r is not None})
                values = [known.get(r) for r in raw]
            keys[column] = list(values)
        found = [
            (rid, *vals)
            for rid, *vals in zip(frame["_id"].tolist(), *keys.values())
            if None not in vals
        ]
        if not found:
            return 0
        types = ["bigint" if any(p.column == k for p in spec.parents) else "text" for k in keys]
        unnest = ", ".join(f"%(k{i})s::{t}[]" for i, t in enumerate(types))
        match = " AND ".join(f"t.{q(k)} = k.k{i}" for i, k in enumerate(keys))
        params = {
            **self.params,
            "entity": spec.name,
            "ids": [f[0] for f in found],
            **{f"k{i}": [f[i + 1] for f in found] for i in range(len(keys))},
        }
        pairs_sql = (
            f"SELECT k.redis_id, t.id FROM unnest(%(ids)s::bigint[], {unnest}) AS k(redis_id, "
            f"{', '.join(f'k{i}' for i in range(len(keys)))}) JOIN {self.schema}.{q(spec.name)} t ON {match} "
            f"WHERE {self.id_map.unmapped()}"
        )
        with self.conn.transaction():
            pairs = self.conn.execute(pairs_sql, params).fetchall()
            if pairs and not self.options.dry_run:
                book.map_ids(spec.name, [r for r, _ in pairs], [p for _, p in pairs])
        return len({p for _, p in pairs})

    # -- ids, bookkeeping, records ----------------------------------------------------------------------
    def _allocate(self, spec: EntitySpec, n: int) -> list[int]:
        """A contiguous block of n ids from the entity's counter: what an application's INCR can never get."""
        last = int(self.client.incrby(self.config.key_prefix + spec.counter, n))
        return list(range(last - n + 1, last + 1))

    def _commit(self, batch: _Batch, ids: list[int]) -> None:
        """The bookkeeping that makes the forward sync see each record as its row, committed before
        any record is written; the block is noted until the warm finishes."""
        spec = batch.spec
        pg_ids = [row[0] for row in batch.rows]
        book = self._book(spec)
        with self.conn.transaction():
            self.conn.execute(
                "SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true)",
                (str(self.config.lock_timeout_ms), str(self.config.statement_timeout_ms)),
            )
            # Takes turns with a forward sync of the same entity, as two syncs do.
            self.conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                (lock_key(self.config, self.origin, spec),),
            )
            if spec.name in PARENT_ENTITIES:
                book.map_ids(spec.name, ids, pg_ids)
            self._rehome(spec, pg_ids, ids if has_redis_id(spec) else None)
            if spec is TRAINING_RUNS:
                for part in ("hyperparameters", "experiment_runs"):
                    if part in self.options.entities:
                        self._rehome(BY_NAME[part], pg_ids, by="training_run_id")
                cards = {
                    self._key(layout.METRIC_SERIES_HEAD) + f"{i}:{name}": len(points)
                    for i, pg in zip(ids, pg_ids)
                    for name, points in batch.parts[pg]["series"].items()
                }
                Bookkeeping(
                    self.conn,
                    self.config.sync_schema,
                    self.origin.name,
                    "metrics",
                    self.origin.generation,
                ).set_series_cards(cards)
            if spec is PREDICTIONS and book.watermark() == ids[0] - 1:
                # Everything below the block was synced: the sync need not read the block back.
                book.set_watermark(ids[-1])
            book.note_warm_range(spec.name, ids[0], ids[-1])
            if self.src.marker() != self.origin.generation:
                raise SyncFailed(
                    "warm: Redis was flushed or restarted during the warm (its marker "
                    f"{self.src.prefix}{GENERATION_KEY} changed); nothing of this batch committed, "
                    "run the warm again"
                )

    def _rehome(
        self,
        spec: EntitySpec,
        pg_ids: list[int],
        redis_ids: list[int] | None = None,
        by: str = "id",
    ) -> None:
        """The rows now belong to the data set they are written into, so its changes update them."""
        table = f"{self.schema}.{q(spec.name)}"
        if redis_ids is not None:
            # The id range keeps the planner on the primary key: without it, it hashes the whole table per batch.
            self.conn.execute(
                f"UPDATE {table} t SET origin_source = %(source)s, origin_redis_id = u.r FROM "
                "unnest(%(pg)s::bigint[], %(redis)s::bigint[]) AS u(p, r) WHERE t.id = u.p "
                "AND t.id BETWEEN %(lo)s AND %(hi)s",
                {
                    **self.params,
                    "pg": pg_ids,
                    "redis": redis_ids,
                    "lo": min(pg_ids),
                    "hi": max(pg_ids),
                },
            )
        else:
            self.conn.execute(
                f"UPDATE {table} SET origin_source = %(source)s WHERE {q(by)} = ANY(%(pg)s) "
                "AND origin_source IS DISTINCT FROM %(source)s",
                {**self.params, "pg": pg_ids},
            )

    def _key(self, pattern: str, **parts) -> str:
        return self.config.key_prefix + pattern.format(**parts)

    def _record(self, spec: EntitySpec, row: tuple, redis_id: int, parts: dict | None) -> list[str]:
        """One record as the script's arguments: its guard keys, then its commands."""
        records = spec.records
        rid = str(redis_id)
        values = row[2:-1]
        key = self._key(records.record, id=rid)
        hash_args = ["HSET", key, "id", rid]
        for name, value in zip(records.fields, values):
            hash_args += (name, value)
        parent = values[0] if records.per_parent else None
        commands = [
            hash_args,
            ["ZADD", self._key(records.index.format(parent=parent)), row[-1] or rid, rid],
        ]
        guards = [key]
        if records.name_map:  # the application's own model of that name keeps the name
            commands.append(["HSETNX", self._key(records.name_map), values[0], rid])
        if parts:
            if parts["params"]:
                guards.append(self._key(layout.HYPERPARAMS, id=rid))
                for start in range(0, len(parts["params"]), SCRIPT_ARGS):
                    commands.append(
                        ["HSET", guards[-1], *parts["params"][start : start + SCRIPT_ARGS]]
                    )
            for name, points in parts["series"].items():
                series = (
                    self._key(layout.METRIC_SERIES_HEAD) + f"{rid}:{name}"
                )  # a name may hold braces: not a pattern
                flat = [v for point in points for v in point]
                for start in range(0, len(flat), SCRIPT_ARGS):
                    commands.append(["ZADD", series, *flat[start : start + SCRIPT_ARGS]])
            for experiment, variant, notes in parts["members"]:
                member = self._key(layout.MEMBERSHIP, experiment_id=experiment, run_id=rid)
                guards.append(member)
                values = (experiment, rid, variant, notes)
                pairs = zip(layout.MEMBERSHIP_FIELDS, values)
                commands.append(["HSET", member, *[a for pair in pairs for a in pair]])
                commands.append(["SADD", self._key(layout.EXPERIMENT_RUN_SET, id=experiment), rid])
        args = [str(len(guards)), *guards, str(len(commands))]
        for command in commands:
            args.append(str(len(command)))
            args += command
        return args

    def _packed(self, spec: EntitySpec, row: tuple, redis_id: int) -> bytes:
        """A record without parts as the script's arguments, packed through a per-entity template:
        a prediction has some 30 arguments, of which only 12 vary."""
        records, (template, _) = spec.records, self._template(spec)
        rid, values = str(redis_id), row[2:-1]
        key = self.config.key_prefix + records.record_head + rid
        index = self._key(records.index.format(parent=values[0] if records.per_parent else ""))
        variables = [key, key, rid, *values, index, row[-1] or rid, rid]
        if records.name_map:
            variables += (values[0], rid)
        return template % tuple(map(_one, variables))

    def _template(self, spec: EntitySpec) -> tuple[bytes, int]:
        """The shape `_record` gives a record without parts, as packed bytes with a slot per varying
        argument, and its argument count."""
        if spec.name in self._templates:
            return self._templates[spec.name]
        records, slot = spec.records, None
        commands = [
            ["HSET", slot, "id", slot, *[a for name in records.fields for a in (name, slot)]],
            ["ZADD", slot, slot, slot],
        ]
        if records.name_map:
            commands.append(["HSETNX", self._key(records.name_map), slot, slot])
        args = ["1", slot, str(len(commands))]
        for command in commands:
            args += [str(len(command)), *command]
        packed = b"".join(b"%s" if a is slot else _one(a).replace(b"%", b"%%") for a in args)
        self._templates[spec.name] = (packed, len(args))
        return self._templates[spec.name]

    def _write(self, batch: _Batch, ids: list[int]) -> None:
        """The records, one script call per SCRIPT_RECORDS, pipelined; counts what was written."""
        spec = batch.spec
        calls = []
        for start in range(0, len(batch.rows), SCRIPT_RECORDS):
            count, packed = 0, []
            for row, rid in zip(
                batch.rows[start : start + SCRIPT_RECORDS], ids[start : start + SCRIPT_RECORDS]
            ):
                parts = batch.parts.get(row[0])
                if parts is None:
                    packed.append(self._packed(spec, row, rid))
                    count += self._template(spec)[1]
                else:
                    args = self._record(spec, row, rid, parts)
                    packed.append(_bulk(args))
                    count += len(args)
            calls.append((count, b"".join(packed)))
        replies = self.sender.call(calls)
        if any(not isinstance(r, list) for r in replies):
            raise SyncFailed(
                "warm: Redis was flushed or restarted during the warm (its marker "
                f"{self.src.prefix}{GENERATION_KEY} changed); run the warm again"
            )
        fresh = [flag for reply in replies for flag in reply]
        self.result.written[spec.name] = self.result.written.get(spec.name, 0) + sum(fresh)
        if spec is TRAINING_RUNS:
            for part in RUN_PARTS:
                self.result.written.setdefault(part, 0)
            for row, written in zip(batch.rows, fresh):
                if written:
                    p = batch.parts[row[0]]
                    self.result.written["hyperparameters"] += len(p["params"]) // 2
                    self.result.written["metrics"] += sum(map(len, p["series"].values()))
                    self.result.written["experiment_runs"] += len(p["members"])


class _ScriptCalls:
    """Calls the write-if-absent script with arguments packed in bulk and sent in one write.

    redis-py packs each argument in Python; a record has some 30, so packing them here (as
    `extract.hmget_many` reads) keeps the client from costing more than Redis does.
    """

    def __init__(self, client: redis.Redis, marker_key: str, generation: str):
        self.client = client
        self.sha = client.script_load(_WRITE_IF_ABSENT)
        self.head = _bulk([marker_key, generation])

    def call(self, calls: list[tuple[int, bytes]]) -> list:
        """One script call per (argument count, packed arguments); the replies in order."""
        packed = [
            b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n$1\r\n0\r\n" % (5 + count, self.sha.encode())
            + self.head
            + args
            for count, args in calls
        ]
        try:
            return self._send(packed)
        except (
            redis.exceptions.NoScriptError
        ):  # Redis restarted meanwhile: the marker check then refuses
            self.sha = self.client.script_load(_WRITE_IF_ABSENT)
            return self.call(calls)

    def _send(self, packed: list[bytes]) -> list:
        conn = self.client.connection_pool.get_connection()
        try:
            conn.send_packed_command(packed)
            return [conn.read_response() for _ in packed]
        except BaseException:
            conn.disconnect()  # replies may be left unread: never reuse this connection
            raise
        finally:
            self.client.connection_pool.release(conn)


def _bulk(args: list[str]) -> bytes:
    """Arguments as RESP bulk strings."""
    return b"".join(map(_one, args))


def _one(arg: str) -> bytes:
    data = arg.encode("utf-8", "surrogateescape")
    return b"$%d\r\n%s\r\n" % (len(data), data)


class _InOrder:
    """Runs jobs one after another on a thread, at most `depth` waiting, so the next batch's
    bookkeeping commits while this one's records are written; a failure is raised in the caller."""

    def __init__(self, depth: int = 2):
        self.jobs: queue.Queue = queue.Queue(maxsize=depth)
        self.failure: BaseException | None = None
        self.thread = threading.Thread(
            target=self._work, name="rp_pipeline-warm-write", daemon=True
        )
        self.thread.start()

    def _work(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            if self.failure is None:
                try:
                    job()
                except BaseException as exc:
                    self.failure = exc

    def submit(self, job) -> None:
        self._raise()
        self.jobs.put(job)

    def close(self) -> None:
        """Wait for every job; raise the first failure."""
        self.jobs.put(None)
        self.thread.join()
        self._raise()

    def _raise(self) -> None:
        if self.failure is not None:
            raise self.failure


def text_sql(column: Column, ref: str) -> str:
    """SQL giving a column's value as the layout's string: NULL as the "not set" value (or ''),
    timestamps as naive UTC ISO-8601 the way Python's isoformat() writes them, JSON as JSON text."""
    if column.type == TIMESTAMPTZ:
        value = (
            f"regexp_replace(to_char({ref} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US'), "
            "'\\.000000$', '')"
        )
    elif column.type in (JSONB, FLOAT, BIGINT):
        value = f"{ref}::text"
    else:
        value = ref
    return f"COALESCE({value}, '{column.unset or ''}')"
