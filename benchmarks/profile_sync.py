"""Where the real sync's time goes: `engine.sync_all` under cProfile, summed up by stage.

    .venv/bin/python benchmarks/profile_sync.py [--n 100000] [--top 25] [--save sync.prof]
        [--redis-url redis://127.0.0.1:6379/12] [--postgres-url postgresql://postgres@127.0.0.1:5432/postgres]

Fills the benchmark workload (run.py's), syncs it once into a fresh database `rp_bench_profile`
(dropped after) and prints the predictions entity's time per stage: Redis read, DataFrame build,
validation, parent mapping, COPY text build, COPY transfer, Postgres upsert, bookkeeping. Times are
wall time as cProfile sees it (waiting on a server counts), inflated somewhat for Python-heavy code.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

from run import DEFAULT_POSTGRES_URL, DEFAULT_REDIS_URL, admin, database_url, flush  # noqa: E402
from workload import PREFIX, fill  # noqa: E402

# Stages by the functions whose time they are: (module path suffix, function name); "*" is every function
# of the module, called from outside it. A stage listed in MINUS has the other stages' time taken out.
LOCK_WAIT = ("~", "<method 'acquire' of '_thread.lock' objects>")
STAGES = {
    "Redis read (pipelined HMGET + reply parsing)": [("rp_pipeline/extract.py", "pipelined"),
                                                     ("rp_pipeline/extract.py", "hmget_many")],
    "DataFrame build (rest of read_hashes: keys, rows, frame)": [("rp_pipeline/extract.py", "read_hashes")],
    "validation (mapping.validate)": [("rp_pipeline/mapping.py", "validate")],
    "parent id mapping (map_parent_ids)": [("rp_pipeline/mapping.py", "map_parent_ids")],
    "COPY text build (copy_text + _as_text)": [("rp_pipeline/load.py", "copy_text"),
                                               ("rp_pipeline/load.py", "_as_text")],
    "COPY transfer to staging (+ TRUNCATE)": [("rp_pipeline/load.py", "_stage")],
    "Postgres upsert (INSERT … SELECT … ON CONFLICT)": [("rp_pipeline/load.py", "_insert_range")],
    "id map and per-record log lines": [("rp_pipeline/load.py", "_record_ids"),
                                        ("rp_pipeline/load.py", "_log_synced")],
    "bookkeeping (pending, rejected, watermark, history)": [("rp_pipeline/bookkeeping.py", "*")],
    "waiting on the other thread (lock waits)": [LOCK_WAIT],
}
MINUS = {
    "DataFrame build (rest of read_hashes: keys, rows, frame)": ["Redis read (pipelined HMGET + reply parsing)"],
    "COPY transfer to staging (+ TRUNCATE)": ["COPY text build (copy_text + _as_text)"],
}


def cumulative(stats: pstats.Stats, wanted: list[tuple[str, str]]) -> float:
    """Cumulative time of the wanted functions (recursion is not double counted by cProfile)."""
    total = 0.0
    for (filename, _, name), (_, _, tt, ct, callers) in stats.stats.items():
        for suffix, fn in wanted:
            if (suffix, fn) == LOCK_WAIT and (filename, name) == LOCK_WAIT:
                total += tt
            elif filename.endswith(suffix) and fn == "*":
                total += sum(c[3] for caller, c in callers.items() if not caller[0].endswith(suffix))
            elif filename.endswith(suffix) and name == fn:
                total += ct
    return total


def stage_times(stats: pstats.Stats) -> dict[str, float]:
    times = {stage: cumulative(stats, fns) for stage, fns in STAGES.items()}
    for stage, minus in MINUS.items():
        times[stage] = max(0.0, times[stage] - sum(times[m] for m in minus))
    return times


def print_stages(title: str, stats: pstats.Stats, wall: float) -> None:
    times = stage_times(stats)
    print(f"{title}")
    print(f"  {'stage':<54}{'seconds':>9}{'share':>8}")
    for stage, seconds in sorted(times.items(), key=lambda kv: -kv[1]):
        if seconds >= 0.005:
            print(f"  {stage:<54}{seconds:>9.2f}{seconds / wall:>8.0%}")
    other = wall - sum(times.values())
    print(f"  {'other':<54}{other:>9.2f}{other / wall:>8.0%}")


class ThreadProfiles:
    """cProfile sees one thread; this profiles every thread started while it is active (the extract thread)."""

    def __init__(self):
        self.profiles: list[tuple[str, cProfile.Profile, list[float]]] = []
        self._run = threading.Thread.run

    def __enter__(self):
        profiles, original = self.profiles, self._run

        def run(thread):
            profile, span = cProfile.Profile(), [time.perf_counter()]
            profiles.append((thread.name, profile, span))
            profile.enable()
            try:
                original(thread)
            finally:
                profile.disable()
                span.append(time.perf_counter())

        threading.Thread.run = run
        return self

    def __exit__(self, *exc):
        threading.Thread.run = self._run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--top", type=int, default=25, help="also print the top functions by own time")
    parser.add_argument("--save", help="write the raw cProfile data here (for snakeviz, pstats)")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    args = parser.parse_args()

    from rp_pipeline.engine import sync_all
    from rp_pipeline.entities import ENTITIES, PREDICTIONS
    from rp_pipeline.resources import open_connections
    from rp_pipeline.schema import migrate
    from rp_pipeline.settings import SyncConfig

    db = "rp_bench_profile"
    fill(args.redis_url, args.n)
    with admin(args.postgres_url) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {db}")
    try:
        config = SyncConfig(postgres_url=database_url(args.postgres_url, db), redis_url=args.redis_url,
                            key_prefix=PREFIX)
        migrate(config)
        client, conn = open_connections(config)
        # everything but predictions first, unprofiled: the profile is of the predictions entity alone
        sync_all(client, conn, config, run_id="profile-parents",
                 entities=tuple(e for e in ENTITIES if e is not PREDICTIONS))
        profiler = cProfile.Profile()
        with ThreadProfiles() as threads:
            started = time.perf_counter()
            profiler.enable()
            result = sync_all(client, conn, config, run_id="profile", entities=(PREDICTIONS,))["predictions"]
            profiler.disable()
            wall = time.perf_counter() - started
        client.close()
        conn.close()
    finally:
        with admin(args.postgres_url) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        flush(args.redis_url)

    print(f"sync_entity(PREDICTIONS), N = {args.n:,}: {result.read:,} read, {result.inserted:,} inserted in "
          f"{wall:.2f} s under cProfile ({result.read / wall:,.0f} predictions/s; wall time, so waiting on a "
          "server counts; Python-heavy code is inflated by the profiler)")
    stats = pstats.Stats(profiler)
    print_stages(f"main thread (the one that talks to Postgres), {wall:.2f} s:", stats, wall)
    for name, profile, span in threads.profiles:
        if len(span) == 2 and profile.getstats():
            print_stages(f"thread {name!r}, alive {span[1] - span[0]:.2f} s:", pstats.Stats(profile),
                         span[1] - span[0])
            stats.add(pstats.Stats(profile))
    if args.save:
        stats.dump_stats(args.save)
    if args.top:
        print(f"\ntop {args.top} functions by own time, all threads:")
        stats.sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
