"""The sync's prediction throughput from a Redis Cluster source vs a single Redis, in the same run.

    .venv/bin/python benchmarks/bench_cluster.py [--n 100000] [--repeat 3]
        [--redis-url redis://127.0.0.1:6379/13] [--cluster-url redis://127.0.0.1:PORT]
        [--postgres-url postgresql://postgres@127.0.0.1:5432/postgres]

Without --cluster-url a 3-primary cluster is started on loopback for the run (scripts/services.sh
`start_redis_cluster`) and stopped after. The same N predictions (RedisWriter's batch path, one
model version) are written into both sources under a unique key prefix; each source is synced
into fresh schemas of a database `rp_bench_cluster` (created beside --postgres-url's, dropped
after) with the real engine (`migrate`, then `engine.sync_all`), alternating sources per repeat.
Prints the predictions entity's rows/s per source (median of the repeats) and their ratio.
Keys written are deleted afterwards; nothing is flushed.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import psycopg
from redis.cluster import RedisCluster

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable from a checkout

from rp_pipeline.connections import connect_postgres, connect_redis  # noqa: E402
from rp_pipeline.engine import sync_all  # noqa: E402
from rp_pipeline.entities import MODEL_VERSIONS, MODELS, PREDICTIONS  # noqa: E402
from rp_pipeline.schema import migrate  # noqa: E402
from rp_pipeline.settings import SyncConfig  # noqa: E402
from rp_pipeline.writer import RedisWriter  # noqa: E402

BATCH = 1000


def services(function: str, directory: Path) -> None:
    subprocess.run(
        ["bash", "-c", f'source scripts/services.sh && {function} "$1"', "_", str(directory)],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )


def write_predictions(url: str, prefix: str, n: int) -> None:
    with RedisWriter.from_url(url, key_prefix=prefix) as writer:
        version = writer.create_model_version(writer.create_model("bench"), "1.0")
        for start in range(0, n, BATCH):
            writer.log_predictions(
                [
                    {
                        "model_version_id": version,
                        "input_data": {"i": i, "features": [i * 0.5, -i, 3.25] * 8},
                        "output_data": {"label": i % 7, "p": 0.125 * (i % 8)},
                        "confidence": 0.9,
                        "inference_time_ms": 3.5,
                        "metadata": {"client": "bench", "batch": start},
                    }
                    for i in range(start, min(n, start + BATCH))
                ]
            )


def delete_prefix(url: str, prefix: str) -> None:
    client = connect_redis(SyncConfig(redis_url=url))
    try:
        if isinstance(client, RedisCluster):
            keys = client.scan_iter(
                match=f"{prefix}*", count=10_000, target_nodes=RedisCluster.PRIMARIES
            )
        else:
            keys = client.scan_iter(match=f"{prefix}*", count=10_000)
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.delete(key)
        pipe.execute()
    finally:
        client.close()


def sync_predictions(url: str, prefix: str, postgres_url: str) -> float:
    """rows/s of the predictions entity, synced into fresh schemas (dropped after)."""
    tag = uuid.uuid4().hex[:8]
    config = SyncConfig(
        postgres_url=postgres_url,
        redis_url=url,
        key_prefix=prefix,
        schema=f"b_{tag}",
        sync_schema=f"bs_{tag}",
    )
    migrate(config)
    client, conn = connect_redis(config), connect_postgres(config)
    try:
        results = sync_all(
            client, conn, config, run_id=tag, entities=(MODELS, MODEL_VERSIONS, PREDICTIONS)
        )
        return results["predictions"].rows_per_second
    finally:
        for schema in (config.schema, config.sync_schema):
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        client.close()
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--cluster-url")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()

    base, _, _ = args.postgres_url.rpartition("/")
    database = f"{base}/rp_bench_cluster"
    started = None
    if not args.cluster_url:
        started = Path(tempfile.mkdtemp(prefix="rp_bench_cluster_"))
        services("start_redis_cluster", started)
        args.cluster_url = f"redis://127.0.0.1:{(started / 'ports').read_text().split()[0]}"
    prefix = f"bench{uuid.uuid4().hex[:8]}:"
    sources = {"single": args.redis_url, "cluster": args.cluster_url}
    with psycopg.connect(args.postgres_url, autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS rp_bench_cluster")
        admin.execute("CREATE DATABASE rp_bench_cluster")
    try:
        for url in sources.values():
            write_predictions(url, prefix, args.n)
        rates: dict[str, list[float]] = {name: [] for name in sources}
        for _ in range(args.repeat):
            for name, url in sources.items():
                rates[name].append(sync_predictions(url, prefix, database))
    finally:
        for url in sources.values():
            delete_prefix(url, prefix)
        with psycopg.connect(args.postgres_url, autocommit=True) as admin:
            admin.execute("DROP DATABASE IF EXISTS rp_bench_cluster WITH (FORCE)")
        if started:
            services("stop_redis_cluster", started)
    single, cluster = (statistics.median(rates[name]) for name in ("single", "cluster"))
    print(f"predictions synced, N = {args.n:,}, median of {args.repeat}:")
    print(
        f"  single Redis        {single:>10,.0f} rows/s   {', '.join(f'{r:,.0f}' for r in rates['single'])}"
    )
    print(
        f"  Redis Cluster (3)   {cluster:>10,.0f} rows/s   {', '.join(f'{r:,.0f}' for r in rates['cluster'])}"
    )
    print(f"  cluster / single    {cluster / single:>10.2f}")


if __name__ == "__main__":
    main()
