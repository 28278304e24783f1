"""The sync engine: plain Python that moves one entity (or all nine) from Redis to Postgres.

Per entity, in one Postgres transaction under an advisory lock:
extract (Redis → DataFrame chunks) → validate and map parent ids → COPY + upsert
→ bookkeeping (pending, rejected, watermark, history). Dagster assets, the CLI and
the Python API all call `sync_entity`; nothing here knows about Dagster.
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import pandas as pd
import psycopg
import redis

from .bookkeeping import Bookkeeping, record_attempt
from .connections import (
    MARKER_ACCESS,
    READ_ACCESS,
    RETENTION_ACCESS,
    RedisAccess,
    explain_postgres_refusal,
    explain_redis_refusal,
    refused_by_acl,
)
from .entities import BY_NAME, ENTITIES, STAT_KEYS, EntitySpec
from .entities import sql_name as q
from .errors import PermissionProblem, SyncFailed, first_line
from .extract import Read, RedisSource
from .layout import GENERATION_KEY
from .load import Loader, LoadResult
from .mapping import map_parent_ids, null_non_finite_json, validate
from .settings import SyncConfig
from .sources import Origin, resolve_origin
from .strategies import ReadPlan, apply_retention, strategy_of

log = logging.getLogger("rp_pipeline")

NOT_WRITTEN_YET = "id allocated, record not written yet"
NO_WAITING = pd.DataFrame(columns=["_key", "reason"])  # (read-only) no record waits for anything
# Memory a chunk takes at its peak, per byte read from Redis: the strings as read, the frame's and the
# mapped frame's references to them, the COPY text built from them (and its transient pieces).
# Measured with benchmarks/run.py --wide and rp_pipeline_tests/test_memory_budget.py.
MEMORY_PER_BYTE_READ = 4
CHUNKS_IN_FLIGHT = 3  # the chunk being read (and prepared), the one queued, the one being loaded
PROGRESS_EVERY_SECONDS = 10.0


@dataclass
class EntityResult:
    """What one entity's sync did; becomes the asset's materialization metadata."""

    entity: str
    stat: str
    started_at: datetime
    read: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0
    rejected: int = 0  # newly rejected: a record already held as rejected is not counted again
    pending: int = 0
    deleted: int = 0
    watermark: int | None = None
    duration_seconds: float = 0.0
    json_non_finite_nulled: int = (
        0  # NaN/Infinity in JSON fields stored as null, in the rows written
    )
    bytes_read: int = 0  # record bytes as received from Redis
    largest_record_bytes: int = 0
    rejection_samples: list[dict] = field(default_factory=list)
    origin: str = ""  # the data set's origin: what the rows' origin_source holds (see sources.py)
    row_count: int | None = (
        None  # the table's rows after this sync (kept by the sync, never counted)
    )
    inserted_after_id: int | None = None  # this sync's new rows have ids in (after, up_to]
    inserted_up_to_id: int | None = None
    updated_ids: list[int] = field(default_factory=list, repr=False)  # rows its upserts changed

    @property
    def synced(self) -> int:
        return self.inserted + self.updated

    @property
    def rows_per_second(self) -> float:
        return self.read / self.duration_seconds if self.duration_seconds > 0 else 0.0

    def as_dict(self) -> dict:
        data = asdict(self)
        del data["updated_ids"]  # possibly long; the history row keeps them
        data.update(
            started_at=self.started_at.isoformat(),
            synced=self.synced,
            rows_per_second=round(self.rows_per_second, 1),
        )
        return data


def lock_key(config: SyncConfig, origin: Origin, spec: EntitySpec | str) -> str:
    """Per data set, not per address: two syncs reaching one Redis by two names take turns.

    Rows matched by name (models, datasets, experiments, versions) are shared by every source, so
    their syncs take turns across sources too: two sources upserting the same names in different
    orders would otherwise lock each other's rows and deadlock."""
    spec = BY_NAME[spec] if isinstance(spec, str) else spec  # a spec outside ENTITIES syncs too
    if shared_across_sources(spec):
        return f"rp_pipeline/{config.sync_schema}/{spec.name}"
    return f"rp_pipeline/{config.sync_schema}/{origin.name}/{spec.name}"


