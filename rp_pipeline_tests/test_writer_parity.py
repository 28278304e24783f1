"""Data written through every public method of a layout-following writer syncs with every value equal.

Covers the issue's "done when": the same application calls go through two writers —
`SpecWriter` (spec_writer.py: the original adapter's way, INCR then separate
commands, `json.dumps(default=str)`, timestamps from a clock that plays clients
writing different ISO-8601 forms) and the project's own `RedisWriter` — with
application-supplied `completed_at` in several forms, NaN/Infinity in model
outputs, configs and artifacts, the zeros a run is created with, and text that
needs escaping. After one sync every Postgres row is read back and compared with
what the application asked to write: every record present, instants equal in UTC,
JSON equal with non-finite numbers as null, "not set" zeros and '' as NULL.
"""

from __future__ import annotations

import itertools
import json
import math
from datetime import datetime, timedelta, timezone

import pytest
from psycopg.rows import dict_row

from rp_pipeline.engine import stats_from_results

from .spec_writer import SpecWriter

UTC = timezone.utc
NAN, INF = float("nan"), float("inf")
TEXT = "مدل «چهره» \"quoted\" it's \\ back\tslash\nnew line'); DROP TABLE models; --"

# The forms other clients write for "now" (SpecWriter's clock cycles through them).
CLIENT_FORMS = [
    lambda t: t.replace(tzinfo=None).isoformat(),  # datetime.utcnow().isoformat()
    lambda t: t.isoformat(),  # datetime.now(timezone.utc).isoformat(): +00:00
    lambda t: t.astimezone(timezone(timedelta(hours=3, minutes=30))).isoformat(),
    lambda t: t.astimezone(timezone(timedelta(hours=-5))).isoformat(),
    lambda t: t.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z",
    lambda t: t.replace(tzinfo=None).isoformat(sep=" "),
]


def client_clock():
    """Distinct instants, each written in the next client's form."""
    moments = (
        datetime(2025, 11, 22, 10, 30, 0, 123456, tzinfo=UTC) + timedelta(seconds=61 * n)
        for n in itertools.count()
    )
    forms = itertools.cycle(CLIENT_FORMS)
    return lambda: next(forms)(next(moments))


def instant(value: str | datetime) -> datetime:
    """The instant a written timestamp names (naive = UTC), independent of the sync's own parser."""
    moment = (
        datetime.fromisoformat(value.replace("Z", "+00:00")) if isinstance(value, str) else value
    )
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def as_stored(obj):
    """An application object as JSON holds it: json.dumps(default=str), non-finite numbers as null."""
    return json.loads(json.dumps(obj, default=str), parse_constant=lambda name: None)


def comparable(value):
    """Rows with NaN compare equal when both hold NaN."""
    if isinstance(value, float) and math.isnan(value):
        return "<NaN>"
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [comparable(v) for v in value]
    return value


def rows(conn, sql: str) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(sql).fetchall()


