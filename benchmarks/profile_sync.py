"""Where the real sync's time goes: the Dagster job as users run it, or the engine's predictions alone.

    .venv/bin/python benchmarks/profile_sync.py [--n 100000] [--engine] [--top 25] [--save sync.prof]
        [--no-cprofile] [--redis-url redis://127.0.0.1:6379/12]
        [--postgres-url postgresql://postgres@127.0.0.1:5432/postgres] [--db-suffix _mine] [--keep]

Fills the benchmark workload (run.py's) and syncs it into a fresh database `rp_bench_profile`
(dropped after), twice: once with timers around the stages, which cost next to nothing, and once
under cProfile (every thread), for the function-level view.

By default it runs the job path (run.py's `job`): `RedisPgSync.sync_once()` in process on the
default instance, and splits the run's wall time into Dagster's start and finish, each table's
sync (the engine's stages inside it), each check, and the events Dagster stored (count and time
per kind), with the run's timeline. `--engine` syncs only the predictions through
`engine.sync_all` (the other tables first, unmeasured), for the engine's stages alone.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import threading
import time
from pathlib import Path
from typing import ClassVar

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

from run import DEFAULT_POSTGRES_URL, DEFAULT_REDIS_URL, admin, database_url, flush  # noqa: E402
from workload import PREFIX, fill  # noqa: E402

# Stages are found by function names, so they follow the engine as it changes: a stage whose
# functions are gone shows nothing, and the top-functions list still tells the truth.
LOCK_WAIT = ("~", "<method 'acquire' of '_thread.lock' objects>")
PSYCOPG_WAIT = ("psycopg/connection.py", "wait")
REDIS_READ = [("rp_pipeline/extract.py", "pipelined"), ("rp_pipeline/extract.py", "hmget_many")]
COPY_TEXT = [("rp_pipeline/load.py", "copy_payload")]
COPY_TEXT_PARTS = [
    ("rp_pipeline/copy_encoding.py", "copy_text"),
    ("rp_pipeline/copy_encoding.py", "as_text"),
]


def cumulative(stats: pstats.Stats, wanted: list[tuple[str, str]]) -> float:
    """Cumulative time of the wanted functions (recursion is not double counted by cProfile)."""
    total = 0.0
    for (filename, _, name), (_, _, tt, ct, _) in stats.stats.items():
        for suffix, fn in wanted:
            if (suffix, fn) == LOCK_WAIT and (filename, name) == LOCK_WAIT:
                total += tt
            elif filename.endswith(suffix) and name == fn:
                total += ct
    return total


def entered(stats: pstats.Stats, module: str) -> float:
    """Time inside a module's functions, counted where callers from outside the module call in."""
    return sum(
        c[3]
        for (filename, _, _), (_, _, _, _, callers) in stats.stats.items()
        if filename.endswith(module)
        for caller, c in callers.items()
        if not caller[0].endswith(module)
    )


def stage_times(stats: pstats.Stats) -> dict[str, float]:
    redis_read = cumulative(stats, REDIS_READ)
    copy_text = cumulative(stats, COPY_TEXT) or cumulative(stats, COPY_TEXT_PARTS)
    return {
        "Redis read (pipelined HMGET + reply parsing)": redis_read,
        "DataFrame build (rest of read_hashes: keys, rows, frame)": max(
            0.0, cumulative(stats, [("rp_pipeline/extract.py", "read_hashes")]) - redis_read
        ),
        "validation (mapping.validate)": cumulative(
            stats, [("rp_pipeline/mapping.py", "validate")]
        ),
        "parent id mapping (map_parent_ids)": cumulative(
            stats, [("rp_pipeline/mapping.py", "map_parent_ids")]
        ),
        "COPY text build (Loader.copy_payload)": copy_text,
        "Postgres load: COPY, upsert, id map (Loader, minus COPY text)": max(
            0.0, entered(stats, "rp_pipeline/load.py") - copy_text
        ),
        "bookkeeping (pending, rejected, watermark, history)": entered(
            stats, "rp_pipeline/bookkeeping.py"
        ),
        "waiting on the other thread (lock waits)": cumulative(stats, [LOCK_WAIT]),
    }