def shared_across_sources(spec: EntitySpec) -> bool:
    """Whether two sources can hold the same row: identified by name, and so are its parents."""
    return not spec.by_origin and all(
        shared_across_sources(BY_NAME[p.entity]) for p in spec.parents
    )


def sync_entity(
    spec: EntitySpec,
    client: redis.Redis,
    conn: psycopg.Connection,
    config: SyncConfig,
    run_id: str = "manual",
    logger: logging.Logger | None = None,
) -> EntityResult:
    """Sync one entity; all of its rows and bookkeeping commit together or not at all.

    A missing right (Redis ACL, Postgres grant) raises PermissionProblem naming the grant:
    it is configuration, and retrying cannot help. Other faults raise SyncFailed: transient,
    nothing committed, the next cycle retries.
    """
    spare_the_collector()
    try:
        with redis_access(READ_ACCESS, config):
            return _sync_entity(spec, client, conn, config, run_id, logger or log)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise PermissionProblem(
            explain_postgres_refusal(exc, config, _pg_info(conn, "user"), _pg_info(conn, "dbname"))
        ) from None
    except psycopg.errors.LockNotAvailable:
        raise SyncFailed(
            f"{spec.name}: waited more than {config.lock_timeout_ms} ms for a Postgres lock (another "
            "sync of the same data running?); nothing committed, the next cycle retries"
        ) from None
    except psycopg.errors.QueryCanceled as exc:
        raise SyncFailed(
            f"{spec.name}: a Postgres statement ran past the {config.statement_timeout_ms} ms "
            f"statement timeout ({first_line(exc)}); nothing committed, the next cycle retries"
        ) from None
    except psycopg.OperationalError as exc:
        what = (
            "Postgres stopped answering"
            if getattr(conn, "stalled", False)
            else "lost the Postgres connection"
        )
        raise SyncFailed(
            f"{spec.name}: {what} ({first_line(exc)}); nothing committed, the next cycle retries"
        ) from None
    except redis.RedisError as exc:
        raise SyncFailed(
            f"{spec.name}: Redis failed ({first_line(exc)}); nothing committed, "
            "the next cycle retries"
        ) from None


_spared = threading.Lock()
_long_lived_frozen = False


def spare_the_collector() -> None:
    """Once per process, before its first sync: move what is alive by then (Dagster, the
    definitions, the imported modules: hundreds of thousands of objects) out of the cyclic
    garbage collector's way. A sync allocates millions of short-lived objects; each full
    collection they trigger would otherwise walk that whole heap again, which cost the Dagster
    job about 15% of a bulk load (benchmarks/profile_sync.py). Garbage is collected first, so
    nothing collectable is frozen; objects alive now and freed later still go by refcount.
    """
    global _long_lived_frozen
    with _spared:
        if not _long_lived_frozen:
            gc.collect()
            gc.freeze()
            _long_lived_frozen = True


@contextmanager
def redis_access(access: RedisAccess, config: SyncConfig) -> Iterator[None]:
    """Turn a Redis ACL refusal inside the block into a PermissionProblem naming `access`'s rule."""
    try:
        yield
    except redis.RedisError as exc:
        if refused_by_acl(exc):
            raise PermissionProblem(explain_redis_refusal(exc, config, access)) from None
        raise


def _pg_info(conn: psycopg.Connection, name: str) -> str | None:
    try:
        return getattr(conn.info, name)
    except psycopg.Error:  # a closed connection: the URL's names are used instead
        return None


