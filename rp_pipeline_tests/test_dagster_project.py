"""The Dagster project: its shape (assets, dependencies, checks, job, schedule) and real runs of the job.

Covers: one asset per table (one multi-asset) with dependencies along the foreign keys; four
checks per table (three without parents); the job and its schedule (running by default,
interval from SYNC_INTERVAL); a sync run in process reporting the guide's statistics (run tags)
and rejections (WARN check); and `dagster job execute` run twice from the repository root into an
empty database, holding exactly the expected rows.
"""

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from rp_pipeline import defs
from rp_pipeline.entities import ENTITIES, STAT_KEYS
from rp_pipeline.resources import resources_for
from rp_pipeline.schedules import JOB_NAME, cron_for

REPO = Path(__file__).resolve().parents[1]
CHECK_NAMES = {
    "identity_is_unique",
    "foreign_keys_resolve",
    "reconciles_with_redis",
    "no_rejected_records",
}


def test_one_asset_per_table_in_one_subsettable_multi_asset_plus_the_warm():
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == {spec.name for spec in ENTITIES} | {"redis_cache_warm"}
    tables = {defs.resolve_assets_def(spec.name) for spec in ENTITIES}
    assert len(tables) == 1 and next(iter(tables)).can_subset


def test_asset_dependencies_follow_the_foreign_keys():
    graph = defs.resolve_asset_graph()
    for spec in ENTITIES:
        parents = {key.to_user_string() for key in graph.get(dg.AssetKey(spec.name)).parent_keys}
        assert parents == {p.entity for p in spec.parents}, spec.name


def test_every_table_has_its_four_checks():
    graph = defs.resolve_asset_graph()
    for spec in ENTITIES:
        names = {key.name for key in graph.get_check_keys_for_assets({dg.AssetKey(spec.name)})}
        assert names == (CHECK_NAMES if spec.parents else CHECK_NAMES - {"foreign_keys_resolve"}), (
            spec.name
        )


def test_schedule_runs_the_job_every_five_minutes_and_is_on_by_default():
    schedule = defs.resolve_schedule_def("redis_to_postgres_sync_schedule")
    assert schedule.job_name == JOB_NAME
    assert schedule.cron_schedule == "*/5 * * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING


@pytest.mark.parametrize(
    "seconds,cron",
    [
        (60, "* * * * *"),
        (600, "*/10 * * * *"),
        (7200, "0 */2 * * *"),
        (90, "* * * * *"),
        (3600, "0 */1 * * *"),
    ],
)
def test_sync_interval_becomes_a_cron_schedule(seconds, cron):
    assert cron_for(seconds) == cron


def _fill(writer, redis_client, key_prefix):
    resnet = writer.create_model("ResNet50-Redis", description="first")
    writer.create_model("BERT-Redis")
    again = writer.create_model(
        "ResNet50-Redis", description="second"
    )  # same name: one Postgres row
    v1 = writer.create_model_version(resnet, "v1")
    v2 = writer.create_model_version(again, "v2")
    dataset = writer.create_dataset("ImageNet-Redis", size_bytes=150_000_000_000)
    run = writer.create_training_run(v1, dataset_id=dataset, run_name="r1")
    writer.log_hyperparameters(run, {"lr": 0.01, "batch": 32})
    for epoch in range(3):
        writer.log_metric(run, "val:loss", 1.0 / (epoch + 1), epoch=epoch, split="val")
    experiment = writer.create_experiment("exp-1")
    writer.add_experiment_run(experiment, run, variant_name="A")
    writer.log_predictions(
        [{"model_version_id": v2, "input_data": {"x": i}, "output_data": [i]} for i in range(50)]
    )
    bad = writer.log_prediction(v1, {"x": 1}, {"y": 1})
    redis_client.hset(f"{key_prefix}prediction:{bad}", "confidence", "abc")


def _counts(conn, schema):
    return {
        spec.name: conn.execute(f'SELECT count(*) FROM "{schema}"."{spec.name}"').fetchone()[0]
        for spec in ENTITIES
    }