def write_everything(w, redis_client, prefix: str) -> dict[str, list[dict]]:
    """Every public method of the writer; returns the rows Postgres must hold, per table, in query order."""

    def written(
        key: str, field: str
    ) -> datetime:  # a timestamp the writer itself wrote, read back as text
        return instant(redis_client.hget(prefix + key, field))

    expected: dict[str, list[dict]] = {}
    m1 = w.create_model(
        "ResNet50-Redis",
        description=TEXT,
        architecture="ResNet-50",
        framework="pytorch",
        task_type="classification",
        input_shape="[3, 224, 224]",
        output_shape="[1000]",
    )
    m2 = w.create_model("bert")
    expected["models"] = [
        {
            "name": "ResNet50-Redis",
            "description": TEXT,
            "architecture": "ResNet-50",
            "framework": "pytorch",
            "task_type": "classification",
            "input_shape": "[3, 224, 224]",
            "output_shape": "[1000]",
            "created_at": written(f"model:{m1}", "created_at"),
            "updated_at": written(f"model:{m1}", "updated_at"),
        },
        {
            "name": "bert",
            "description": None,
            "architecture": None,
            "framework": None,
            "task_type": None,
            "input_shape": None,
            "output_shape": None,
            "created_at": written(f"model:{m2}", "created_at"),
            "updated_at": written(f"model:{m2}", "updated_at"),
        },
    ]

    config = {"lr": 0.1, "warmup": NAN, "note": "NaN", "layers": [3, 4, 6, 3]}
    v1 = w.create_model_version(m1, "1.0.0", checkpoint_path="/ckpt/1.pt", config=config)
    v2 = w.create_model_version(m2, "2.1", status="staging")
    expected["model_versions"] = [
        {
            "model": "ResNet50-Redis",
            "version": "1.0.0",
            "checkpoint_path": "/ckpt/1.pt",
            "config": as_stored(config),
            "status": "active",
            "created_at": written(f"version:{v1}", "created_at"),
        },
        {
            "model": "bert",
            "version": "2.1",
            "checkpoint_path": None,
            "config": {},
            "status": "staging",
            "created_at": written(f"version:{v2}", "created_at"),
        },
    ]

    preprocessing = {"mean": [NAN, 0.5], "std": INF}
    d1 = w.create_dataset(
        "ImageNet",
        description="ILSVRC-2012",
        source_path="/data/imagenet",
        format="jpeg",
        size_bytes=150_000_000_000,
        num_samples=14_197_122,
        split_info={"train": 0.9, "val": 0.1},
        preprocessing=preprocessing,
    )
    d2 = w.create_dataset("empty")
    expected["datasets"] = [
        {
            "name": "ImageNet",
            "description": "ILSVRC-2012",
            "source_path": "/data/imagenet",
            "format": "jpeg",
            "size_bytes": 150_000_000_000,
            "num_samples": 14_197_122,
            "split_info": {"train": 0.9, "val": 0.1},
            "preprocessing": as_stored(preprocessing),
            "created_at": written(f"dataset:{d1}", "created_at"),
        },
        {
            "name": "empty",
            "description": None,
            "source_path": None,
            "format": None,
            "size_bytes": 0,
            "num_samples": 0,
            "split_info": {},
            "preprocessing": {},
            "created_at": written(f"dataset:{d2}", "created_at"),
        },
    ]

    # Runs: completed_at as applications pass it in, in several forms.
    finished = datetime.now(UTC)
    completions = {
        "utc-now-isoformat": finished.isoformat(),
        "offset +03:30": "2025-11-22T14:00:00+03:30",
        "Z with milliseconds": "2025-11-22T10:30:00.123Z",
        "space": "2025-11-22 10:30:00",
        "aware datetime": datetime(2025, 11, 22, 5, 30, tzinfo=timezone(timedelta(hours=-5))),
        "naive datetime": datetime(2025, 11, 22, 10, 30, 0, 500000),
    }
    artifacts = {"weights": "s3://bucket/w.pt", "curve": [1.0, INF, -INF]}
    expected["training_runs"] = []
    run_ids = {}
    for n, (name, completed_at) in enumerate(completions.items()):
        run = run_ids[name] = w.create_training_run(v1, dataset_id=d1, run_name=name)
        w.update_training_run(
            run,
            status="completed",
            completed_at=completed_at,
            duration_seconds=3600.5 + n,
            final_loss=0.123,
            best_metric_value=0.765,
            artifacts=artifacts,
        )
        expected["training_runs"].append(
            {
                "run_name": name,
                "version": "1.0.0",
                "dataset": "ImageNet",
                "status": "completed",
                "started_at": written(f"run:{run}", "started_at"),
                "completed_at": instant(completed_at),
                "duration_seconds": 3600.5 + n,
                "final_loss": 0.123,
                "best_metric_value": 0.765,
                "artifacts": as_stored(artifacts),
            }
        )
    run_open = run_ids["open"] = w.create_training_run(
        v2, run_name="open"
    )  # zeros, '' and dataset 0 as created
    run_failed = run_ids["failed"] = w.create_training_run(v2, dataset_id=d2, run_name="failed")
    w.update_training_run(run_failed, status="failed")
    expected["training_runs"] += [
        {
            "run_name": "open",
            "version": "2.1",
            "dataset": None,
            "status": "started",
            "started_at": written(f"run:{run_open}", "started_at"),
            "completed_at": None,
            "duration_seconds": None,
            "final_loss": None,
            "best_metric_value": None,
            "artifacts": {},
        },
        {
            "run_name": "failed",
            "version": "2.1",
            "dataset": "empty",
            "status": "failed",
            "started_at": written(f"run:{run_failed}", "started_at"),
            "completed_at": None,
            "duration_seconds": None,
            "final_loss": None,
            "best_metric_value": None,
            "artifacts": {},
        },
    ]
    expected["training_runs"].sort(key=lambda r: r["run_name"])

    done = run_ids["utc-now-isoformat"]
    w.log_hyperparameters(done, {"lr": 0.1, "batch_size": 256, "optimizer": "sgd", "clip": NAN})
    w.log_hyperparameters(done, {"lr": 0.05})  # overwritten later
    w.log_hyperparameters(run_open, {"layers": [1, 2], "name": TEXT})
    expected["hyperparameters"] = sorted(
        [
            {"run_name": "utc-now-isoformat", "param_name": k, "param_value": v}
            for k, v in {
                "lr": "0.05",
                "batch_size": "256",
                "optimizer": "sgd",
                "clip": "nan",
            }.items()
        ]
        + [
            {"run_name": "open", "param_name": "layers", "param_value": "[1, 2]"},
            {"run_name": "open", "param_name": "name", "param_value": TEXT},
        ],
        key=lambda r: (r["run_name"], r["param_name"]),
    )

    points = [
        (done, "utc-now-isoformat", "loss", 0.9, 1, None, "train"),
        (done, "utc-now-isoformat", "loss", 0.5, 2, None, "train"),
        (done, "utc-now-isoformat", "acc:top1", 0.7, None, 100, "val:clean"),
        (run_open, "open", "loss", NAN, None, None, "train"),
        (run_open, "open", "grad", INF, 1, 10, "train"),
    ]
    for run, _, name, value, epoch, step, split in points:
        w.log_metric(run, name, value, epoch=epoch, step=step, split=split)
    expected["metrics"] = sorted(
        [
            {
                "run_name": run_name,
                "epoch": epoch,
                "step": step,
                "metric_name": name,
                "metric_value": value,
                "split": split,
                "timestamp": point_timestamp(redis_client, prefix, run, name, split, epoch, step),
            }
            for run, run_name, name, value, epoch, step, split in points
        ],
        key=lambda r: (r["run_name"], r["metric_name"], r["epoch"] or 0, r["step"] or 0),
    )

    experiment = w.create_experiment(
        "augmentations", description="aug study", hypothesis="more aug helps"
    )
    expected["experiments"] = [
        {
            "name": "augmentations",
            "description": "aug study",
            "hypothesis": "more aug helps",
            "status": "active",
            "created_at": written(f"experiment:{experiment}", "created_at"),
            "completed_at": None,
            "results": {},
        }
    ]
    w.add_experiment_run(experiment, done, variant_name="baseline", notes=TEXT)
    w.add_experiment_run(experiment, run_open)
    expected["experiment_runs"] = [
        {"experiment": "augmentations", "run_name": "open", "variant_name": None, "notes": None},
        {
            "experiment": "augmentations",
            "run_name": "utc-now-isoformat",
            "variant_name": "baseline",
            "notes": TEXT,
        },
    ]

    calls = [
        (
            v1,
            {"image": "cat.jpg"},
            {"label": "cat", "logits": [NAN, 1.0, -INF]},
            0.98,
            12.5,
            {"client": "web"},
        ),
        (v1, [1, 2, 3], "cat", None, None, None),
        (v2, "some text", -INF, 0.5, None, {"note": "NaN"}),
    ]
    ids = [
        w.log_prediction(v, i, o, confidence=c, inference_time_ms=t, metadata=m)
        for v, i, o, c, t, m in calls
    ]
    if hasattr(w, "log_predictions"):  # RedisWriter's batch method
        batch = [(v1, {"i": n}, n * 0.5, 0.1 * n, None, None) for n in range(4)]
        ids += w.log_predictions(
            [
                {"model_version_id": v, "input_data": i, "output_data": o, "confidence": c}
                for v, i, o, c, _, _ in batch
            ]
        )
        calls += batch
    versions = {v1: "1.0.0", v2: "2.1"}
    expected["predictions"] = [
        {
            "version": versions[v],
            "input_data": as_stored(i if isinstance(i, dict) else {"data": i}),
            "output_data": as_stored(o if isinstance(o, dict) else {"data": o}),
            "confidence": c or None,
            "inference_time_ms": t or None,
            "timestamp": written(f"prediction:{p}", "timestamp"),
            "metadata": as_stored(m or {}),
        }
        for p, (v, i, o, c, t, m) in zip(ids, calls)
    ]
    return expected