def _sync_entity(
    spec: EntitySpec,
    client: redis.Redis,
    conn: psycopg.Connection,
    config: SyncConfig,
    run_id: str,
    logger: logging.Logger,
) -> EntityResult:
    clock = time.perf_counter()
    result = EntityResult(spec.name, spec.stat, datetime.now(timezone.utc))
    src = RedisSource(client, config.key_prefix)
    with redis_access(MARKER_ACCESS, config):
        origin = resolve_origin(
            src, conn, config, logger
        )  # committed before: no sync waits on its row
    record_attempt(conn, config.sync_schema, origin.name, spec.name)  # kept even if the sync fails
    with conn.transaction():
        # TimeZone UTC: the layout's naive timestamps are UTC, also where COPY parses them directly.
        conn.execute(
            "SELECT set_config('statement_timeout', %s, true), set_config('lock_timeout', %s, true), "
            "set_config('TimeZone', 'UTC', true)",
            (str(config.statement_timeout_ms), str(config.lock_timeout_ms)),
        )
        # Two syncs of the same entity (a one-shot run while the schedule fires) take turns here.
        conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
            (lock_key(config, origin, spec),),
        )
        book = Bookkeeping(conn, config.sync_schema, origin.name, spec.name, origin.generation)
        result.origin = origin.name
        loader = Loader(conn, spec, config, origin, logger)
        book.drop_other_generations()
        pending = set(book.pending_keys())
        book.preload_ids({parent.entity for parent in spec.parents})  # so mapping needs no query
        table = f"{q(config.schema)}.{q(spec.name)}"
        result.inserted_after_id = book.largest_id(table)
        in_flight = InFlight(config.memory_budget_bytes // MEMORY_PER_BYTE_READ)
        plan = strategy_of(spec).plan(spec, src, book, config, pending, in_flight.chunk_bytes)
        result.watermark = plan.watermark
        tally = Tally(spec, book, config, pending, plan, result, logger)

        # Extract, validate, map and COPY formatting run in a thread, a chunk or two ahead of the
        # loads; this thread only talks to Postgres, so the server is never waiting on Python.
        # The reader takes bytes from `in_flight` before each chunk and they come back once it is
        # loaded, so what is held at once stays within the memory budget.
        nothing, staged, progress = LoadResult(), 0, Progress(spec.name, logger)
        for batch in prefetched(
            _prepare(spec, in_flight.gate(plan.reads), book.resolve, loader),
            stopping=in_flight.close,
        ):
            result.read += batch.read
            result.bytes_read += batch.bytes
            result.largest_record_bytes = max(result.largest_record_bytes, batch.largest)
            loader.stage(batch.mapped, batch.raw, batch.payload, batch.start)
            # Append-only rows load chunk by chunk; mutable ones once, so duplicates settle on the latest,
            # unless their records as read (kept for rejections) outgrow the budget: then the later flush
            # updates what an earlier one wrote, which settles on the latest too.
            staged += batch.bytes
            flush = not spec.mutable or staged > in_flight.chunk_bytes
            tally.add(loader.flush() if flush else nothing, batch.rejected, batch.waiting)
            staged = 0 if flush else staged
            in_flight.release(batch.bytes)
            progress.update(result.read, result.bytes_read)
            del batch  # before waiting for the next: its memory is free for the reader
        if spec.mutable:
            tally.add(loader.flush())
        progress.finish(result.read, result.bytes_read)
        if (
            src.problems
        ):  # an unreadable counter or index: reported like a bad record, the rest synced
            keys, reasons = zip(*dict(src.problems).items())
            tally.add(LoadResult(), [pd.DataFrame({"_key": keys, "raw": None, "reason": reasons})])
        if not spec.incremental:
            book.forget_unseen()
        if plan.series_cards:
            book.set_series_cards(plan.series_cards)
        if result.watermark is not None:
            book.set_watermark(result.watermark)
        result.pending = book.pending_count()
        result.inserted_up_to_id = (
            book.largest_id(table) if result.inserted else result.inserted_after_id
        )
        result.row_count = book.add_rows(config.schema, spec.name, result.inserted)
        result.duration_seconds = time.perf_counter() - clock
        book.record_run(run_id, result)
        if src.marker() != origin.generation:
            # Flushed or restarted mid-cycle: what was read may belong to the next data set, which has
            # an origin of its own. Nothing commits; the next cycle reads that data set afresh.
            raise SyncFailed(
                f"{spec.name}: Redis was flushed or restarted during the sync (its marker "
                f"{src.prefix}{GENERATION_KEY} changed); nothing committed, the next cycle retries"
            )
        book.record_success(run_id, result)
    if spec.name in config.retention_hours:
        # Only after the commit: what is deleted from Redis is already durable in Postgres.
        with redis_access(RETENTION_ACCESS, config):
            result.deleted = apply_retention(spec, client, conn, config)
        with conn.transaction():
            book.record_deleted(run_id, result.deleted)
        if result.deleted:
            logger.info(
                "  %s: %d record(s) deleted from Redis (retention %g h)",
                spec.name,
                result.deleted,
                config.retention_hours[spec.name],
            )
    return result


class Tally:
    """Adds each flush's outcome to the entity's result and bookkeeping: counts, records that
    loaded or were rejected (and no longer pending), records that wait for a parent."""

    def __init__(
        self,
        spec: EntitySpec,
        book: Bookkeeping,
        config: SyncConfig,
        pending: set[str],
        plan: ReadPlan,
        result: EntityResult,
        logger: logging.Logger,
    ):
        self.spec, self.book, self.config, self.pending = spec, book, config, pending
        self.plan, self.result, self.log = plan, result, logger

    def add(
        self,
        loaded: LoadResult,
        rejected: list[pd.DataFrame] = (),
        waiting: pd.DataFrame = NO_WAITING,
    ) -> None:
        result, book, pending = self.result, self.book, self.pending
        result.inserted += loaded.inserted
        result.updated += loaded.updated
        result.unchanged += loaded.unchanged
        result.skipped += loaded.skipped
        result.json_non_finite_nulled += loaded.non_finite
        result.updated_ids.extend(loaded.updated_ids)
        rejected = [
            r
            for r in [
                *rejected,
                *loaded.rejected,
                book.wait(waiting, self.config.pending_max_age_seconds),
            ]
            if not r.empty
        ]
        rejected = (
            pd.concat(rejected, ignore_index=True)
            if rejected
            else pd.DataFrame(columns=["_key", "raw", "reason"])
        )
        if pending:
            book.done([k for k in loaded.loaded_keys + rejected["_key"].tolist() if k in pending])
        if self.spec.incremental:
            # Read once: only a retried (pending) record can load after a rejection.
            loaded_again = [k for k in loaded.loaded_keys if k in pending] if pending else []
        else:
            loaded_again = loaded.loaded_keys
        book.forget_rejected(loaded_again, still_rejected=rejected["_key"].tolist())
        new = book.reject(rejected)
        result.rejected += new
        self.plan.keep_waiting(waiting)
        for key, reason in zip(rejected["_key"], rejected["reason"]):
            if len(result.rejection_samples) < 5:
                result.rejection_samples.append({"key": key, "reason": reason})
        if len(rejected):
            self.log.warning(
                "  %s: %d record(s) rejected (%d of them for the first time), e.g. %s: %s",
                self.spec.name,
                len(rejected),
                new,
                rejected["_key"].iloc[0],
                rejected["reason"].iloc[0],
            )


@dataclass
class _Batch:
    read: int
    bytes: int  # as read from Redis: what it holds of the memory budget
    largest: int  # its largest record's bytes
    mapped: pd.DataFrame
    raw: (
        pd.DataFrame
    )  # the records as read, before validation rewrote any value (for rejections by Postgres)
    start: int  # ordinal of the first mapped record in this cycle's staging
    payload: bytes
    rejected: list[pd.DataFrame]
    waiting: pd.DataFrame


def _prepare(spec: EntitySpec, reads: Iterator[Read], resolve, loader: Loader) -> Iterator[_Batch]:
    """Everything before the load that needs no Postgres round trip (ids are preloaded)."""
    start = 0
    for read in reads:
        frame = read.frame
        missing = (
            pd.DataFrame({"_key": read.missing, "reason": NOT_WRITTEN_YET})
            if read.missing
            else NO_WAITING
        )
        # Incremental records are read once: one caught half-written waits (pending) instead of being rejected.
        incomplete: list[pd.DataFrame] = [missing]
        ok, rejected = validate(spec, frame, incomplete if spec.incremental else None)
        mapped, waiting = map_parent_ids(spec, ok, resolve)
        mapped = null_non_finite_json(spec, mapped)
        waiting = pd.concat([waiting, *[w for w in incomplete if not w.empty]], ignore_index=True)
        yield _Batch(
            len(frame),
            read.bytes,
            read.largest,
            mapped,
            frame,
            start,
            loader.copy_payload(mapped, start),
            rejected,
            waiting,
        )
        del read, frame  # the reader's references: the batch holds what is still needed
        start += len(mapped)


class InFlight:
    """Bytes read from Redis and not loaded into Postgres yet, kept within `limit`.

    The reader takes a chunk's worth before reading one, and waits while that would pass the limit;
    the loader gives a chunk's bytes back once it is loaded. A record bigger than a chunk is read
    on its own, then waits until everything else is loaded, so it is prepared and loaded alone.
    """

    def __init__(self, limit: int):
        self.limit = max(1, limit)
        self.chunk_bytes = max(1, self.limit // CHUNKS_IN_FLIGHT)
        self.held = 0
        self.closed = False
        self._changed = threading.Condition()

    def _wait_until(self, ready) -> None:
        with self._changed:
            while not self.closed and not ready():
                self._changed.wait(0.1)

    def take(self, amount: int) -> None:
        self._wait_until(lambda: self.held == 0 or self.held + amount <= self.limit)
        with self._changed:
            self.held += amount

    def settle(self, taken: int, actual: int) -> None:
        """The chunk read holds `actual` bytes, not the `taken` ones reserved for it."""
        with self._changed:
            self.held += actual - taken
            self._changed.notify_all()
        if actual > self.chunk_bytes:
            self._wait_until(lambda: self.held <= actual)

    def release(self, amount: int) -> None:
        with self._changed:
            self.held -= amount
            self._changed.notify_all()

    def close(self) -> None:
        """Let a waiting reader go: the consumer has stopped."""
        with self._changed:
            self.closed = True
            self._changed.notify_all()

    def gate(self, reads: Iterator[Read]) -> Iterator[Read]:
        """`reads`, each chunk read only once the budget has room for it."""
        reads = iter(reads)
        while True:
            self.take(self.chunk_bytes)
            read = next(reads, None)
            if read is None:
                self.release(self.chunk_bytes)
                return
            self.settle(self.chunk_bytes, read.bytes)
            yield read
            del read


class Progress:
    """A log line every PROGRESS_EVERY_SECONDS of a long load: records and bytes so far."""

    def __init__(self, entity: str, logger: logging.Logger):
        self.entity, self.log = entity, logger
        self.started = self.last = time.monotonic()

    def update(self, records: int, nbytes: int) -> None:
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_SECONDS:
            self.last = now
            self.log.info(
                "  %s: %s records, %s read so far (%.0f s, %s/s)",
                self.entity,
                f"{records:,}",
                human_bytes(nbytes),
                now - self.started,
                human_bytes(nbytes / (now - self.started)),
            )

    def finish(self, records: int, nbytes: int) -> None:
        if self.last > self.started:  # it logged progress: say where it ended
            self.last = float("-inf")
            self.update(records, nbytes)


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024


def prefetched(items: Iterator, depth: int = 2, stopping=lambda: None) -> Iterator:
    """Run an iterator in a thread, up to `depth` items ahead, so Redis reads overlap Postgres writes.
    `stopping` is called when the consumer stops, before waiting for the thread (to wake it)."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for item in items:
                if not put(item):
                    return
            put(done)
        except BaseException as exc:  # handed to the consumer, raised there
            put(_Failure(exc))

    thread = threading.Thread(target=work, name="rp_pipeline-extract", daemon=True)
    thread.start()
    try:
        while True:
            item = slots.get()
            if item is done:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        stopping()
        thread.join()


@dataclass
class _Failure:
    exc: BaseException


def sync_all(
    client: redis.Redis,
    conn: psycopg.Connection,
    config: SyncConfig,
    run_id: str = "manual",
    logger: logging.Logger | None = None,
    entities: tuple[EntitySpec, ...] = ENTITIES,
) -> dict[str, EntityResult]:
    """Every entity in dependency order (the same order the Dagster job runs them)."""
    return {spec.name: sync_entity(spec, client, conn, config, run_id, logger) for spec in entities}


def stats_from_results(results) -> dict[str, int]:
    """The guide's counters (records synced per kind, and errors) from entity results or history rows."""
    stats = {key: 0 for key in STAT_KEYS}
    stats["experiment_runs"] = 0
    for r in results:
        r = r if isinstance(r, dict) else r.as_dict()
        stats[BY_NAME[r["entity"]].stat] += r["inserted"] + r["updated"]
        stats["errors"] += r["rejected"]
    return stats
