"""Cache-warm benchmark: warm N predictions from Postgres into Redis, against a floor path in the same run.

    .venv/bin/python benchmarks/bench_warm.py                  # N = 1,000,000 and 100,000
    .venv/bin/python benchmarks/bench_warm.py --sizes 100000   # one size

For each N it creates a Postgres database `rp_bench_warm_<pid>` beside the one in --postgres-url,
fills it with N predictions of realistic size (as a sync of an earlier, since flushed, Redis data
set left them) under one model's 20 versions, then runs each path in a process of its own (so its
peak RSS is its own):

- floor: the same rows read through a server-side cursor, converted to the layout's strings by the
  same SQL, and written as raw pipelined HSET + ZADD over a socket (benchmarks/raw_redis.py): no ids
  allocated, no bookkeeping, no atomicity, nothing skipped.
- warm: `rp_pipeline.warm.warm` (catalog, then predictions): ids allocated per block, bookkeeping
  (rows re-homed) committed before each block, one write-if-absent Lua script per 1,000 records.

Each path writes under a key prefix of its own in --redis-url's db; only those keys are deleted
afterwards (never FLUSHDB). Prints rows/s, the ratio, peak RSS and the cores other work took
meanwhile (`other_load.py`), and PASS/FAIL: warm ≥ 0.7 × floor at the largest N, and flat memory
(peak RSS of the warm at the largest N at most 64 MB above the smallest).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from other_load import OtherLoad  # noqa: E402
from raw_redis import RawRedis, command  # noqa: E402

TARGET_RATIO = 0.7
FLAT_MB = 64
VERSIONS = 20


def database_url(base: str, name: str) -> str:
    return base.rpartition("/")[0] + "/" + name


def fill_postgres(url: str, n: int) -> None:
    """N predictions as the sync loads them, from an origin that is not the Redis being warmed."""
    from rp_pipeline.schema import migrate
    from rp_pipeline.settings import SyncConfig

    migrate(SyncConfig(postgres_url=url))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO models (name, framework, created_at, updated_at, origin_source) "
            "VALUES ('bench-model', 'pytorch', now(), now(), 'old')"
        )
        conn.execute(
            "INSERT INTO model_versions (model_id, version, config, status, created_at, origin_source) "
            "SELECT (SELECT id FROM models), 'v' || g, '{}', 'active', now(), 'old' FROM generate_series(1, %s) g",
            (VERSIONS,),
        )
        conn.execute(
            "INSERT INTO predictions (model_version_id, input_data, output_data, confidence, inference_time_ms, "
            '"timestamp", metadata, origin_source, origin_redis_id) '
            "SELECT v.id, jsonb_build_object('features', f.features), jsonb_build_object('label', "
            "(ARRAY['cat','dog','bird'])[1 + g %% 3], 'scores', jsonb_build_array(round(random()::numeric, 6), "
            "round(random()::numeric, 6), round(random()::numeric, 6))), round(random()::numeric, 4), "
            "round((random() * 50)::numeric, 3), now() - (random() * interval '50 minutes'), "
            "jsonb_build_object('request_id', md5(g::text), 'client', g %% 97), 'old', g "
            "FROM generate_series(1, %s) g "
            "JOIN (SELECT id, row_number() OVER (ORDER BY id) - 1 AS k FROM model_versions) v ON v.k = g %% %s "
            "CROSS JOIN LATERAL (SELECT jsonb_agg(round(random()::numeric, 5)) AS features "
            "FROM generate_series(1, 32 + g * 0)) f",
            (n, VERSIONS),
        )
        conn.execute("ANALYZE")


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_floor(pg_url: str, redis_url: str, prefix: str) -> dict:
    """Read the rows as layout strings and write them with raw pipelined HSET + ZADD."""
    from rp_pipeline.entities import PREDICTIONS
    from rp_pipeline.warm import text_sql

    fields = [c.redis_field for c in PREDICTIONS.columns]
    texts = [
        text_sql(c, f"t.{c.name if c.name != 'timestamp' else chr(34) + 'timestamp' + chr(34)}")
        for c in PREDICTIONS.columns
    ]
    sql = (
        f"SELECT t.id::text, t.model_version_id::text, {', '.join(texts)}, "
        '(-extract(epoch FROM t."timestamp"))::text FROM predictions t ORDER BY t.id'
    )
    raw = RawRedis(redis_url)
    p = prefix.encode()
    names = [b"id", b"model_version_id", *(f.encode() for f in fields)]
    clock = time.perf_counter()
    rows = 0
    with psycopg.connect(pg_url) as conn, conn.cursor(name="floor") as cur:
        cur.itersize = 2_000
        cur.execute(sql)
        batch: list[bytes] = []
        for row in cur:
            values = [v.encode() for v in row]
            rid = values[0]
            hset = [b"HSET", p + b"prediction:" + rid]
            for name, value in zip(names, values[:-1]):
                hset += (name, value)
            batch.append(command(*hset))
            batch.append(command(b"ZADD", p + b"idx:predictions:" + values[1], values[-1], rid))
            rows += 1
            if len(batch) >= 10_000:
                raw.pipeline(batch)
                batch = []
        raw.pipeline(batch)
    seconds = time.perf_counter() - clock
    raw.close()
    return {"rows": rows, "seconds": seconds, "rss_mb": peak_rss_mb()}


def run_warm(pg_url: str, redis_url: str, prefix: str) -> dict:
    from rp_pipeline.connections import connect_postgres, connect_redis
    from rp_pipeline.settings import SyncConfig
    from rp_pipeline.warm import WarmOptions, warm

    config = SyncConfig(postgres_url=pg_url, redis_url=redis_url, key_prefix=prefix)
    client, conn = connect_redis(config), connect_postgres(config)
    clock = time.perf_counter()
    result = warm(
        client,
        conn,
        config,
        WarmOptions(entities=("models", "model_versions", "predictions"), predictions_hours=1),
    )
    seconds = time.perf_counter() - clock
    return {"rows": result.counts()["predictions"], "seconds": seconds, "rss_mb": peak_rss_mb()}


def delete_prefix(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    batch = []
    for key in client.scan_iter(match=prefix + "*", count=10_000):
        batch.append(key)
        if len(batch) >= 10_000:
            client.unlink(*batch)
            batch = []
    if batch:
        client.unlink(*batch)
    client.close()


def measure(path: str, pg_url: str, redis_url: str, prefix: str) -> dict:
    """One path in a process of its own, with the load other work put on the machine meanwhile."""
    with OtherLoad() as load:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                path,
                "--postgres-url",
                pg_url,
                "--redis-url",
                redis_url,
                "--prefix",
                prefix,
            ],
            capture_output=True,
            text=True,
        )
    if out.returncode != 0:
        raise SystemExit(f"{path} failed:\n{out.stderr}")
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    figures["others"] = load.cores
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,100000")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--child", choices=("floor", "warm"))
    parser.add_argument("--prefix")
    args = parser.parse_args()
    if args.child:
        run = run_floor if args.child == "floor" else run_warm
        print(json.dumps(run(args.postgres_url, args.redis_url, args.prefix)))
        return 0
    sizes = sorted((int(s) for s in args.sizes.split(",")), reverse=True)
    name = f"rp_bench_warm_{os.getpid()}"
    rows = []
    for n in sizes:
        with psycopg.connect(args.postgres_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
            admin.execute(f'CREATE DATABASE "{name}"')
        url = database_url(args.postgres_url, name)
        try:
            clock = time.perf_counter()
            fill_postgres(url, n)
            print(
                f"N = {n:,}: filled Postgres in {time.perf_counter() - clock:.0f} s; load average "
                f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
                flush=True,
            )
            figures = {}
            for path in ("floor", "warm"):
                prefix = f"bw{path[0]}{os.getpid()}:"
                try:
                    figures[path] = measure(path, url, args.redis_url, prefix)
                finally:
                    delete_prefix(args.redis_url, prefix)
                f = figures[path]
                print(
                    f"  {path:5}  {f['rows']:>9,} rows  {f['seconds']:7.1f} s  {f['rows'] / f['seconds']:>9,.0f} rows/s  "
                    f"peak RSS {f['rss_mb']:6.0f} MB  others {f['others'] if f['others'] is None else round(f['others'], 2)} cores",
                    flush=True,
                )
            ratio = (figures["warm"]["rows"] / figures["warm"]["seconds"]) / (
                figures["floor"]["rows"] / figures["floor"]["seconds"]
            )
            print(f"  warm / floor = {ratio:.2f}", flush=True)
            rows.append((n, ratio, figures))
        finally:
            with psycopg.connect(args.postgres_url, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    n, ratio, figures = rows[0]
    ok = all(f["warm"]["rows"] == size for size, _, f in rows)
    print(
        f"{'PASS' if ratio >= TARGET_RATIO else 'FAIL'}: warm {ratio:.2f} × floor at N = {n:,} (target ≥ {TARGET_RATIO})"
    )
    print(f"{'PASS' if ok else 'FAIL'}: every prediction warmed at every N")
    if len(rows) > 1:
        growth = rows[0][2]["warm"]["rss_mb"] - rows[-1][2]["warm"]["rss_mb"]
        print(
            f"{'PASS' if growth <= FLAT_MB else 'FAIL'}: warm peak RSS {growth:+.0f} MB from N = {rows[-1][0]:,} "
            f"to N = {n:,} (flat: ≤ {FLAT_MB} MB)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
