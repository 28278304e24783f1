"""Benchmark of RedisWriter's prediction path against the old adapter's naive one.

    .venv/bin/python benchmarks/bench_writer.py [--n 20000] [--redis-url redis://127.0.0.1:6379/14]

Measures, in one run on one Redis: `log_prediction` latency (one atomic script
call), `log_predictions` throughput, and as the baseline the old adapter's
three round trips (INCR, then HSET, then ZADD; not atomic). Everything is
written under a unique key prefix, deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import redis

# Runnable as a script from a checkout, without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rp_pipeline.writer import RedisWriter

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"


def measure_writer(redis_url: str = DEFAULT_REDIS_URL, n: int = 20_000) -> dict[str, float]:
    """Latencies in ms and throughputs in predictions/s of the atomic, batch and naive paths."""
    prefix = f"bench{uuid.uuid4().hex[:10]}:"
    writer = RedisWriter.from_url(redis_url, key_prefix=prefix)
    try:
        warm_up = min(1000, n)
        for i in range(warm_up):
            writer.log_prediction(
                1, _input(i), _OUTPUT, confidence=0.9, inference_time_ms=3.2, metadata=_METADATA
            )
            _naive_log_prediction(writer.client, prefix, 1, _input(i), _OUTPUT, 0.9, 3.2, _METADATA)

        atomic = _latencies_ms(
            lambda i: writer.log_prediction(
                2, _input(i), _OUTPUT, confidence=0.9, inference_time_ms=3.2, metadata=_METADATA
            ),
            n,
        )
        naive = _latencies_ms(
            lambda i: _naive_log_prediction(
                writer.client, prefix, 3, _input(i), _OUTPUT, 0.9, 3.2, _METADATA
            ),
            n,
        )
        records = [
            {
                "model_version_id": 4,
                "input_data": _input(i),
                "output_data": _OUTPUT,
                "confidence": 0.9,
                "inference_time_ms": 3.2,
                "metadata": _METADATA,
            }
            for i in range(n)
        ]
        started = time.perf_counter()
        writer.log_predictions(records)
        batch_seconds = time.perf_counter() - started
    finally:
        _delete_prefix(writer.client, prefix)
        writer.close()

    atomic_throughput = n / (sum(atomic) / 1000)
    naive_throughput = n / (sum(naive) / 1000)
    batch_throughput = n / batch_seconds
    return {
        "n": n,
        "single_p50_ms": _percentile(atomic, 50),
        "single_p99_ms": _percentile(atomic, 99),
        "single_throughput": atomic_throughput,
        "naive_p50_ms": _percentile(naive, 50),
        "naive_p99_ms": _percentile(naive, 99),
        "naive_throughput": naive_throughput,
        "batch_throughput": batch_throughput,
        "naive_over_single_p50": _percentile(naive, 50) / _percentile(atomic, 50),
        "batch_over_naive_throughput": batch_throughput / naive_throughput,
    }


_OUTPUT = {"label": "cat", "scores": [0.9, 0.07, 0.03]}
_METADATA = {"client": "bench", "region": "local"}


def _input(i: int) -> dict:
    return {"request": i, "features": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]}


def _naive_log_prediction(
    client,
    prefix,
    model_version_id,
    input_data,
    output_data,
    confidence,
    inference_time_ms,
    metadata,
):
    """The old adapter's path: allocate, then write hash, then index — three round trips."""
    pred_id = client.incr(f"{prefix}counter:prediction")
    client.hset(
        f"{prefix}prediction:{pred_id}",
        mapping={
            "id": pred_id,
            "model_version_id": model_version_id,
            "input": json.dumps(input_data, default=str),
            "output": json.dumps(output_data, default=str),
            "confidence": confidence or 0,
            "inference_time_ms": inference_time_ms or 0,
            "timestamp": datetime.now(timezone.utc).replace(tzinfo=None).isoformat(),
            "metadata": json.dumps(metadata or {}, default=str),
        },
    )
    client.zadd(f"{prefix}idx:predictions:{model_version_id}", {pred_id: -time.time()})
    return pred_id


def _latencies_ms(call, n: int) -> list[float]:
    latencies = []
    clock = time.perf_counter_ns
    for i in range(n):
        started = clock()
        call(i)
        latencies.append((clock() - started) / 1e6)
    return latencies


def _percentile(values: list[float], pct: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


def _delete_prefix(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(match=f"{prefix}*", count=5000))
    for start in range(0, len(keys), 5000):
        client.delete(*keys[start : start + 5000])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="predictions per measured path")
    parser.add_argument(
        "--redis-url", default=DEFAULT_REDIS_URL, help="use a db of its own (default db 14)"
    )
    args = parser.parse_args()

    result = measure_writer(args.redis_url, args.n)
    print(f"n = {result['n']} predictions per path, {args.redis_url}")
    print(
        f"log_prediction (atomic, 1 round trip): p50 {result['single_p50_ms']:.3f} ms, "
        f"p99 {result['single_p99_ms']:.3f} ms, {result['single_throughput']:,.0f}/s sequential"
    )
    print(
        f"naive INCR+HSET+ZADD (3 round trips): p50 {result['naive_p50_ms']:.3f} ms, "
        f"p99 {result['naive_p99_ms']:.3f} ms, {result['naive_throughput']:,.0f}/s sequential"
    )
    print(f"log_predictions (batch): {result['batch_throughput']:,.0f} predictions/s")
    print(
        f"ratios: naive p50 / atomic p50 = {result['naive_over_single_p50']:.2f}x, "
        f"batch / naive throughput = {result['batch_over_naive_throughput']:.1f}x"
    )


if __name__ == "__main__":
    main()