def print_stages(title: str, stats: pstats.Stats, wall: float) -> None:
    times = stage_times(stats)
    print(f"{title}")
    print(f"  {'stage':<62}{'seconds':>9}{'share':>8}")
    for stage, seconds in sorted(times.items(), key=lambda kv: -kv[1]):
        if seconds >= 0.005:
            print(f"  {stage:<62}{seconds:>9.2f}{seconds / wall:>8.0%}")
    other = wall - sum(times.values())
    print(f"  {'other':<62}{other:>9.2f}{other / wall:>8.0%}")
    server = cumulative(stats, [PSYCOPG_WAIT])
    if server >= 0.005:
        print(
            f"  (of all this, waiting for Postgres to answer, psycopg's wait: {server:.2f} s = {server / wall:.0%})"
        )


class CProfiles:
    """cProfile of the calling thread and of every thread started meanwhile (the extract thread)."""

    def __init__(self):
        self.main = cProfile.Profile()
        self.threads: list[tuple[str, cProfile.Profile, list[float]]] = []
        self._run = threading.Thread.run
        self._started = 0.0
        self.wall = 0.0

    def __enter__(self):
        threads, original = self.threads, self._run

        def run(thread):
            profile, span = cProfile.Profile(), [time.perf_counter()]
            threads.append((thread.name, profile, span))
            profile.enable()
            try:
                original(thread)
            finally:
                profile.disable()
                span.append(time.perf_counter())

        threading.Thread.run = run
        self._started = time.perf_counter()
        self.main.enable()
        return self

    def __exit__(self, *exc):
        self.main.disable()
        self.wall = time.perf_counter() - self._started
        threading.Thread.run = self._run

    def print(self, top: int, save: str | None) -> None:
        stats = pstats.Stats(self.main)
        print_stages(
            f"main thread (the one that talks to Postgres), {self.wall:.2f} s:", stats, self.wall
        )
        for name, profile, span in self.threads:
            if len(span) == 2 and profile.getstats():
                print_stages(
                    f"thread {name!r}, alive {span[1] - span[0]:.2f} s:",
                    pstats.Stats(profile),
                    span[1] - span[0],
                )
                stats.add(pstats.Stats(profile))
        if save:
            stats.dump_stats(save)
        if top:
            print(f"\ntop {top} functions by own time, all threads:")
            stats.sort_stats("tottime").print_stats(top)


