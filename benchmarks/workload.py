"""The benchmark's data: N predictions in the aidb layout, plus proportionate metadata.

Per N predictions: 10 models, 20 versions, 2 datasets, N/1000 training runs
(completed) with 10 hyperparameters each, N/10 metric points spread over the
runs, one experiment with up to 10 member runs. Predictions carry JSON of
realistic size (an 8-float feature vector, a label with 3 scores, a request id
and a client name; one in ten client names is Persian, so json.dumps's \\u
escapes appear as they do in real data). Everything is written with raw
pipelined commands: filling 1,000,000 predictions takes seconds, not minutes.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from raw_redis import RawRedis, command

PREFIX = "aidb:"
MODELS, VERSIONS, DATASETS = 10, 20, 2
PARAMS_PER_RUN = 10
WRITE_BATCH = 5_000
SPAN_SECONDS = 30 * 86_400  # predictions are spread over the last 30 days
_CLIENTS = [
    json.dumps(name)
    for name in (
        "web-frontend",
        "mobile-ios",
        "mobile-android",
        "batch-scorer",
        "partner-api",
        "internal-dashboard",
        "etl-nightly",
        "notebook",
        "canary",
        "اپلیکیشن-موبایل",
    )
]
_LABELS = ("cat", "dog", "bird")


@dataclass(frozen=True)
class Workload:
    """How many records of each entity a fill of N predictions writes (= rows a sync must load)."""

    predictions: int

    @property
    def runs(self) -> int:
        return max(1, self.predictions // 1000)

    @property
    def metric_points(self) -> int:
        return self.predictions // 10

    def rows(self) -> dict[str, int]:
        return {
            "models": MODELS,
            "datasets": DATASETS,
            "experiments": 1,
            "model_versions": VERSIONS,
            "training_runs": self.runs,
            "hyperparameters": self.runs * PARAMS_PER_RUN,
            "metrics": self.metric_points,
            "experiment_runs": min(10, self.runs),
            "predictions": self.predictions,
        }


def _iso(moment: float) -> bytes:
    return datetime.fromtimestamp(moment, timezone.utc).replace(tzinfo=None).isoformat().encode()


def _send(raw: RawRedis, commands: list[bytes]) -> None:
    for start in range(0, len(commands), WRITE_BATCH):
        for reply in raw.pipeline(commands[start : start + WRITE_BATCH]):
            if isinstance(reply, Exception):
                raise reply


def fill(redis_url: str, n: int, seed: int = 7) -> Workload:
    """FLUSHDB, then write the whole workload for N predictions."""
    raw = RawRedis(redis_url)
    try:
        raw.call(b"FLUSHDB")
        rng = random.Random(seed)
        work = Workload(n)
        _write_metadata(raw, work, rng)
        write_predictions(raw, 1, n, rng)
    finally:
        raw.close()
    return work


def _write_metadata(raw: RawRedis, work: Workload, rng: random.Random) -> None:
    p = PREFIX.encode()
    now = time.time()
    cmds: list[bytes] = []
    for i in range(1, MODELS + 1):
        name = (f"مدل-تشخیص-{i}" if i == MODELS else f"resnet-{i}").encode()
        created = _iso(now - SPAN_SECONDS - 86_400 * i)
        cmds += [
            command(
                b"HSET",
                p + b"model:%d" % i,
                b"id",
                b"%d" % i,
                b"name",
                name,
                b"description",
                b'image classifier "v%d" with a \\ in its notes' % i,
                b"architecture",
                b"resnet50",
                b"framework",
                b"pytorch",
                b"task_type",
                b"classification",
                b"input_shape",
                b"[1, 3, 224, 224]",
                b"output_shape",
                b"[1, 3]",
                b"created_at",
                created,
                b"updated_at",
                created,
            ),
            command(b"ZADD", p + b"idx:models", b"%d" % i, b"%d" % i),
            command(b"HSET", p + b"model:name_to_id", name, b"%d" % i),
        ]
    for v in range(1, VERSIONS + 1):
        model = (v - 1) % MODELS + 1
        cmds += [
            command(
                b"HSET",
                p + b"version:%d" % v,
                b"id",
                b"%d" % v,
                b"model_id",
                b"%d" % model,
                b"version",
                b"1.%d" % ((v - 1) // MODELS),
                b"checkpoint_path",
                b"/ckpt/m%d/v%d.pt" % (model, v),
                b"config",
                json.dumps({"lr": 0.001 * v, "batch_size": 64}).encode(),
                b"status",
                b"active",
                b"created_at",
                _iso(now - SPAN_SECONDS - v),
            ),
            command(b"ZADD", p + b"idx:versions:%d" % model, b"%d" % v, b"%d" % v),
        ]
    for d in range(1, DATASETS + 1):
        cmds += [
            command(
                b"HSET",
                p + b"dataset:%d" % d,
                b"id",
                b"%d" % d,
                b"name",
                b"imagenet-%d" % d,
                b"description",
                b"",
                b"source_path",
                b"s3://data/imagenet-%d" % d,
                b"format",
                b"parquet",
                b"size_bytes",
                b"150000000000",
                b"num_samples",
                b"1281167",
                b"split_info",
                b'{"train": 0.8, "val": 0.2}',
                b"preprocessing",
                b'{"resize": 224}',
                b"created_at",
                _iso(now - SPAN_SECONDS),
            ),
            command(b"ZADD", p + b"idx:datasets", b"%d" % d, b"%d" % d),
        ]
    points_left = work.metric_points
    for r in range(1, work.runs + 1):
        started = now - SPAN_SECONDS + r
        cmds += [
            command(
                b"HSET",
                p + b"run:%d" % r,
                b"id",
                b"%d" % r,
                b"model_version_id",
                b"%d" % ((r - 1) % VERSIONS + 1),
                b"dataset_id",
                b"%d" % (r % (DATASETS + 1)),
                b"run_name",
                b"run-%d" % r,
                b"status",
                b"completed",
                b"started_at",
                _iso(started),
                b"completed_at",
                _iso(started + 3600),
                b"duration_seconds",
                b"3600.0",
                b"final_loss",
                b"%.4f" % rng.random(),
                b"best_metric_value",
                b"%.4f" % rng.random(),
                b"artifacts",
                b'{"checkpoint": "/ckpt/run-%d.pt"}' % r,
            ),
            command(b"ZADD", p + b"idx:runs", b"%d" % r, b"%d" % r),
            command(
                b"HSET",
                p + b"hyperparam:%d" % r,
                *[
                    x
                    for k in range(PARAMS_PER_RUN)
                    for x in (b"param_%d" % k, b"%.5f" % rng.random())
                ],
            ),
        ]
        # this run's share of the metric points, as two series (loss/train, accuracy/val)
        points = points_left // (work.runs - r + 1)
        points_left -= points
        for name, split, count in (
            (b"loss", b"train", (points + 1) // 2),
            (b"accuracy", b"val", points // 2),
        ):
            args = []
            for epoch in range(count):
                member = (
                    b'{"epoch": %d, "step": %d, "metric_name": "%s", "metric_value": %.6f, "split": "%s", '
                    b'"timestamp": "%s"}'
                    % (epoch, epoch * 100, name, rng.random(), split, _iso(started + 60 * epoch))
                )
                args += [b"%d" % epoch, member]
            if args:
                cmds.append(command(b"ZADD", p + b"metric:%d:%s:%s" % (r, name, split), *args))
    cmds += [
        command(
            b"HSET",
            p + b"experiment:1",
            b"id",
            b"1",
            b"name",
            b"lr-sweep",
            b"description",
            b"",
            b"hypothesis",
            b"smaller lr wins",
            b"status",
            b"active",
            b"created_at",
            _iso(now - SPAN_SECONDS),
            b"completed_at",
            b"",
            b"results",
            b"{}",
        ),
        command(b"ZADD", p + b"idx:experiments", b"1", b"1"),
    ]
    for r in range(1, min(10, work.runs) + 1):
        cmds += [
            command(b"SADD", p + b"exprun:1:runs", b"%d" % r),
            command(
                b"HSET",
                p + b"exprun:1:%d" % r,
                b"experiment_id",
                b"1",
                b"training_run_id",
                b"%d" % r,
                b"variant_name",
                b"lr-%d" % r,
                b"notes",
                b"",
            ),
        ]
    for counter, value in (
        (b"model", MODELS),
        (b"version", VERSIONS),
        (b"dataset", DATASETS),
        (b"run", work.runs),
        (b"experiment", 1),
    ):
        cmds.append(command(b"SET", p + b"counter:" + counter, b"%d" % value))
    _send(raw, cmds)


def write_predictions(raw: RawRedis, first_id: int, count: int, rng: random.Random) -> None:
    """Predictions first_id .. first_id+count-1, logged over the last 30 days, then the counter set to the last id."""
    p = PREFIX.encode()
    end = time.time()
    total = first_id + count - 1
    step = SPAN_SECONDS / max(total, 1)
    rand, choice = rng.random, rng.choice
    for lo in range(first_id, total + 1, WRITE_BATCH):
        hi = min(lo + WRITE_BATCH, total + 1)
        cmds: list[bytes] = []
        index: dict[int, list[bytes]] = {}
        for pid in range(lo, hi):
            logged = end - SPAN_SECONDS + pid * step
            version = pid % VERSIONS + 1
            features = b", ".join(b"%.6f" % rand() for _ in range(8))
            scores = b"%.4f, %.4f, %.4f" % (rand(), rand(), rand())
            metadata = b'{"request_id": "%s", "client": %s}' % (
                str(uuid.UUID(int=rng.getrandbits(128), version=4)).encode(),
                choice(_CLIENTS).encode(),
            )
            confidence = b"0" if pid % 20 == 0 else b"%.4f" % rand()  # 0 = "not given"
            cmds.append(
                command(
                    b"HSET",
                    p + b"prediction:%d" % pid,
                    b"id",
                    b"%d" % pid,
                    b"model_version_id",
                    b"%d" % version,
                    b"input",
                    b'{"features": [%s]}' % features,
                    b"output",
                    b'{"label": "%s", "scores": [%s]}' % (choice(_LABELS).encode(), scores),
                    b"confidence",
                    confidence,
                    b"inference_time_ms",
                    b"%.3f" % (1 + 20 * rand()),
                    b"timestamp",
                    _iso(logged),
                    b"metadata",
                    metadata,
                )
            )
            index.setdefault(version, []).extend((b"%.6f" % -logged, b"%d" % pid))
        cmds += [
            command(b"ZADD", p + b"idx:predictions:%d" % v, *members)
            for v, members in index.items()
        ]
        _send(raw, cmds)
    raw.call(b"SET", p + b"counter:prediction", b"%d" % total)


def remove_predictions(raw: RawRedis, first_id: int, count: int) -> None:
    """Undo write_predictions(raw, first_id, count, ...): the keys, their index entries, the counter."""
    p = PREFIX.encode()
    ids = range(first_id, first_id + count)
    cmds = [command(b"DEL", p + b"prediction:%d" % i) for i in ids]
    cmds += [
        command(
            b"ZREM",
            p + b"idx:predictions:%d" % v,
            *[b"%d" % i for i in ids if i % VERSIONS + 1 == v],
        )
        for v in range(1, VERSIONS + 1)
        if any(i % VERSIONS + 1 == v for i in ids)
    ]
    _send(raw, cmds)
    raw.call(b"SET", p + b"counter:prediction", b"%d" % (first_id - 1))


# -- wide workloads: ML payloads of realistic width ----------------------------------------------------


def _float_pool(rng: random.Random, size: int = 4096) -> list[bytes]:
    """Embedding values as json.dumps writes float32 values widened to double (about 20 characters each)."""
    return [repr(rng.gauss(0, 0.05)).encode() for _ in range(size)]


def _floats(pool: list[bytes], rng: random.Random, count: int) -> bytes:
    start = rng.randrange(len(pool))
    values = (pool[start:] + pool[:start]) * (count // len(pool) + 1)
    return b", ".join(values[:count])


def fill_wide(redis_url: str, n: int, floats: int, seed: int = 7) -> Workload:
    """FLUSHDB, then the metadata for N predictions and N predictions whose input is a vector of `floats`
    floats (1536: an embedding, about 31 KB of JSON; 120,000: a tensor or a long prompt, about 2.4 MB)."""
    raw = RawRedis(redis_url)
    try:
        raw.call(b"FLUSHDB")
        rng = random.Random(seed)
        work = Workload(n)
        _write_metadata(raw, work, rng)
        pool = _float_pool(rng)
        p = PREFIX.encode()
        end = time.time()
        batch = max(1, min(WRITE_BATCH, (64 << 20) // (floats * 21)))  # about 64 MB per pipeline
        for lo in range(1, n + 1, batch):
            cmds, index = [], {}
            for pid in range(lo, min(lo + batch, n + 1)):
                logged = end - SPAN_SECONDS + pid * SPAN_SECONDS / n
                version = pid % VERSIONS + 1
                cmds.append(
                    command(
                        b"HSET",
                        p + b"prediction:%d" % pid,
                        b"id",
                        b"%d" % pid,
                        b"model_version_id",
                        b"%d" % version,
                        b"input",
                        b'{"embedding": [%s], "model": "text-embedding-3-small"}'
                        % _floats(pool, rng, floats),
                        b"output",
                        b'{"label": "%s", "scores": [%.4f, %.4f, %.4f]}'
                        % (rng.choice(_LABELS).encode(), rng.random(), rng.random(), rng.random()),
                        b"confidence",
                        b"%.4f" % rng.random(),
                        b"inference_time_ms",
                        b"%.3f" % (1 + 20 * rng.random()),
                        b"timestamp",
                        _iso(logged),
                        b"metadata",
                        b'{"request_id": "%s"}' % str(uuid.UUID(int=rng.getrandbits(128))).encode(),
                    )
                )
                index.setdefault(version, []).extend((b"%.6f" % -logged, b"%d" % pid))
            cmds += [
                command(b"ZADD", p + b"idx:predictions:%d" % v, *members)
                for v, members in index.items()
            ]
            _send(raw, cmds)
        raw.call(b"SET", p + b"counter:prediction", b"%d" % n)
    finally:
        raw.close()
    return work
