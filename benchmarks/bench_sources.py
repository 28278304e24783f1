"""Three sources synced in parallel (one process each) against one after another, in the same run.

    .venv/bin/python benchmarks/bench_sources.py [--n 300000] [--repeat 1]
        [--redis-url redis://127.0.0.1:6379/13] [--second-redis-url redis://127.0.0.1:6379/14]
        [--postgres-url postgresql://postgres@127.0.0.1:5432/postgres]
    .venv/bin/python benchmarks/bench_sources.py --n 20000      # smoke run, about a minute

Three sources as users configure them: two key prefixes in one Redis database and one in a
second database, named in one REDIS_URL (`...?key_prefix=...&label=...`, separated by commas).
Each holds N predictions (RedisWriter's batch path) on one model version of a model named
`bench` in all three (their parents converge on one row). Each source is synced as users run
it, `rp-pipeline --once --source LABEL` (the Dagster job in process, run history in a temporary
SQLite instance), into fresh schemas of a database `rp_bench_sources` (created beside
--postgres-url's, dropped after):

- sequential: the three processes one after another;
- parallel: the three at once, as the daemon's queue launches them (one run per source).

Prints each phase's wall time and predictions/s, the speedup, each process's wall, CPU
(user+system, from wait4) and peak RSS, and the CPU the Postgres and Redis servers spent in the
phase (summed over their processes with psutil, sampled every 0.2 s: on a shared machine this
includes other clients' work on those servers). Keys written are deleted afterwards; nothing is
flushed.

What limits it on a bigger machine (on paper):
- Postgres does most of the work (parsing JSON, checking the identity index, writing WAL): one
  backend per source, so parallel sources need roughly a core each on the database server, and
  beyond that the shared WAL and the `predictions` indexes (every source inserts into the same
  table and indexes) become the bottleneck. The Postgres CPU printed per phase shows how many
  cores it used.
- Redis serves each source's reads from one command thread: two prefixes in one Redis share it,
  separate servers (or a cluster's nodes) do not. The Redis CPU printed shows its share.
- The sync processes themselves (pandas, Dagster's start-up, a few seconds of CPU each) scale
  with the cores of wherever they run (pods on Kubernetes).
- Partitioning `predictions` pays off once its indexes no longer fit in the database server's
  memory (hundreds of millions of rows) or when old rows are dropped by time; below that it only
  adds planning cost. See deploy/kubernetes/README.md, Scaling.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg
import redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable from a checkout

from bench_cluster import write_predictions  # noqa: E402  (the same records, written the same way)

from rp_pipeline.settings import ENVIRONMENT_VARIABLES  # noqa: E402

LABELS = ("a", "b", "c")
# Variables that would point the sync processes elsewhere than this benchmark's servers: every
# setting the sync reads, and Dagster's instance.
INHERITED = (
    *ENVIRONMENT_VARIABLES,
    "DAGSTER_HOME",
    "DAGSTER_POSTGRES_URL",
    "DAGSTER_POSTGRES_SCHEMA",
)


@dataclass
class ProcessFigures:
    label: str
    wall: float
    cpu: float  # user + system seconds
    peak_rss_mb: float
    returncode: int


def delete_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    pipe = client.pipeline(transaction=False)
    for key in client.scan_iter(match=f"{prefix}*", count=10_000):
        pipe.delete(key)
    pipe.execute()
    client.close()


class ServerCPU(threading.Thread):
    """CPU seconds (user + system) spent during a phase by the processes with these names.

    Postgres backends live only as long as their connection, so the processes are sampled every
    0.2 s and each one's last reading counts (a backend's final fraction of a sample is missed).
    """

    def __init__(self, names: tuple[str, ...]):
        super().__init__(daemon=True)
        self.names, self.start_cpu, self.last_cpu = names, {}, {}
        self.done = threading.Event()
        self.start_cpu = dict(self._sample())

    def _sample(self):
        for process in psutil.process_iter(["name"]):
            try:
                if process.info["name"] in self.names:
                    times = process.cpu_times()
                    yield process.pid, times.user + times.system
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue

    def run(self) -> None:
        while not self.done.wait(0.2):
            self.last_cpu.update(self._sample())

    def stop(self) -> float:
        self.done.set()
        self.join()
        self.last_cpu.update(self._sample())
        return sum(cpu - self.start_cpu.get(pid, 0.0) for pid, cpu in self.last_cpu.items())


def start_sync(label: str, env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "rp_pipeline", "--once", "--source", label],
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def reap(process: subprocess.Popen, label: str, started: float) -> ProcessFigures:
    """Wait for one sync process; its own CPU and peak RSS come from wait4."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return ProcessFigures(
        label,
        time.perf_counter() - started,
        usage.ru_utime + usage.ru_stime,
        usage.ru_maxrss / 1024,
        process.returncode,
    )


