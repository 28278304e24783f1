"""The measured paths. Each runs in a process of its own (see run.py) and returns a dict of figures.

- project: the real sync, `migrate` then `engine.sync_all`, as the Dagster assets run it; then the
  cost of cycles with nothing new and with 1% new predictions.
- job: the Dagster job as users run it, `RedisPgSync.full_sync()` in process, on the default instance
  (a working directory holding the repository's dagster.yaml: SQLite run history on disk); then cycles
  with nothing new (wall time and events per run) and what the checks cost, with nothing new and 1% new.
- floor: pipelined HMGET over a raw hiredis connection, values formatted straight into COPY text
  (Postgres parses the JSON), COPY into a temp staging table, one INSERT … SELECT … ON CONFLICT.
- floor_overlapped: the same, with Redis reads and COPY-text building in a thread while the main
  thread waits on Postgres: what overlapping the two costs (the issue's 1.0× stretch).
- pandas: pipelined HGETALL (redis-py) → DataFrame → json.loads per field → re-dump → COPY → upsert.
- dlt: a dlt resource reading Redis, yielding prediction dicts into dlt's postgres destination.

The non-project paths load predictions only, into tables made by `rp_pipeline.schema.migrate`
(identical indexes), with the versions they point at inserted first (untimed).
"""

from __future__ import annotations

import io
import json
import os
import queue
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import redis
from raw_redis import RawRedis
from workload import PREFIX, remove_predictions, write_predictions

CHUNK = 20_000
PREDICTION_FIELDS = (
    b"model_version_id",
    b"input",
    b"output",
    b"confidence",
    b"inference_time_ms",
    b"timestamp",
    b"metadata",
)
STAGE_COLUMNS = (
    "model_version_id, origin_redis_id, input_data, output_data, confidence, inference_time_ms, "
    "ts, metadata"
)
# The project's value mapping ('0' = not given → NULL, naive ISO → UTC), so every path loads the same rows.
INSERT_FROM_STAGE = """
INSERT INTO predictions (model_version_id, input_data, output_data, confidence, inference_time_ms, "timestamp",
                         metadata, origin_source, origin_redis_id)
SELECT model_version_id, NULLIF(input_data, '')::jsonb, NULLIF(output_data, '')::jsonb,
       NULLIF(NULLIF(confidence, '')::double precision, 0), NULLIF(NULLIF(inference_time_ms, '')::double precision, 0),
       ts::timestamp AT TIME ZONE 'UTC', NULLIF(metadata, '')::jsonb, %s, origin_redis_id
FROM stage
ON CONFLICT (origin_source, origin_redis_id, "timestamp") WHERE origin_source IS NOT NULL DO NOTHING
"""
CREATE_STAGE = (
    "CREATE TEMP TABLE stage (model_version_id bigint, origin_redis_id bigint, input_data text, "
    "output_data text, confidence text, inference_time_ms text, ts text, metadata text)"
)


def _config(redis_url: str, pg_url: str):
    from rp_pipeline.settings import SyncConfig

    return SyncConfig(postgres_url=pg_url, redis_url=redis_url, key_prefix=PREFIX)


