"""Cache warm (Postgres → Redis) after a flush, read back by a reader that follows the layout spec.

Covers: sync, flush, warm, then every object an application reads through the layout (models by
name and id, versions, datasets, runs with hyperparameters and metrics, experiments with their
runs, predictions by version, scored by minus the time) equals the original except for its ids;
counters past every id; the next forward sync adds no row and a warmed run that completes, or a
model given a new description, updates its own row; a second warm writes nothing; a model the
application re-created first is reused; 5,000 records written by the application during a warm
are all kept and none collides; a warm interrupted after its bookkeeping committed (and one killed
with SIGKILL) is completed by the next; windows never reach past a retention window.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

import pytest

from rp_pipeline.connections import connect_postgres, connect_redis
from rp_pipeline.warm import WarmOptions, _Warm, warm

from .faults import TABLES

JSON_FIELDS = {
    "config",
    "split_info",
    "preprocessing",
    "artifacts",
    "results",
    "input",
    "output",
    "metadata",
}
NUMBER_FIELDS = {
    "size_bytes",
    "num_samples",
    "duration_seconds",
    "final_loss",
    "best_metric_value",
    "confidence",
    "inference_time_ms",
}
TIME_FIELDS = {"created_at", "updated_at", "started_at", "completed_at", "timestamp"}
ID_FIELDS = {"id", "model_id", "model_version_id", "dataset_id", "experiment_id", "training_run_id"}


class LayoutReader:
    """An application's reads, written from docs/redis-layout.md alone (not the project's writer or extractor)."""

    def __init__(self, client, prefix: str):
        self.r, self.p = client, prefix

    def hash(self, key: str) -> dict:
        return self.r.hgetall(self.p + key)

    def ids(self, index: str) -> list[str]:
        return self.r.zrange(self.p + index, 0, -1)

    def graph(self) -> dict:
        """Every object reachable through the indexes, by names instead of ids."""
        datasets = {i: self.hash(f"dataset:{i}") for i in self.ids("idx:datasets")}
        models, versions_of = {}, {}
        for model_id in self.ids("idx:models"):
            model = self.hash(f"model:{model_id}")
            assert self.r.hget(self.p + "model:name_to_id", model["name"]) == model_id
            versions = {}
            for version_id in self.ids(f"idx:versions:{model_id}"):
                version = self.hash(f"version:{version_id}")
                assert version["model_id"] == model_id
                predictions = []
                for pid, score in self.r.zrange(
                    self.p + f"idx:predictions:{version_id}", 0, -1, withscores=True
                ):
                    prediction = self.hash(f"prediction:{pid}")
                    logged = datetime.fromisoformat(prediction["timestamp"]).replace(
                        tzinfo=timezone.utc
                    )
                    assert abs(score + logged.timestamp()) < 1e-3, (
                        "prediction index scored by minus the time"
                    )
                    predictions.append(normal(prediction))
                versions_of[version_id] = (model["name"], version["version"])
                versions[version["version"]] = {
                    **normal(version),
                    "predictions": sorted(predictions, key=repr),
                }
            models[model["name"]] = {**normal(model), "versions": versions}
        runs, run_names = [], {}
        for run_id in self.ids("idx:runs"):
            run = self.hash(f"run:{run_id}")
            metrics = []
            for key in self.r.scan_iter(match=self.p + f"metric:{run_id}:*", count=1000):
                for member, score in self.r.zrange(key, 0, -1, withscores=True):
                    point = json.loads(member)
                    assert score == (
                        point["epoch"] if point["epoch"] is not None else point["step"] or 0
                    )
                    assert (
                        key == self.p + f"metric:{run_id}:{point['metric_name']}:{point['split']}"
                    )
                    metrics.append(
                        {**point, "timestamp": datetime.fromisoformat(point["timestamp"])}
                    )
            dataset = datasets.get(run["dataset_id"])
            run_names[run_id] = run["run_name"]
            runs.append(
                {
                    **normal(run),
                    "version": versions_of[run["model_version_id"]],
                    "dataset": dataset["name"] if dataset else None,
                    "hyperparameters": self.hash(f"hyperparam:{run_id}"),
                    "metrics": sorted(metrics, key=repr),
                }
            )
        experiments = {}
        for experiment_id in self.ids("idx:experiments"):
            experiment = self.hash(f"experiment:{experiment_id}")
            members = []
            for run_id in self.r.smembers(self.p + f"exprun:{experiment_id}:runs"):
                member = self.hash(f"exprun:{experiment_id}:{run_id}")
                assert (
                    member["experiment_id"] == experiment_id and member["training_run_id"] == run_id
                )
                members.append((run_names[run_id], member["variant_name"], member["notes"]))
            experiments[experiment["name"]] = {**normal(experiment), "runs": sorted(members)}
        return {
            "models": models,
            "datasets": {d["name"]: normal(d) for d in datasets.values()},
            "runs": sorted(runs, key=lambda r: (r["run_name"], r["started_at"])),
            "experiments": experiments,
        }


def normal(record: dict) -> dict:
    """A hash as an application reads it: JSON parsed, numbers as numbers, times as times, no ids."""
    out = {}
    for name, value in record.items():
        if name in ID_FIELDS:
            continue
        if name in JSON_FIELDS:
            out[name] = json.loads(value) if value else None
        elif name in NUMBER_FIELDS:
            out[name] = float(value or 0)
        elif name in TIME_FIELDS:
            out[name] = datetime.fromisoformat(value) if value else None
        else:
            out[name] = value
    return out


def delete_prefix(client, prefix: str) -> None:
    """What FLUSHDB does to this tenant (the shared test db is never flushed)."""
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)


def fill(writer, predictions: int = 5) -> dict:
    model = writer.create_model('مدل-ResNet "v"', description="a\tb\\c", framework="pytorch")
    other = writer.create_model("bert", architecture="transformer")
    version = writer.create_model_version(model, "1.0.0", config={"lr": 0.1, "layers": [1, 2]})
    version2 = writer.create_model_version(other, "2.0", status="staging")
    dataset = writer.create_dataset(
        "imagenet", size_bytes=150_000_000_000, num_samples=14_000_000, split_info={"train": 0.8}
    )
    done = writer.create_training_run(version, dataset_id=dataset, run_name="done")
    writer.update_training_run(
        done,
        status="completed",
        completed_at=datetime(2025, 1, 2, 3, 4, 5, 120000),
        duration_seconds=12.5,
        final_loss=0.25,
        best_metric_value=0.9,
        artifacts={"ckpt": "s3://x"},
    )
    training = writer.create_training_run(version2, run_name="training")
    writer.log_hyperparameters(done, {"lr": 0.001, "batch": 64})
    writer.log_hyperparameters(training, {"opt": "adam"})
    for epoch in range(3):
        writer.log_metric(done, "val:loss", 1.0 / (epoch + 1), epoch=epoch, split="val:a")
    writer.log_metric(training, "acc{top5}", 0.5, step=7)
    writer.log_metric(training, "acc", 0.6)
    experiment = writer.create_experiment("exp", hypothesis="bigger is better")
    writer.add_experiment_run(experiment, done, variant_name="A", notes="n")
    writer.add_experiment_run(experiment, training, variant_name="B")
    writer.log_predictions(
        [
            {
                "model_version_id": version,
                "input_data": {"i": i},
                "output_data": i,
                "confidence": 0.5 if i % 2 else None,
            }
            for i in range(predictions)
        ]
    )
    writer.log_prediction(
        version2, [1, 2], {"label": "x"}, inference_time_ms=3.5, metadata={"who": "me"}
    )
    return {"model": model, "version": version, "run": done, "training": training}


def row_counts(conn) -> dict[str, int]:
    return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}


@pytest.fixture
def warm_now(sync_config):
    opened = []

    def run(config=None, **options):
        config = config or sync_config
        client, conn = connect_redis(config), connect_postgres(config)
        opened.append((client, conn))
        return warm(client, conn, config, WarmOptions(**options))

    yield run
    for client, conn in opened:
        client.close()
        conn.close()


@pytest.fixture
def synced_then_flushed(writer, redis_client, key_prefix, run_sync, pg_conn):
    """The fill synced, the original graph read, then Redis flushed."""
    ids = fill(writer)
    run_sync()
    original = LayoutReader(redis_client, key_prefix).graph()
    delete_prefix(redis_client, key_prefix)
    return original, ids


def test_warm_restores_every_object_as_the_layout_reads_it(
    synced_then_flushed, warm_now, redis_client, key_prefix, pg_conn
):
    original, _ = synced_then_flushed
    neighbour = f"x{key_prefix}model:1"  # another tenant's key, under another prefix
    redis_client.hset(neighbour, mapping={"name": "theirs"})
    try:
        result = warm_now(predictions_hours=1)
        assert redis_client.hgetall(neighbour) == {"name": "theirs"}
    finally:
        redis_client.delete(neighbour)
    assert LayoutReader(redis_client, key_prefix).graph() == original
    assert result.counts() == {
        "models": 2,
        "model_versions": 2,
        "datasets": 1,
        "training_runs": 2,
        "hyperparameters": 3,
        "metrics": 5,
        "experiments": 1,
        "experiment_runs": 2,
        "predictions": 6,
    }
    for counter, index in (
        ("model", "idx:models"),
        ("run", "idx:runs"),
        ("dataset", "idx:datasets"),
        ("experiment", "idx:experiments"),
    ):
        ids = [int(i) for i in redis_client.zrange(key_prefix + index, 0, -1)]
        assert int(redis_client.get(f"{key_prefix}counter:{counter}")) >= max(ids)
    predictions = [
        int(k.rsplit(":", 1)[1]) for k in redis_client.scan_iter(match=f"{key_prefix}prediction:*")
    ]
    assert int(redis_client.get(f"{key_prefix}counter:prediction")) >= max(predictions)


def test_next_sync_adds_no_row_and_changes_update_the_warmed_rows(
    synced_then_flushed, warm_now, run_sync, writer, redis_client, key_prefix, pg_conn
):
    warm_now(predictions_hours=1)
    before = row_counts(pg_conn)
    results = run_sync()
    assert row_counts(pg_conn) == before
    assert {name: r.inserted for name, r in results.items() if r.inserted} == {}
    assert (
        results["predictions"].read == 0
    )  # the watermark moved past the warmed block: nothing read back
    reader = LayoutReader(redis_client, key_prefix)
    run_id = next(
        i for i in reader.ids("idx:runs") if reader.hash(f"run:{i}")["run_name"] == "training"
    )
    pg_id = pg_conn.execute("SELECT id FROM training_runs WHERE run_name = 'training'").fetchone()[
        0
    ]
    writer.update_training_run(int(run_id), status="completed", final_loss=0.05)
    writer.log_metric(int(run_id), "acc", 0.9, step=8)
    model_id = redis_client.hget(key_prefix + "model:name_to_id", "bert")
    redis_client.hset(f"{key_prefix}model:{model_id}", "description", "new words")
    run_sync()
    assert pg_conn.execute(
        "SELECT id, status, final_loss FROM training_runs WHERE run_name = 'training'"
    ).fetchall() == [(pg_id, "completed", 0.05)]
    assert (
        pg_conn.execute("SELECT description FROM models WHERE name = 'bert'").fetchone()[0]
        == "new words"
    )
    assert row_counts(pg_conn) == {**before, "metrics": before["metrics"] + 1}


def test_a_second_warm_writes_nothing(synced_then_flushed, warm_now, redis_client, key_prefix):
    warm_now(predictions_hours=1)
    keys = sorted(redis_client.scan_iter(match=f"{key_prefix}*"))
    again = warm_now(predictions_hours=1)
    assert sum(again.counts().values()) == 0
    assert sorted(redis_client.scan_iter(match=f"{key_prefix}*")) == keys


def test_a_model_the_application_recreated_is_reused(
    synced_then_flushed, warm_now, writer, redis_client, key_prefix, run_sync, pg_conn
):
    original, _ = synced_then_flushed
    recreated = writer.create_model("bert", architecture="transformer")
    result = warm_now(predictions_hours=1)
    assert result.reused == {"models": 1} and result.counts()["models"] == 1
    reader = LayoutReader(redis_client, key_prefix)
    names = [reader.hash(f"model:{i}")["name"] for i in reader.ids("idx:models")]
    assert sorted(names) == sorted(original["models"]) and names.count("bert") == 1
    assert redis_client.hget(key_prefix + "model:name_to_id", "bert") == str(recreated)
    assert [
        reader.hash(f"version:{v}")["version"] for v in reader.ids(f"idx:versions:{recreated}")
    ] == ["2.0"]
    before = row_counts(pg_conn)
    run_sync()
    assert row_counts(pg_conn) == before


def test_application_writes_during_the_warm_are_kept(
    writer, redis_client, key_prefix, run_sync, warm_now, pg_conn
):
    fill(writer, predictions=20_000)
    run_sync()
    delete_prefix(redis_client, key_prefix)
    app_version = writer.create_model_version(writer.create_model("live"), "1")
    written: list[int] = []

    def application():
        for start in range(0, 5_000, 50):
            written.extend(
                writer.log_predictions(
                    [
                        {
                            "model_version_id": app_version,
                            "input_data": {"app": i},
                            "output_data": i,
                        }
                        for i in range(start, start + 50)
                    ]
                )
            )

    thread = threading.Thread(target=application)
    thread.start()
    result = warm_now(predictions_hours=1)
    thread.join()
    assert len(written) == 5_000 and result.counts()["predictions"] == 20_001
    for i, pid in enumerate(written):
        assert json.loads(redis_client.hget(f"{key_prefix}prediction:{pid}", "input")) == {"app": i}
    warmed = [
        m
        for v in redis_client.scan_iter(match=f"{key_prefix}idx:predictions:*")
        for m in redis_client.zrange(v, 0, -1)
        if not v.endswith(f":{app_version}")
    ]
    assert len(warmed) == 20_001 and not set(map(int, warmed)) & set(written)
    before = row_counts(pg_conn)
    run_sync()
    assert row_counts(pg_conn)["predictions"] == before["predictions"] + 5_000
    assert (
        pg_conn.execute(
            "SELECT count(DISTINCT origin_redis_id) FROM predictions WHERE origin_source = "
            "(SELECT origin_source FROM predictions ORDER BY id DESC LIMIT 1)"
        ).fetchone()[0]
        == 25_001
    )


def test_a_warm_interrupted_after_its_commit_is_completed_by_the_next(
    synced_then_flushed, warm_now, redis_client, key_prefix, run_sync, pg_conn, monkeypatch
):
    original, _ = synced_then_flushed
    real_write = _Warm._write
    calls = []

    def dies_on_the_third_batch(self, batch, ids):
        calls.append(batch.spec.name)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed between the commit and the Redis write")
        return real_write(self, batch, ids)

    monkeypatch.setattr(_Warm, "_write", dies_on_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        warm_now(predictions_hours=1)
    monkeypatch.setattr(_Warm, "_write", real_write)
    result = warm_now(predictions_hours=1)
    assert any("interrupted" in note for note in result.notes)
    assert LayoutReader(redis_client, key_prefix).graph() == original
    before = row_counts(pg_conn)
    run_sync()
    assert row_counts(pg_conn) == before


WARM_IN_A_PROCESS = """
import sys
from rp_pipeline.connections import connect_postgres, connect_redis
from rp_pipeline.settings import SyncConfig
from rp_pipeline.warm import WarmOptions, warm
config = SyncConfig(postgres_url=sys.argv[1], redis_url=sys.argv[2], key_prefix=sys.argv[3], schema=sys.argv[4],
                    sync_schema=sys.argv[5])