def point_timestamp(
    redis_client, prefix: str, run: int, name: str, split: str, epoch, step
) -> datetime:
    """The timestamp the writer put into a metric point's JSON member."""
    for member in redis_client.zrange(f"{prefix}metric:{run}:{name}:{split}", 0, -1):
        point = json.loads(member)
        if (point["epoch"], point["step"]) == (epoch, step):
            return instant(point["timestamp"])
    raise AssertionError(f"no metric point {name}/{split} epoch={epoch} step={step}")


QUERIES = {
    "models": "SELECT name, description, architecture, framework, task_type, input_shape, output_shape, "
    'created_at, updated_at FROM models ORDER BY name COLLATE "C"',
    "model_versions": "SELECT m.name AS model, v.version, v.checkpoint_path, v.config, v.status, v.created_at "
    'FROM model_versions v JOIN models m ON m.id = v.model_id ORDER BY v.version COLLATE "C"',
    "datasets": "SELECT name, description, source_path, format, size_bytes, num_samples, split_info, "
    'preprocessing, created_at FROM datasets ORDER BY name COLLATE "C"',
    "training_runs": "SELECT r.run_name, v.version, d.name AS dataset, r.status, r.started_at, r.completed_at, "
    "r.duration_seconds, r.final_loss, r.best_metric_value, r.artifacts FROM training_runs r "
    "JOIN model_versions v ON v.id = r.model_version_id LEFT JOIN datasets d ON d.id = r.dataset_id "
    'ORDER BY r.run_name COLLATE "C"',
    "hyperparameters": "SELECT r.run_name, h.param_name, h.param_value FROM hyperparameters h "
    "JOIN training_runs r ON r.id = h.training_run_id "
    'ORDER BY r.run_name COLLATE "C", h.param_name COLLATE "C"',
    "metrics": "SELECT r.run_name, m.epoch, m.step, m.metric_name, m.metric_value, m.split, m.timestamp "
    "FROM metrics m JOIN training_runs r ON r.id = m.training_run_id "
    'ORDER BY r.run_name COLLATE "C", m.metric_name COLLATE "C", '
    "coalesce(m.epoch, 0), coalesce(m.step, 0)",
    "experiments": "SELECT name, description, hypothesis, status, created_at, completed_at, results FROM experiments",
    "experiment_runs": "SELECT e.name AS experiment, r.run_name, x.variant_name, x.notes FROM experiment_runs x "
    "JOIN experiments e ON e.id = x.experiment_id JOIN training_runs r ON r.id = x.training_run_id "
    'ORDER BY r.run_name COLLATE "C"',
    "predictions": "SELECT v.version, p.input_data, p.output_data, p.confidence, p.inference_time_ms, p.timestamp, "
    "p.metadata FROM predictions p JOIN model_versions v ON v.id = p.model_version_id "
    "ORDER BY p.origin_redis_id",
}


@pytest.fixture(params=["SpecWriter (the original adapter's way)", "RedisWriter"])
def app_writer(request, redis_client, key_prefix, writer):
    if request.param == "RedisWriter":
        return writer
    return SpecWriter(redis_client, key_prefix, clock=client_clock())


def test_everything_a_writer_writes_syncs_with_every_value_equal(
    app_writer, redis_client, key_prefix, run_sync, pg_conn, pg_schemas
):
    expected = write_everything(app_writer, redis_client, key_prefix)

    results = run_sync()

    assert stats_from_results(results.values())["errors"] == 0
    assert rows(pg_conn, f'SELECT redis_key, reason FROM "{pg_schemas[1]}".rejected_records') == []
    assert sum(r.pending for r in results.values()) == 0
    for table, query in QUERIES.items():
        assert comparable(rows(pg_conn, query)) == comparable(expected[table]), table
    assert (
        results["predictions"].json_non_finite_nulled == 3
    )  # NaN and -Infinity in outputs, -Infinity alone

    again = run_sync()  # and nothing changes on a second look
    assert sum(r.inserted + r.updated + r.rejected for r in again.values()) == 0