class StageTimers:
    """Wall time per stage and thread, without a profiler: the engine's functions wrapped in timers.

    Each timer counts its own time only (a timed call inside another is taken out of the outer one);
    queue waits are the hand-offs between the extract thread and the one that writes to Postgres.
    """

    TIMED: ClassVar = [  # (module, attribute: a function, or Class.method), stage
        ("rp_pipeline.extract", "hmget_many", "Redis read (pipelined HMGET + reply parsing)"),
        (
            "rp_pipeline.extract",
            "read_hashes",
            "DataFrame build (rest of read_hashes: keys, rows, frame)",
        ),
        ("rp_pipeline.mapping", "validate", "validation (mapping.validate)"),
        ("rp_pipeline.mapping", "map_parent_ids", "parent id mapping (map_parent_ids)"),
        ("rp_pipeline.load", "Loader.copy_payload", "COPY text build (Loader.copy_payload)"),
        ("rp_pipeline.load", "Loader.stage", "Postgres load: COPY, upsert, id map (Loader)"),
        ("rp_pipeline.load", "Loader.flush", "Postgres load: COPY, upsert, id map (Loader)"),
        (
            "rp_pipeline.bookkeeping",
            "Bookkeeping.*",
            "bookkeeping (pending, rejected, watermark, history)",
        ),
        ("queue", "Queue.get", "waiting on the other thread (queue hand-off)"),
        ("queue", "Queue.put", "waiting on the other thread (queue hand-off)"),
    ]

    def __init__(self):
        self.totals: dict[str, dict[str, float]] = {}
        self.by_table: dict[str, dict[str, float]] = {}  # the same, per table (all threads)
        self.table: str | None = None  # the table being synced, where a stage cannot tell
        self.spans: dict[str, float] = {}
        self._undo: list[tuple[object, str, object]] = []
        self._local = threading.local()

    def _wrap(self, stage: str, fn):
        local, totals, by_table = self._local, self.totals, self.by_table

        def timed(*args, **kwargs):
            stack = local.__dict__.setdefault("stack", [])
            stack.append(0.0)
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.perf_counter() - started
                inner = stack.pop()
                mine = totals.setdefault(threading.current_thread().name, {})
                mine[stage] = mine.get(stage, 0.0) + spent - inner
                table = next((a.name for a in args if type(a).__name__ == "EntitySpec"), self.table)
                if table:
                    theirs = by_table.setdefault(table, {})
                    theirs[stage] = theirs.get(stage, 0.0) + spent - inner
                if stack:
                    stack[-1] += spent

        return timed

    def _patch(self, owner, name: str, new) -> None:
        self._undo.append((owner, name, owner.__dict__[name]))
        setattr(owner, name, new)

    def __enter__(self):
        import importlib

        for module_name, attribute, stage in self.TIMED:
            module = importlib.import_module(module_name)
            if "." in attribute:
                cls_name, method = attribute.split(".")
                cls = getattr(module, cls_name, None)
                if cls is None:
                    continue
                names = (
                    [m for m, v in vars(cls).items() if callable(v) and not m.startswith("__")]
                    if method == "*"
                    else [method]
                )
                for m in names:
                    if m in vars(cls):
                        self._patch(cls, m, self._wrap(stage, vars(cls)[m]))
                continue
            original = getattr(module, attribute, None)
            if original is None:
                continue
            wrapped = self._wrap(stage, original)
            # the engine imported the function by name: replace every reference in the package
            for loaded in [
                m for name, m in list(sys.modules.items()) if name.startswith("rp_pipeline")
            ]:
                if getattr(loaded, attribute, None) is original:
                    self._patch(loaded, attribute, wrapped)
        spans, run = self.spans, threading.Thread.run

        def timed_run(thread):
            started = time.perf_counter()
            try:
                run(thread)
            finally:
                spans[thread.name] = time.perf_counter() - started

        self._patch(threading.Thread, "run", timed_run)
        return self

    def __exit__(self, *exc):
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)

    def print(self, wall: float) -> None:
        for thread, stages in self.totals.items():
            alive = wall if thread == threading.main_thread().name else self.spans.get(thread, wall)
            title = (
                "main thread (the one that talks to Postgres)"
                if thread == threading.main_thread().name
                else f"thread {thread!r}"
            )
            print(f"{title}, {alive:.2f} s:")
            for stage, seconds in sorted(stages.items(), key=lambda kv: -kv[1]):
                if seconds >= 0.005:
                    print(f"  {stage:<62}{seconds:>9.2f}{seconds / alive:>8.0%}")
            other = alive - sum(stages.values())
            print(f"  {'other':<62}{other:>9.2f}{other / alive:>8.0%}")