warm(connect_redis(config), connect_postgres(config), config, WarmOptions(predictions_hours=1))
"""


def test_sigkill_during_the_warm_then_a_rerun_gives_exact_results(
    writer, redis_client, key_prefix, run_sync, warm_now, pg_conn, sync_config
):
    fill(writer, predictions=25_000)
    run_sync()
    original = LayoutReader(redis_client, key_prefix).graph()
    delete_prefix(redis_client, key_prefix)
    c = sync_config
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            WARM_IN_A_PROCESS,
            c.postgres_url,
            c.redis_url,
            c.key_prefix,
            c.schema,
            c.sync_schema,
        ]
    )
    deadline = time.monotonic() + 120
    while (
        time.monotonic() < deadline
        and int(redis_client.get(key_prefix + "counter:prediction") or 0) < 5_000
    ):
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert int(redis_client.get(key_prefix + "counter:prediction") or 0) < 25_001, (
        "killed before it finished"
    )
    warm_now(predictions_hours=1)
    assert LayoutReader(redis_client, key_prefix).graph() == original
    before = row_counts(pg_conn)
    run_sync()
    assert row_counts(pg_conn) == before


def test_windows_never_reach_past_retention(
    writer, redis_client, key_prefix, run_sync, warm_now, pg_conn, sync_config
):
    import dataclasses

    fill(writer, predictions=10)
    run_sync()
    pg_conn.execute(
        "UPDATE predictions SET timestamp = timestamp - interval '3 hours' WHERE id % 2 = 0"
    )
    old = pg_conn.execute(
        "SELECT count(*) FROM predictions WHERE timestamp < now() - interval '1 hour'"
    ).fetchone()[0]
    assert old > 0
    delete_prefix(redis_client, key_prefix)
    config = dataclasses.replace(sync_config, retention_hours={"predictions": 1})
    result = warm_now(config, predictions_hours=48)
    assert any("clamped" in note and "predictions" in note for note in result.notes)
    assert result.counts()["predictions"] == 11 - old
    before = row_counts(pg_conn)
    results = run_sync(retention_hours={"predictions": 1})
    assert results["predictions"].deleted == 0 and row_counts(pg_conn) == before
    assert warm_now(config, predictions_hours=48).counts()["predictions"] == 0


def test_only_the_selected_entities_and_windows_are_warmed(
    synced_then_flushed, warm_now, redis_client, key_prefix
):
    dry = warm_now(dry_run=True)
    assert dry.counts()["models"] == 2 and dry.counts()["predictions"] == 0
    assert not list(redis_client.scan_iter(match=f"{key_prefix}model:*"))
    result = warm_now(entities=("models", "model_versions"))
    assert {k: v for k, v in result.counts().items() if v} == {"models": 2, "model_versions": 2}
    assert not redis_client.exists(key_prefix + "idx:runs")


def test_the_sensor_requests_the_warm_after_a_flush_and_the_asset_runs_it(
    synced_then_flushed, sync_config, redis_client, key_prefix
):
    import dagster as dg

    from rp_pipeline.resources import resources_for
    from rp_pipeline.warm_assets import redis_cache_warm, warm_on_flush

    original, _ = synced_then_flushed
    resources = resources_for(sync_config)
    assert (
        warm_on_flush.default_status == dg.DefaultSensorStatus.STOPPED
    )  # WARM_ON_FLUSH=1 turns it on
    with dg.build_sensor_context(resources=resources) as context:
        requests = list(warm_on_flush.evaluate_tick(context).run_requests)
        assert len(requests) == 1  # the marker had vanished: a flushed Redis
        cursor = context.cursor
    with dg.build_sensor_context(resources=resources, cursor=cursor) as context:
        assert not warm_on_flush.evaluate_tick(
            context
        ).run_requests  # the same data set: nothing to do
    result = dg.materialize(
        [redis_cache_warm],
        resources=resources,
        run_config={"ops": {"redis_cache_warm": {"config": {"predictions_hours": 1.0}}}},
    )
    assert result.success
    metadata = result.asset_materializations_for_node("redis_cache_warm")[0].metadata
    assert metadata["written_models"].value == 2 and metadata["written_predictions"].value == 6
    assert LayoutReader(redis_client, key_prefix).graph() == original
    delete_prefix(redis_client, key_prefix)
    with dg.build_sensor_context(resources=resources, cursor=cursor) as context:
        assert (
            len(warm_on_flush.evaluate_tick(context).run_requests) == 1
        )  # flushed again: a new data set


def test_the_command_line_warms(
    synced_then_flushed, sync_config, redis_client, key_prefix, work_dir
):
    original, _ = synced_then_flushed
    c = sync_config
    env = {
        **os.environ,
        "POSTGRES_URL": c.postgres_url,
        "REDIS_URL": c.redis_url,
        "REDIS_KEY_PREFIX": c.key_prefix,
        "POSTGRES_SCHEMA": c.schema,
        "SYNC_SCHEMA": c.sync_schema,
    }
    dry = subprocess.run(
        [sys.executable, "-m", "rp_pipeline", "warm", "--dry-run"],
        env=env,
        cwd=work_dir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dry.returncode == 0, dry.stderr
    assert "Models: 2" in dry.stdout and not redis_client.exists(key_prefix + "idx:models")
    done = subprocess.run(
        [sys.executable, "-m", "rp_pipeline", "warm", "--predictions-hours", "1"],
        env=env,
        cwd=work_dir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "Predictions: 6" in done.stdout
    assert LayoutReader(redis_client, key_prefix).graph() == original
    bad = subprocess.run(
        [sys.executable, "-m", "rp_pipeline", "warm", "--entities", "metrics"],
        env=env,
        cwd=work_dir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "add training_runs" in bad.stderr


def test_the_python_api_returns_counts_per_entity(
    synced_then_flushed, sync_config, redis_client, key_prefix
):
    from rp_pipeline import RedisPgSync

    original, _ = synced_then_flushed
    c = sync_config
    sync = RedisPgSync(
        c.redis_url, c.postgres_url, c.key_prefix, schema=c.schema, sync_schema=c.sync_schema
    )
    assert sync.warm(entities=["models"], dry_run=True) == {**dict.fromkeys(TABLES, 0), "models": 2}
    counts = sync.warm(predictions_hours=1)
    assert counts["predictions"] == 6 and counts["training_runs"] == 2
    assert LayoutReader(redis_client, key_prefix).graph() == original
