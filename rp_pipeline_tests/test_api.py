"""The guide's Python API: `RedisPgSync`, running the Dagster job in process.

Covers `from rp_pipeline import RedisPgSync`; `full_sync()` returning the guide's
statistics keys with the right values, recorded as a Dagster run of
`redis_to_postgres_sync`, and adding nothing when run again; a failed step
raising SyncFailed that names the entity; `run_continuous` ending after
`stop()`; and configuration from arguments and from the environment.
"""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

GUIDE_KEYS = {
    "models",
    "versions",
    "datasets",
    "runs",
    "hyperparams",
    "metrics",
    "experiments",
    "predictions",
    "errors",
}


@pytest.fixture
def in_work_dir(work_dir, monkeypatch):
    """Runs are recorded in a fresh directory's instance, not the repository's or $DAGSTER_HOME's."""
    for name in ("DAGSTER_HOME", "DAGSTER_POSTGRES_URL", "SYNC_INTERVAL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(work_dir)
    return work_dir


@pytest.fixture
def sync(redis_url, postgres_url, key_prefix, pg_schemas, in_work_dir):
    from rp_pipeline import RedisPgSync

    schema, sync_schema = pg_schemas
    return RedisPgSync(
        redis_url=redis_url,
        postgres_url=postgres_url,
        key_prefix=key_prefix,
        schema=schema,
        sync_schema=sync_schema,
    )


def write_tree(writer) -> None:
    resnet = writer.create_model("ResNet50-Redis")
    writer.create_model("BERT-Redis")
    imagenet = writer.create_dataset("ImageNet-Redis", size_bytes=150_000_000_000)
    version = writer.create_model_version(resnet, "1.0.0")
    run = writer.create_training_run(version, imagenet, run_name="baseline")
    writer.log_hyperparameters(run, {"learning_rate": 0.1, "batch_size": 64})
    writer.log_metric(run, "loss", 0.5, epoch=1)
    writer.log_metric(run, "loss", 0.3, epoch=2)
    experiment = writer.create_experiment("lr-sweep")
    writer.add_experiment_run(experiment, run, variant_name="a")
    writer.log_predictions(
        {"model_version_id": version, "input_data": [i], "output_data": [i * 2]} for i in range(40)
    )


def test_package_exports_the_api():
    import rp_pipeline
    from rp_pipeline.api import RedisPgSync

    assert rp_pipeline.RedisPgSync is RedisPgSync


def test_full_sync_returns_the_guides_statistics_from_a_dagster_run(sync, writer, pg_conn, caplog):
    from rp_pipeline.instance_storage import sync_instance

    write_tree(writer)
    with caplog.at_level("INFO", logger="rp_pipeline"):
        stats = sync.full_sync()

    assert set(stats) >= GUIDE_KEYS
    assert stats == {
        "models": 2,
        "versions": 1,
        "datasets": 1,
        "runs": 1,
        "hyperparams": 2,
        "metrics": 2,
        "experiments": 1,
        "predictions": 40,
        "errors": 0,
        "experiment_runs": 1,
    }
    assert pg_conn.execute("SELECT size_bytes FROM datasets").fetchone()[0] == 150_000_000_000
    messages = [r.getMessage() for r in caplog.records]
    assert "=== Starting Redis → PostgreSQL Sync ===" in messages
    assert any(m.startswith("  Model synced: ResNet50-Redis") for m in messages)
    assert "  Predictions: 40" in messages
    with sync_instance() as instance:
        run = instance.get_run_by_id(sync.last_outcome.run_id)
        assert run.job_name == "redis_to_postgres_sync" and run.is_success
    assert sync.full_sync() == {
        key: 0 for key in stats
    }  # nothing new: nothing synced, nothing duplicated


def test_a_failed_step_raises_sync_failed_naming_the_entity(sync, writer, postgres_url):
    from dataclasses import replace

    from rp_pipeline.api import RedisPgSync
    from rp_pipeline.engine import lock_key
    from rp_pipeline.errors import SyncFailed
    from rp_pipeline.schema import migrate
    from rp_pipeline.sources import current_origin

    writer.create_model("locked-out")
    impatient = RedisPgSync.from_config(replace(sync.config, lock_timeout_ms=200))
    migrate(sync.config)
    with psycopg.connect(postgres_url, autocommit=True) as other_sync:
        other_sync.execute(
            "SELECT pg_advisory_lock(hashtextextended(%s, 0))",
            (lock_key(sync.config, current_origin(sync.config), "models"),),
        )
        with pytest.raises(SyncFailed, match=r"^models: .*lock") as failed:
            impatient.full_sync()
    assert failed.value.outcome.success is False
    assert "predictions" in failed.value.outcome.failures[-1]  # not run behind the failed parent


def test_run_continuous_stops_after_stop(sync, writer, pg_conn):
    writer.create_model("continuous")
    cycles: list[int] = []
    loop = threading.Thread(
        target=lambda: cycles.append(sync.run_continuous(interval_seconds=3600))
    )
    loop.start()
    deadline = time.monotonic() + 90
    while sync.last_outcome is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sync.last_outcome is not None and sync.last_outcome.success
    stopped = time.monotonic()
    sync.stop()
    loop.join(timeout=10)

    assert not loop.is_alive()
    assert time.monotonic() - stopped < 5
    assert cycles == [1]
    assert pg_conn.execute("SELECT name FROM models").fetchall() == [("continuous",)]


def test_configuration_from_arguments_and_environment(monkeypatch):
    from rp_pipeline.api import RedisPgSync

    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/3")
    monkeypatch.setenv("POSTGRES_URL", "postgresql://app@db/ai_models")
    monkeypatch.setenv("REDIS_KEY_PREFIX", "app:")
    monkeypatch.setenv("POSTGRES_SCHEMA", "analytics")

    given = RedisPgSync("redis://other/0", key_prefix="x:", conflict={"models": "overwrite"}).config
    assert (given.redis_url, given.postgres_url, given.key_prefix) == (
        "redis://other/0",
        "postgresql://app@db/ai_models",
        "x:",
    )
    assert given.policy("models") == "overwrite" and given.schema == "public"
    from_env = RedisPgSync.from_env().config
    assert (from_env.redis_url, from_env.key_prefix, from_env.schema) == (
        "redis://cache:6379/3",
        "app:",
        "analytics",
    )
    with pytest.raises(TypeError, match="unknown setting"):
        RedisPgSync(no_such_setting=1)


def test_the_runs_summary_line_counts_the_whole_sync(sync, writer, pg_conn):
    """'Sync complete in N s' (the run's log line and statistics) spans every table's sync, the
    longest last: not up to the start of the last table's final transaction."""
    from rp_pipeline.assets import run_statistics

    version = writer.create_model_version(writer.create_model("timed"), "1")
    for start in range(0, 20_000, 1_000):
        writer.log_predictions(
            [
                {"model_version_id": version, "input_data": {"i": i}, "output_data": {"o": i}}
                for i in range(start, start + 1_000)
            ]
        )
    sync.full_sync()
    run_id = sync.last_outcome.run_id
    _, seconds = run_statistics(sync.config, run_id)
    (tables,) = pg_conn.execute(
        f'SELECT sum(duration_seconds) FROM "{sync.config.sync_schema}".entity_runs WHERE run_id = %s',
        (run_id,),
    ).fetchone()
    assert tables > 0.1  # predictions' sync took long enough for the difference to show
    assert seconds >= 0.99 * tables
    assert seconds <= sync.last_outcome.seconds
