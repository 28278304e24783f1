"""The cost of one Prometheus scrape of the exporter, with N predictions synced (default 1,000,000).

    .venv/bin/python benchmarks/scrape_cost.py [--n 1000000] [--waiting 1000] [--scrapes 200]
        [--redis-url redis://127.0.0.1:6379/13] [--postgres-url postgresql://postgres@127.0.0.1:5432/postgres]

Writes the benchmark workload (workload.py) into an *empty* Redis db (it refuses a db with
keys, and deletes only the keys it wrote), syncs it into a fresh database `rp_bench_scrape`
(dropped after), leaves `--waiting` predictions unsynced (so the lag's HMGET runs too), then
scrapes: round trips to each server per scrape (Redis pipelines, Postgres statements) and
milliseconds per scrape, for the collector alone and through HTTP (`/metrics`).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import psycopg  # noqa: E402
import redis  # noqa: E402
from raw_redis import RawRedis  # noqa: E402
from workload import PREFIX, Workload, _write_metadata, write_predictions  # noqa: E402

DATABASE = "rp_bench_scrape"


def counted(method, counter: dict, key: str):
    def wrapper(*args, **kwargs):
        counter[key] += 1
        return method(*args, **kwargs)

    return wrapper


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument(
        "--waiting", type=int, default=1000, help="predictions left unsynced (backlog, lag)"
    )
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/13",
        help="an empty db; only our keys are deleted",
    )
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args(argv)

    from rp_pipeline.connections import connect_postgres, connect_redis
    from rp_pipeline.engine import sync_all
    from rp_pipeline.exporter import SyncCollector, serve_metrics
    from rp_pipeline.schema import migrate
    from rp_pipeline.settings import SyncConfig

    client = redis.Redis.from_url(args.redis_url)
    if client.dbsize():
        sys.exit(
            f"{args.redis_url} is not empty: give the benchmark an empty Redis db (--redis-url)"
        )
    base = args.postgres_url.rsplit("/", 1)[0]
    with psycopg.connect(args.postgres_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}"')
        admin.execute(f'CREATE DATABASE "{DATABASE}"')
    config = SyncConfig(
        postgres_url=f"{base}/{DATABASE}", redis_url=args.redis_url, key_prefix=PREFIX
    )
    try:
        started = time.perf_counter()
        raw, rng = RawRedis(args.redis_url), random.Random(7)
        _write_metadata(raw, Workload(args.n), rng)
        write_predictions(raw, 1, args.n, rng)
        print(f"wrote {args.n:,} predictions in {time.perf_counter() - started:.1f} s")
        migrate(config)
        started = time.perf_counter()
        rc, conn = connect_redis(config), connect_postgres(config)
        results = sync_all(rc, conn, config, run_id="scrape-bench")
        rc.close()
        conn.close()
        print(
            f"synced {results['predictions'].inserted:,} predictions in {time.perf_counter() - started:.1f} s"
        )
        if args.waiting:
            # Written after the sync with a fresh counter: the next ids wait (backlog) and the lag is read.
            write_predictions(raw, args.n + 1, args.waiting, rng)
        raw.close()

        collector = SyncCollector(config)
        collector.scrape()  # connects to Postgres once; later scrapes reuse the connection
        calls = {"redis": 0, "postgres": 0}
        collector._redis.pipeline = counted(collector._redis.pipeline, calls, "redis")
        collector._conn.execute = counted(collector._conn.execute, calls, "postgres")
        times = []
        for _ in range(args.scrapes):
            t = time.perf_counter()
            families = collector.scrape()
            times.append((time.perf_counter() - t) * 1000)
        per = {k: v / args.scrapes for k, v in calls.items()}
        backlog = next(
            s.value
            for f in families
            if f.name == "rp_pipeline_backlog_records"
            for s in f.samples
            if s.labels["entity"] == "predictions"
        )
        series = sum(len(f.samples) for f in families)
        collector.close()

        exporter = serve_metrics(config, port=0)
        url = f"http://127.0.0.1:{exporter.port}/metrics"
        urllib.request.urlopen(url).read()
        http, size = [], 0
        for _ in range(args.scrapes):
            t = time.perf_counter()
            size = len(urllib.request.urlopen(url).read())
            http.append((time.perf_counter() - t) * 1000)
        exporter.close()

        print(
            f"\nOne scrape with {args.n:,} predictions synced, {args.waiting:,} waiting "
            f"(backlog reported: {backlog:,.0f}), {series} samples, {size:,} bytes:"
        )
        print(
            f"  round trips: Redis {per['redis']:g} pipeline(s), Postgres {per['postgres']:g} statement(s) "
            "(connection kept between scrapes)"
        )
        print(
            f"  collector: median {statistics.median(times):.2f} ms, p95 {percentile(times, 0.95):.2f} ms "
            f"({args.scrapes} scrapes)"
        )
        print(
            f"  HTTP /metrics: median {statistics.median(http):.2f} ms, p95 {percentile(http, 0.95):.2f} ms"
        )
    finally:
        keys = 0
        for batch in _batches(client.scan_iter(match=f"{PREFIX}*", count=10_000), 10_000):
            keys += client.delete(*batch)
        client.close()
        with psycopg.connect(args.postgres_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        print(f"cleaned up: {keys:,} keys deleted, database {DATABASE} dropped")


def _batches(items, size):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


if __name__ == "__main__":
    main()