class JobTimers(StageTimers):
    """StageTimers plus what the job adds around the engine: each check, and Dagster's event writes."""

    TIMED: ClassVar = [
        *StageTimers.TIMED,
        ("rp_pipeline.checks", "check_identity", "check: identity_is_unique"),
        ("rp_pipeline.checks", "check_foreign_keys", "check: foreign_keys_resolve"),
        ("rp_pipeline.checks", "check_reconciliation", "check: reconciles_with_redis"),
        ("rp_pipeline.checks", "check_rejections", "check: no_rejected_records"),
        ("rp_pipeline.sources", "resolve_origin", "origin lookup (resolve_origin)"),
        ("rp_pipeline.assets", "record_statistics", "run statistics (run tags, summary line)"),
        ("rp_pipeline.schema", "ensure_schema", "schema check (ensure_schema)"),
    ]

    def __init__(self):
        super().__init__()
        self.events: dict[str, list[float]] = {}  # kind -> [count, seconds]

    def __enter__(self):
        import logging

        import dagster as dg

        from rp_pipeline import assets

        super().__enter__()
        sync_entity, timers = assets.sync_entity, self

        def syncing(spec, *args, **kwargs):
            timers.table = spec.name
            try:
                return sync_entity(spec, *args, **kwargs)
            finally:
                timers.table = None

        self._patch(assets, "sync_entity", syncing)
        handle, events = dg.DagsterInstance.handle_new_event, self.events
        wrapped_stage = self._wrap("Dagster: storing events (handle_new_event)", handle)

        def timed(instance, event, *args, **kwargs):
            started = time.perf_counter()
            try:
                return wrapped_stage(instance, event, *args, **kwargs)
            finally:
                kind = (
                    event.dagster_event.event_type_value
                    if event.is_dagster_event
                    else f"log line ({logging.getLevelName(event.level)})"
                )
                tally = events.setdefault(kind, [0, 0.0])
                tally[0] += 1
                tally[1] += time.perf_counter() - started

        self._undo.append((dg.DagsterInstance, "handle_new_event", handle))
        dg.DagsterInstance.handle_new_event = timed
        return self

    def print_tables(self) -> None:
        print("per table, all threads (stages of 0.05 s or more):")
        for table, stages in self.by_table.items():
            shown = [(k, v) for k, v in sorted(stages.items(), key=lambda kv: -kv[1]) if v >= 0.05]
            if shown:
                print(f"  {table}: " + ", ".join(f"{k} {v:.2f}" for k, v in shown))

    def print_events(self) -> None:
        count = sum(n for n, _ in self.events.values())
        seconds = sum(t for _, t in self.events.values())
        print(
            f"events stored: {count} in {seconds:.2f} s ({seconds / max(count, 1) * 1000:.0f} ms each)"
        )
        for kind, (n, t) in sorted(self.events.items(), key=lambda kv: -kv[1][1]):
            print(f"  {kind:<40}{n:>5}{t:>8.2f} s{t / n * 1000:>7.0f} ms each")


def print_timeline(instance, run_id: str, started: float) -> None:
    """The run's events in order, with the time since the cycle started and since the event before."""
    entries = instance.all_logs(run_id)
    print(
        f"timeline of run {run_id[:8]} ({len(entries)} events; s since sync_once began, +s since the previous):"
    )
    last = started
    for entry in entries:
        kind = entry.dagster_event.event_type_value if entry.is_dagster_event else "LOG"
        what = entry.user_message.splitlines()[0][:70] if entry.user_message else ""
        if entry.is_dagster_event and entry.dagster_event.asset_key:
            what = f"{entry.dagster_event.asset_key.to_user_string()} {what[:50]}"
        print(
            f"  {entry.timestamp - started:>7.2f} +{entry.timestamp - last:>5.2f}  {kind:<28} {what}"
        )
        last = entry.timestamp


def job_tables(pg_url: str, run_id: str) -> list[tuple[str, int, float]]:
    import psycopg

    with psycopg.connect(pg_url) as conn:
        return conn.execute(
            "SELECT entity, inserted + updated, duration_seconds FROM rp_sync.entity_runs "
            "WHERE run_id = %s ORDER BY id",
            (run_id,),
        ).fetchall()


def profile_job(args, db: str) -> None:
    """The job path: RedisPgSync.sync_once() on the default instance in a temporary directory."""
    import logging
    import os
    import shutil
    import tempfile

    from rp_pipeline import schema
    from rp_pipeline.api import RedisPgSync, sync_instance
    from rp_pipeline.settings import SyncConfig

    pg_url = database_url(args.postgres_url, db)
    config = SyncConfig(postgres_url=pg_url, redis_url=args.redis_url, key_prefix=PREFIX)
    quiet = logging.getLogger("rp_bench_profile")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    here = os.getcwd()

    def run_job(measure, title: str):
        fresh_database(args.postgres_url, db)
        schema._migrated.clear()  # the job migrates the fresh database, as run.py's job path does
        home = Path(tempfile.mkdtemp(prefix="rp_bench_profile_"))
        shutil.copy(HERE.parent / "dagster.yaml", home / "dagster.yaml")
        for name in ("DAGSTER_HOME", "DAGSTER_POSTGRES_URL"):
            os.environ.pop(name, None)
        os.chdir(home)
        try:
            sync = RedisPgSync.from_config(config, quiet)
            sync.preflight()  # the instance's storage is created before the clock starts
            with measure:
                started_at = time.time()
                started = time.perf_counter()
                outcome = sync.sync_once()
                wall = time.perf_counter() - started
            if not outcome.success:
                raise RuntimeError("; ".join(outcome.failures))
            tables = job_tables(pg_url, outcome.run_id)
            print(
                f"\n{title}: sync_once {wall:.2f} s = {args.n / wall:,.0f} predictions/s (whole run)"
            )
            synced = sum(t for _, _, t in tables)
            print(f"  tables' own syncs (rp_sync.entity_runs) {synced:.2f} s:")
            for entity, rows, seconds in tables:
                if seconds >= 0.005:
                    print(f"    {entity:<20}{rows:>10,} rows{seconds:>8.2f} s")
            if isinstance(measure, JobTimers):
                with sync_instance() as instance:
                    print_timeline(instance, outcome.run_id, started_at)
        finally:
            os.chdir(here)
            shutil.rmtree(home, ignore_errors=True)
        return wall

    timers = JobTimers()
    wall = run_job(timers, "the job, timed per stage (no profiler)")
    timers.print(wall)
    timers.print_tables()
    timers.print_events()
    if not args.no_cprofile:
        profiles = CProfiles()
        wall = run_job(profiles, "the same under cProfile (Python-heavy code is inflated)")
        profiles.print(args.top, args.save)