def run_phase(
    parallel: bool, base_env: dict[str, str], database: str, work: Path
) -> tuple[float, list[ProcessFigures], float, float, int]:
    """Sync the three sources into fresh schemas; returns wall, per-process figures, Postgres and
    Redis CPU seconds, and the predictions loaded."""
    tag = uuid.uuid4().hex[:8]
    schema, sync_schema = f"b_{tag}", f"bs_{tag}"
    env = {**base_env, "POSTGRES_SCHEMA": schema, "SYNC_SCHEMA": sync_schema}
    pg_meter, redis_meter = ServerCPU(("postgres",)), ServerCPU(("redis-server",))
    pg_meter.start()
    redis_meter.start()
    started = time.perf_counter()
    figures = []
    if parallel:
        running = [
            (label, start_sync(label, env, work, work / f"{tag}_{label}.log")) for label in LABELS
        ]
        figures = [reap(process, label, started) for label, process in running]
    else:
        for label in LABELS:
            began = time.perf_counter()
            process = start_sync(label, env, work, work / f"{tag}_{label}.log")
            figures.append(reap(process, label, began))
    wall = time.perf_counter() - started
    pg_cpu, redis_cpu = pg_meter.stop(), redis_meter.stop()
    for f in figures:
        if f.returncode != 0:
            log = (work / f"{tag}_{f.label}.log").read_text()[-3000:]
            raise SystemExit(f"sync of source {f.label} exited {f.returncode}:\n{log}")
    with psycopg.connect(database) as conn:
        loaded = conn.execute(f'SELECT count(*) FROM "{schema}".predictions').fetchone()[0]
        models = conn.execute(f'SELECT count(*) FROM "{schema}".models').fetchone()[0]
        if models != 1:
            raise SystemExit(
                f"expected the three sources' model to converge on 1 row, got {models}"
            )
        for name in (schema, sync_schema):
            conn.execute(f'DROP SCHEMA "{name}" CASCADE')
    return wall, figures, pg_cpu, redis_cpu, loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300_000, help="predictions per source")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of both phases")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--second-redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()

    tag = uuid.uuid4().hex[:8]
    sources = {
        "a": (args.redis_url, f"benchsa{tag}:"),
        "b": (args.redis_url, f"benchsb{tag}:"),
        "c": (args.second_redis_url, f"benchsc{tag}:"),
    }
    base, _, _ = args.postgres_url.rpartition("/")
    database = f"{base}/rp_bench_sources"
    work = Path(tempfile.mkdtemp(prefix="rp_bench_sources_"))
    (work / "dagster_home").mkdir()
    shutil.copy(REPO / "dagster.yaml", work / "dagster_home" / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if k not in INHERITED}
    env.update(
        REDIS_URL=",".join(
            f"{url}?key_prefix={prefix}&label={label}" for label, (url, prefix) in sources.items()
        ),
        POSTGRES_URL=database,
        DAGSTER_HOME=str(work / "dagster_home"),
    )
    with psycopg.connect(args.postgres_url, autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS rp_bench_sources")
        admin.execute("CREATE DATABASE rp_bench_sources")
    rounds = []
    try:
        began = time.perf_counter()
        for url, prefix in sources.values():
            write_predictions(url, prefix, args.n)
        print(
            f"wrote {len(sources)} x {args.n:,} predictions in {time.perf_counter() - began:.0f} s"
        )
        for round_number in range(args.repeat):
            order = (False, True) if round_number % 2 == 0 else (True, False)
            rounds.append(
                {parallel: run_phase(parallel, env, database, work) for parallel in order}
            )
    finally:
        for url, prefix in sources.values():
            delete_prefix(url, prefix)
        with psycopg.connect(args.postgres_url, autocommit=True) as admin:
            admin.execute("DROP DATABASE IF EXISTS rp_bench_sources WITH (FORCE)")
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"three sources x {args.n:,} predictions, `rp-pipeline --once --source L` per source, "
        f"{psutil.cpu_count()} cores"
    )
    for number, phases in enumerate(rounds, 1):
        for parallel in (False, True):
            wall, figures, pg_cpu, redis_cpu, loaded = phases[parallel]
            name = "parallel  " if parallel else "sequential"
            print(
                f"  round {number} {name} {wall:7.1f} s  {loaded / wall:>9,.0f} predictions/s  "
                f"Postgres CPU {pg_cpu:6.1f} s ({pg_cpu / wall:.2f} cores)  "
                f"Redis CPU {redis_cpu:5.1f} s"
            )
            for f in figures:
                print(
                    f"      source {f.label}: wall {f.wall:6.1f} s  CPU {f.cpu:6.1f} s  "
                    f"peak RSS {f.peak_rss_mb:5.0f} MB"
                )
        speedup = phases[False][0] / phases[True][0]
        print(f"  round {number} speedup (sequential wall / parallel wall): {speedup:.2f}")


if __name__ == "__main__":
    main()