def resident() -> int:
    """This process's resident set now, in bytes (the baseline that imports cost)."""
    with open("/proc/self/status") as status:
        return next(
            (int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:")), 0
        )


class CpuMeter:
    """CPU seconds a timed section cost: this process (all threads), its Postgres backends, Redis.

    Unlike throughput, CPU cost barely moves when other work shares the machine. The backends' CPU is
    read from /proc, so only for a Postgres on this machine; Redis's is server-wide (INFO cpu).
    """

    TICKS = os.sysconf("SC_CLK_TCK")

    def __init__(self, redis_url: str, backend_pids=()):
        self.redis_url, self.pids = redis_url, list(backend_pids)
        self.start = self._now()

    def _postgres(self) -> float | None:
        total = 0.0
        for pid in self.pids:
            try:
                with open(f"/proc/{pid}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                return None
            total += (int(fields[11]) + int(fields[12])) / self.TICKS  # utime + stime
        return total if self.pids else None

    def _redis(self) -> float:
        raw = RawRedis(self.redis_url)
        info = dict(
            line.split(":", 1) for line in raw.call(b"INFO", b"cpu").decode().split() if ":" in line
        )
        raw.close()
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

    def _now(self) -> tuple:
        return time.process_time(), self._postgres(), self._redis()

    def stop(self) -> dict:
        end = self._now()
        return {
            "client_cpu": end[0] - self.start[0],
            "redis_cpu": end[2] - self.start[2],
            "postgres_cpu": None
            if end[1] is None or self.start[1] is None
            else end[1] - self.start[1],
        }


_MIGRATE = (
    "import sys; from rp_pipeline.schema import migrate; from rp_pipeline.settings import SyncConfig; "
    "migrate(SyncConfig(postgres_url=sys.argv[1], redis_url=sys.argv[2], key_prefix=sys.argv[3]))"
)


def _prepare_predictions_table(
    redis_url: str, pg_url: str, conn: psycopg.Connection
) -> dict[int, int]:
    """The project's schema, plus models and versions as in Redis: Redis version id → Postgres id.

    `migrate` runs in a process of its own: importing rp_pipeline loads Dagster, whose memory
    would otherwise count in these paths' peak RSS.
    """
    checkout = str(Path(__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [checkout, os.environ.get("PYTHONPATH")])),
    }
    subprocess.run([sys.executable, "-c", _MIGRATE, pg_url, redis_url, PREFIX], env=env, check=True)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    version_ids: dict[int, int] = {}
    model_ids: dict[str, int] = {}
    for vid in range(1, int(client.get(PREFIX + "counter:version") or 0) + 1):
        model_id, version = client.hmget(f"{PREFIX}version:{vid}", "model_id", "version")
        name = client.hget(f"{PREFIX}model:{model_id}", "name")
        if name not in model_ids:
            model_ids[name] = conn.execute(
                "INSERT INTO models (name) VALUES (%s) RETURNING id", (name,)
            ).fetchone()[0]
        version_ids[vid] = conn.execute(
            "INSERT INTO model_versions (model_id, version) VALUES (%s, %s) RETURNING id",
            (model_ids[name], version),
        ).fetchone()[0]
    client.close()
    return version_ids


def _count(conn: psycopg.Connection, table: str = "predictions") -> int:
    return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


# -- project ---------------------------------------------------------------------------------------


def project(redis_url: str, pg_url: str, n: int, rss) -> dict:
    from rp_pipeline.connections import connect_postgres, connect_redis
    from rp_pipeline.engine import sync_all, sync_entity
    from rp_pipeline.entities import PREDICTIONS
    from rp_pipeline.extract import GENERATION_KEY
    from rp_pipeline.schema import migrate

    config = _config(redis_url, pg_url)
    started = time.perf_counter()
    migrate(config)
    migrate_seconds = time.perf_counter() - started
    client, conn = connect_redis(config), connect_postgres(config)
    start_rss = resident()
    cpu = CpuMeter(redis_url, [conn.info.backend_pid])
    started = time.perf_counter()
    results = sync_all(client, conn, config, run_id="bench-bulk")
    wall = time.perf_counter() - started
    cpu_used = cpu.stop()
    bulk_rss = rss()
    entities = {
        name: {
            "read": r.read,
            "inserted": r.inserted,
            "rejected": r.rejected,
            "pending": r.pending,
            "seconds": r.duration_seconds,
            "rows_per_s": r.rows_per_second,
        }
        for name, r in results.items()
    }
    loaded = _count(conn)
    rows = sum(r.read for r in results.values())

    def timed(call) -> float:
        clock = time.perf_counter()
        call()
        return time.perf_counter() - clock

    idle_all = statistics.median(
        timed(lambda: sync_all(client, conn, config, run_id="bench-idle")) for _ in range(3)
    )
    idle_predictions = statistics.median(
        timed(lambda: sync_entity(PREDICTIONS, client, conn, config, run_id="bench-idle"))
        for _ in range(3)
    )

    raw = RawRedis(redis_url)
    new = max(1, n // 100)
    write_predictions(raw, n + 1, new, random.Random(99))
    started = time.perf_counter()
    increment = sync_all(client, conn, config, run_id="bench-1pct")
    increment_all = time.perf_counter() - started

    # A run still training makes every cycle look for new metric series (a SCAN of the whole keyspace).
    raw.call(b"HSET", PREFIX.encode() + b"run:1", b"status", b"started")
    sync_all(client, conn, config, run_id="bench-active")
    idle_active = timed(lambda: sync_all(client, conn, config, run_id="bench-idle-active"))
    # Redis as it was filled, for the next path or repetition
    remove_predictions(raw, n + 1, new)
    raw.call(b"HSET", PREFIX.encode() + b"run:1", b"status", b"completed")
    raw.call(b"DEL", (PREFIX + GENERATION_KEY).encode())
    raw.close()
    client.close()
    conn.close()
    return {
        "predictions": results["predictions"].read,
        "loaded": loaded,
        "predictions_seconds": results["predictions"].duration_seconds,
        "predictions_per_s": results["predictions"].rows_per_second,
        "rows": rows,
        "wall_seconds": wall,
        "rows_per_s": rows / wall,
        "migrate_seconds": migrate_seconds,
        "entities": entities,
        "peak_rss": bulk_rss,
        "start_rss": start_rss,
        **cpu_used,
        "idle_all_seconds": idle_all,
        "idle_predictions_seconds": idle_predictions,
        "increment_new": new,
        "increment_inserted": increment["predictions"].inserted,
        "increment_all_seconds": increment_all,
        "increment_predictions_seconds": increment["predictions"].duration_seconds,
        "idle_active_run_seconds": idle_active,
    }


# -- floor ---------------------------------------------------------------------------------------


def _hmget_commands(ids: range) -> list[bytes]:
    tail = b"".join(b"$%d\r\n%s\r\n" % (len(f), f) for f in PREDICTION_FIELDS)
    head = b"*%d\r\n$5\r\nHMGET\r\n" % (2 + len(PREDICTION_FIELDS))
    prefix = PREFIX.encode() + b"prediction:"
    out = []
    for i in ids:
        key = prefix + b"%d" % i
        out.append(head + b"$%d\r\n%s\r\n" % (len(key), key) + tail)
    return out


def _copy_rows(ids: range, replies: list, versions: dict[bytes, bytes]) -> tuple[bytes, int]:
    """COPY text for one chunk of HMGET replies: values as Redis holds them, escaped in bulk."""
    rows = []
    for rid, reply in zip(ids, replies):
        mv, inp, out, conf, inf, ts, meta = reply
        if ts is None or mv not in versions:  # no record (or no parent): the project's pending case
            continue
        rows.append(
            b"\t".join(
                (
                    versions[mv],
                    b"%d" % rid,
                    inp or b"",
                    out or b"",
                    conf or b"",
                    inf or b"",
                    ts,
                    meta or b"",
                )
            )
        )
    blob = b"\n".join(rows) + b"\n" if rows else b""
    if blob.count(b"\t") != 7 * len(rows) or blob.count(b"\n") != len(rows) or b"\r" in blob:
        raise ValueError("a value holds a tab or newline: this floor path does not escape those")
    # '\' is never a separator, so doubling every one in the blob escapes exactly the values' ones.
    return (blob.replace(b"\\", b"\\\\") if b"\\" in blob else blob), len(rows)


def _floor_batches(redis_url: str, versions: dict[bytes, bytes], chunk: int = CHUNK):
    raw = RawRedis(redis_url)
    last = int(raw.call(b"GET", PREFIX.encode() + b"counter:prediction") or 0)
    for lo in range(1, last + 1, chunk):
        ids = range(lo, min(lo + chunk, last + 1))
        yield _copy_rows(ids, raw.pipeline(_hmget_commands(ids)), versions)
    raw.close()


def _floor(redis_url: str, pg_url: str, overlapped: bool, chunk: int = CHUNK) -> dict:
    conn = psycopg.connect(pg_url, autocommit=True)
    versions = {
        b"%d" % r: b"%d" % p for r, p in _prepare_predictions_table(redis_url, pg_url, conn).items()
    }
    source, start_rss = "bench-floor", resident()
    cpu = CpuMeter(redis_url, [conn.info.backend_pid])
    started = time.perf_counter()
    batches = _floor_batches(redis_url, versions, chunk)
    batches = _overlapped(batches) if overlapped else batches
    read = inserted = 0
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(CREATE_STAGE + " ON COMMIT DROP")
        for blob, count in batches:
            read += count
            cur.execute("TRUNCATE stage")
            with cur.copy(f"COPY stage ({STAGE_COLUMNS}) FROM STDIN") as copy:
                copy.write(blob)
            cur.execute(INSERT_FROM_STAGE, (source,))
            inserted += cur.rowcount
    seconds = time.perf_counter() - started
    cpu_used = cpu.stop()
    loaded = _count(conn)
    conn.close()
    return {
        "predictions": read,
        "inserted": inserted,
        "loaded": loaded,
        "predictions_seconds": seconds,
        "predictions_per_s": read / seconds,
        "start_rss": start_rss,
        **cpu_used,
    }


def _overlapped(batches):
    """Produce batches in a thread (Redis + formatting) while the consumer waits on Postgres."""
    q: queue.Queue = queue.Queue(maxsize=2)
    done = object()

    def produce():
        try:
            for batch in batches:
                q.put(batch)
        except BaseException as exc:  # handed to the consumer
            q.put(exc)
        q.put(done)

    threading.Thread(target=produce, daemon=True).start()
    while (item := q.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


def floor(redis_url: str, pg_url: str, n: int, rss) -> dict:
    return _floor(redis_url, pg_url, overlapped=False)


def floor_overlapped(redis_url: str, pg_url: str, n: int, rss) -> dict:
    return _floor(redis_url, pg_url, overlapped=True)


def floor_wide(redis_url: str, pg_url: str, n: int, rss) -> dict:
    """The floor for wide records: batches of as many records as a quarter of the memory budget holds
    (one batch's replies, its COPY text and psycopg's copy of it are alive at once)."""
    budget = float(os.environ.get("SYNC_MEMORY_BUDGET_MB", "256")) * (1 << 20)
    raw = RawRedis(redis_url)
    record = sum(
        raw.call(b"HSTRLEN", PREFIX.encode() + b"prediction:1", f) for f in PREDICTION_FIELDS
    )
    raw.close()
    return {
        **_floor(
            redis_url, pg_url, overlapped=False, chunk=max(1, int(budget // 4 // max(record, 1)))
        ),
        "record_bytes": record,
    }


# -- pandas ----------------------------------------------------------------------------------------


def pandas_path(redis_url: str, pg_url: str, n: int, rss) -> dict:
    import pandas as pd

    conn = psycopg.connect(pg_url, autocommit=True)
    versions = _prepare_predictions_table(redis_url, pg_url, conn)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    start_rss = resident()
    cpu = CpuMeter(redis_url, [conn.info.backend_pid])
    started = time.perf_counter()
    last = int(client.get(PREFIX + "counter:prediction") or 0)
    read = inserted = 0
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(CREATE_STAGE + " ON COMMIT DROP")
        for lo in range(1, last + 1, CHUNK):
            pipe = client.pipeline(transaction=False)
            for i in range(lo, min(lo + CHUNK, last + 1)):
                pipe.hgetall(f"{PREFIX}prediction:{i}")
            df = pd.DataFrame.from_records([r for r in pipe.execute() if r])
            for column in ("input", "output", "metadata"):
                df[column] = df[column].map(json.loads).map(json.dumps)
            df["model_version_id"] = (
                df["model_version_id"].astype(int).map(versions).astype("Int64")
            )
            df["origin_redis_id"] = df["id"].astype(int)
            for column in ("confidence", "inference_time_ms"):
                df[column] = pd.to_numeric(df[column], errors="coerce")
            df = df.dropna(subset=["model_version_id", "timestamp"])
            buf = io.StringIO()
            df[
                [
                    "model_version_id",
                    "origin_redis_id",
                    "input",
                    "output",
                    "confidence",
                    "inference_time_ms",
                    "timestamp",
                    "metadata",
                ]
            ].to_csv(buf, header=False, index=False)
            read += len(df)
            cur.execute("TRUNCATE stage")
            with cur.copy(f"COPY stage ({STAGE_COLUMNS}) FROM STDIN (FORMAT csv)") as copy:
                copy.write(buf.getvalue())
            cur.execute(INSERT_FROM_STAGE, ("bench-pandas",))
            inserted += cur.rowcount
    seconds = time.perf_counter() - started
    cpu_used = cpu.stop()
    loaded = _count(conn)
    conn.close()
    client.close()
    return {
        "predictions": read,
        "inserted": inserted,
        "loaded": loaded,
        "predictions_seconds": seconds,
        "predictions_per_s": read / seconds,
        "start_rss": start_rss,
        **cpu_used,
    }


# -- dlt -------------------------------------------------------------------------------------------


def dlt_path(redis_url: str, pg_url: str, n: int, rss) -> dict:
    import os
    import tempfile
    from urllib.parse import urlsplit, urlunsplit

    import dlt

    client = redis.Redis.from_url(redis_url, decode_responses=True)

    # JSON fields are declared json, so dlt stores them as jsonb instead of unnesting them into child tables.
    @dlt.resource(
        name="predictions",
        write_disposition="append",
        columns={
            "input_data": {"data_type": "json"},
            "output_data": {"data_type": "json"},
            "metadata": {"data_type": "json"},
            "timestamp": {"data_type": "timestamp"},
        },
    )
    def redis_predictions():
        last = int(client.get(PREFIX + "counter:prediction") or 0)
        for lo in range(1, last + 1, CHUNK):
            pipe = client.pipeline(transaction=False)
            for i in range(lo, min(lo + CHUNK, last + 1)):
                pipe.hgetall(f"{PREFIX}prediction:{i}")
            yield [
                {
                    "redis_id": int(r["id"]),
                    "model_version_id": int(r["model_version_id"]),
                    "input_data": json.loads(r["input"]),
                    "output_data": json.loads(r["output"]),
                    "confidence": float(r["confidence"]) or None,
                    "inference_time_ms": float(r["inference_time_ms"]) or None,
                    "timestamp": r["timestamp"],
                    "metadata": json.loads(r["metadata"]),
                }
                for r in pipe.execute()
                if r
            ]

    parts = urlsplit(pg_url)
    if parts.password is None:  # dlt insists on a password; a server that trusts us ignores it
        host = parts.netloc.split("@")[-1]
        pg_url = urlunsplit(parts._replace(netloc=f"{parts.username or 'postgres'}:unused@{host}"))
    with tempfile.TemporaryDirectory(prefix="rp_bench_dlt") as work_dir:
        os.environ.setdefault("RUNTIME__LOG_LEVEL", "WARNING")
        pipeline = dlt.pipeline(
            pipeline_name="rp_bench",
            pipelines_dir=work_dir,
            dataset_name="dlt_bench",
            destination=dlt.destinations.postgres(credentials=pg_url),
        )
        start_rss = resident()
        cpu = CpuMeter(
            redis_url
        )  # dlt opens its own Postgres connections: their CPU is not counted
        started = time.perf_counter()
        pipeline.run(
            redis_predictions(), loader_file_format="csv"
        )  # COPY: about 1.8x its default insert_values
        seconds = time.perf_counter() - started
        cpu_used = cpu.stop()
    client.close()
    with psycopg.connect(pg_url) as conn:
        loaded = _count(conn, "dlt_bench.predictions")
    return {
        "predictions": loaded,
        "loaded": loaded,
        "predictions_seconds": seconds,
        "predictions_per_s": loaded / seconds,
        "start_rss": start_rss,
        **cpu_used,
        "note": "append (no dedupe), csv loader (COPY); its Postgres CPU not counted",
    }


# -- job: the Dagster job, in process, as RedisPgSync runs it ---------------------------------------


def _events(instance, run_id: str) -> int:
    return len(instance.all_logs(run_id))


def _check_seconds(config, passes: int = 3) -> dict[str, float]:
    """Each check's time over the nine tables, on the rows the tables' last syncs wrote (as the job
    runs them): the median of `passes` passes (one pass is at the mercy of the shared box: the
    reconciliation sample alone varied 180-390 ms between runs at either size), and the first
    pass, right after the sync, as `first:<check>`."""
    runs = [_check_pass(config) for _ in range(passes)]
    seconds = {name: statistics.median(run[name] for run in runs) for name in runs[0]}
    return seconds | {f"first:{name}": t for name, t in runs[0].items()}


def _check_pass(config) -> dict[str, float]:
    from rp_pipeline.bookkeeping import Bookkeeping
    from rp_pipeline.checks import WrittenRows, check_specs, table_checks
    from rp_pipeline.connections import connect_postgres, connect_redis
    from rp_pipeline.entities import ENTITIES
    from rp_pipeline.extract import RedisSource
    from rp_pipeline.sources import resolve_origin

    client, conn = connect_redis(config), connect_postgres(config)
    seconds: dict[str, float] = {}
    try:
        origin = resolve_origin(RedisSource(client, config.key_prefix), conn, config).name
        for spec in ENTITIES:
            written = WrittenRows.last_sync(
                Bookkeeping(conn, config.sync_schema, origin, spec.name, ""),
                config.schema,
                spec.name,
            )
            for check in check_specs(spec):
                clock = time.perf_counter()
                list(table_checks(spec, {check.name}, written, conn, client, config, origin))
                seconds[check.name] = seconds.get(check.name, 0.0) + time.perf_counter() - clock
    finally:
        client.close()
        conn.close()
    return seconds


def job(redis_url: str, pg_url: str, n: int, rss) -> dict:
    import logging
    import shutil
    import tempfile

    from rp_pipeline.api import RedisPgSync, sync_instance

    config = _config(redis_url, pg_url)
    home = Path(tempfile.mkdtemp(prefix="rp_bench_job_", dir=os.environ.get("RP_BENCH_JOB_DIR")))
    shutil.copy(Path(__file__).resolve().parents[1] / "dagster.yaml", home / "dagster.yaml")
    for name in ("DAGSTER_HOME", "DAGSTER_POSTGRES_URL"):
        os.environ.pop(name, None)
    os.chdir(home)  # the default instance: ./dagster.yaml, run history in ./.dagster_home (SQLite)
    quiet = logging.getLogger("rp_bench_job")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    sync = RedisPgSync.from_config(config, quiet)
    try:
        start_rss = resident()
        started = time.perf_counter()
        outcome = sync.sync_once()
        wall = time.perf_counter() - started
        bulk_rss = rss()
        if not outcome.success:
            raise RuntimeError("; ".join(outcome.failures))
        with psycopg.connect(pg_url) as conn:
            predictions_seconds, tables_seconds = conn.execute(
                "SELECT sum(duration_seconds) FILTER (WHERE entity = 'predictions'), "
                "sum(duration_seconds) FROM rp_sync.entity_runs WHERE run_id = %s",
                (outcome.run_id,),
            ).fetchone()
            loaded = _count(conn)
        idle = []
        for _ in range(3):
            clock = time.perf_counter()
            cycle = sync.sync_once()
            idle.append((time.perf_counter() - clock, cycle.run_id))
        idle_seconds, idle_run = sorted(idle)[1]
        with sync_instance() as instance:
            events = _events(instance, idle_run)
            bulk_events = _events(instance, outcome.run_id)
        checks_idle = _check_seconds(config)
        raw = RawRedis(redis_url)
        new = min(1_000, n)  # the same change at every N: check time must not grow with the table
        write_predictions(raw, n + 1, new, random.Random(99))
        clock = time.perf_counter()
        sync.sync_once()
        increment_seconds = time.perf_counter() - clock
        checks_increment = _check_seconds(config)
        remove_predictions(raw, n + 1, new)
        raw.call(b"DEL", (PREFIX + "rp_pipeline:generation").encode())
        raw.close()
    finally:
        os.chdir(Path(__file__).resolve().parent)
        shutil.rmtree(home, ignore_errors=True)
    return {
        "predictions": n,
        "loaded": loaded,
        "predictions_seconds": wall,
        "predictions_per_s": n / wall,
        "engine_predictions_per_s": n / predictions_seconds,
        "peak_rss": bulk_rss,
        "start_rss": start_rss,
        "job_wall_seconds": wall,
        "tables_seconds": tables_seconds,
        "engine_predictions_seconds": predictions_seconds,
        "bulk_events": bulk_events,
        "idle_seconds": idle_seconds,
        "idle_all": [round(t, 3) for t, _ in idle],
        "idle_events": events,
        "increment_new": new,
        "increment_seconds": increment_seconds,
        "checks_idle": checks_idle,
        "checks_increment": checks_increment,
        "note": "whole job run (nine tables + checks + Dagster) per wall second",
    }


PATHS = {
    "project": project,
    "job": job,
    "floor": floor,
    "floor_wide": floor_wide,
    "floor_overlapped": floor_overlapped,
    "pandas": pandas_path,
    "dlt": dlt_path,
}