def fresh_database(postgres_url: str, db: str) -> None:
    with admin(postgres_url) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {db}")
        conn.execute("CHECKPOINT")


def profile_engine(args, db: str) -> None:
    """The engine alone: sync_all of the predictions, the other tables synced first, unmeasured."""
    from rp_pipeline.connections import connect_postgres, connect_redis
    from rp_pipeline.engine import sync_all
    from rp_pipeline.entities import ENTITIES, PREDICTIONS
    from rp_pipeline.schema import migrate
    from rp_pipeline.settings import SyncConfig

    config = SyncConfig(
        postgres_url=database_url(args.postgres_url, db),
        redis_url=args.redis_url,
        key_prefix=PREFIX,
    )

    def sync_predictions(measure):
        fresh_database(args.postgres_url, db)
        migrate(config)
        client, conn = connect_redis(config), connect_postgres(config)
        try:
            sync_all(
                client,
                conn,
                config,
                run_id="profile-parents",
                entities=tuple(e for e in ENTITIES if e is not PREDICTIONS),
            )
            with measure:
                started = time.perf_counter()
                result = sync_all(client, conn, config, run_id="profile", entities=(PREDICTIONS,))[
                    "predictions"
                ]
                wall = time.perf_counter() - started
        finally:
            client.close()
            conn.close()
        return result, wall

    timers = StageTimers()
    result, wall = sync_predictions(timers)
    print(
        f"sync_entity(PREDICTIONS), N = {args.n:,}, timed per stage (no profiler): {result.read:,} read, "
        f"{result.inserted:,} inserted in {wall:.2f} s = {result.read / wall:,.0f} predictions/s"
    )
    timers.print(wall)
    if not args.no_cprofile:
        profiles = CProfiles()
        result, wall = sync_predictions(profiles)
        print(
            f"\nthe same under cProfile: {wall:.2f} s ({result.read / wall:,.0f} predictions/s; wall time, so "
            "waiting on a server counts; Python-heavy code is inflated by the profiler)"
        )
        profiles.print(args.top, args.save)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument(
        "--engine", action="store_true", help="the engine's predictions alone, not the job"
    )
    parser.add_argument(
        "--top", type=int, default=25, help="cProfile: the top functions by own time"
    )
    parser.add_argument(
        "--no-cprofile", action="store_true", help="only the timers (unprofiled) run"
    )
    parser.add_argument("--save", help="write the raw cProfile data here (for snakeviz, pstats)")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--db-suffix", default="", help="appended to the database's name")
    parser.add_argument(
        "--keep", action="store_true", help="keep the database (to time queries on it after)"
    )
    args = parser.parse_args()

    db = f"rp_bench_profile{args.db_suffix}"
    fill(args.redis_url, args.n)
    try:
        (profile_engine if args.engine else profile_job)(args, db)
    finally:
        if not args.keep:
            with admin(args.postgres_url) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        flush(args.redis_url)


if __name__ == "__main__":
    main()