EXPECTED_COUNTS = {
    "models": 2,
    "model_versions": 2,
    "datasets": 1,
    "training_runs": 1,
    "hyperparameters": 2,
    "metrics": 3,
    "experiments": 1,
    "experiment_runs": 1,
    "predictions": 50,
}


def test_job_in_process_reports_stats_and_rejections(
    writer, redis_client, key_prefix, sync_config, pg_conn
):
    _fill(writer, redis_client, key_prefix)
    job = defs.resolve_job_def(JOB_NAME)
    instance = dg.DagsterInstance.ephemeral()
    result = job.execute_in_process(resources=resources_for(sync_config), instance=instance)
    assert result.success  # a rejected record does not fail the sync
    assert _counts(pg_conn, sync_config.schema) == EXPECTED_COUNTS

    tags = instance.get_run_by_id(result.run_id).tags
    stats = {key: int(tags[f"rp_pipeline/{key}"]) for key in STAT_KEYS}
    assert stats == {
        "models": 2,
        "versions": 2,
        "datasets": 1,
        "runs": 1,
        "hyperparams": 2,
        "metrics": 3,
        "experiments": 1,
        "predictions": 50,
        "errors": 1,
    }
    predictions = next(
        m
        for m in result.asset_materializations_for_node("redis_to_postgres")
        if m.asset_key == dg.AssetKey("predictions")
    ).metadata
    assert predictions["rows_rejected"].value == 1
    assert predictions["rows_inserted"].value == 50

    evaluations = {
        (e.asset_key.to_user_string(), e.check_name): e
        for e in result.get_asset_check_evaluations()
    }
    warn = evaluations[("predictions", "no_rejected_records")]
    assert not warn.passed and warn.severity == dg.AssetCheckSeverity.WARN
    failed = [k for k, e in evaluations.items() if not e.passed and k[1] != "no_rejected_records"]
    assert failed == []


@pytest.fixture
def empty_database(postgres_url):
    """A database of its own, as a new user would point POSTGRES_URL at."""
    name = f"rp_e2e_{uuid.uuid4().hex[:8]}"
    base = postgres_url.rsplit("/", 1)[0]
    with psycopg.connect(f"{base}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield f"{base}/{name}"
    with psycopg.connect(f"{base}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_dagster_job_execute_twice_into_an_empty_database(
    writer, redis_client, key_prefix, redis_url, empty_database, tmp_path
):
    _fill(writer, redis_client, key_prefix)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": key_prefix,
        "POSTGRES_URL": empty_database,
        "DAGSTER_HOME": str(home),
    }
    env.pop("DAGSTER_POSTGRES_URL", None)
    dagster = str(Path(sys.executable).with_name("dagster"))
    for _ in range(2):
        # Not from the repository root: Dagster's CLI would let a quick start's ./.env there override `env`.
        done = subprocess.run(
            [dagster, "job", "execute", "-m", "rp_pipeline", "-j", JOB_NAME],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with psycopg.connect(empty_database) as conn:
        assert _counts(conn, "public") == EXPECTED_COUNTS
        models = conn.execute("SELECT name, description FROM models ORDER BY name").fetchall()
        assert models == [("BERT-Redis", None), ("ResNet50-Redis", "second")]
        versions = conn.execute(
            "SELECT m.name, v.version FROM model_versions v JOIN models m ON m.id = v.model_id "
            "ORDER BY v.version"
        ).fetchall()
        assert versions == [("ResNet50-Redis", "v1"), ("ResNet50-Redis", "v2")]
        assert conn.execute("SELECT size_bytes FROM datasets").fetchone()[0] == 150_000_000_000
        rejected = conn.execute("SELECT redis_key, reason FROM rp_sync.rejected_records").fetchall()
        assert len(rejected) == 1 and "confidence" in rejected[0][1]
        tables = {
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            ).fetchall()
        }
        assert tables == {
            spec.name for spec in ENTITIES
        }  # bookkeeping stays out of the analytics schema
