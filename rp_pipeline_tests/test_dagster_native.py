"""The project as a Dagster user expects it: one step per cycle, standard table metadata, cheap checks, `dg`.

Covers: a sync cycle is one step, with a materialization per table; each materialization carries
`dagster/row_count` (exact, kept by the sync), `dagster/table_name` (database.schema.table) and
`dagster/column_schema` (types, nullability, identity, foreign keys); the same data synced again
under a second origin fails `identity_is_unique` (content duplicates), as does a missing unique
index; a cycle with nothing new emits no check results; a table left unsynced goes WARN then FAIL
under its freshness policy (derived from SYNC_INTERVAL); the backlog sensor requests a run only
above its threshold and never while a run is in flight; `dg check defs` and `dg list defs` pass
from the repository root.
"""

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg

from rp_pipeline import defs
from rp_pipeline.assets import redis_to_postgres
from rp_pipeline.entities import ENTITIES
from rp_pipeline.resources import SyncResource, resources_for
from rp_pipeline.schedules import JOB_NAME, build_backlog_sensor
from rp_pipeline.settings import schedule_interval_seconds

REPO = Path(__file__).resolve().parents[1]
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def fill(writer, runs: int = 2, predictions: int = 30) -> None:
    model = writer.create_model("ResNet50-Redis")
    version = writer.create_model_version(model, "v1")
    dataset = writer.create_dataset("ImageNet-Redis")
    for r in range(runs):
        run = writer.create_training_run(version, dataset_id=dataset, run_name=f"r{r}")
        writer.log_hyperparameters(run, {"lr": 0.01})
        writer.log_metric(run, "loss", 0.5, epoch=1, split="val")
    experiment = writer.create_experiment("exp")
    writer.add_experiment_run(experiment, run, variant_name="A")
    writer.log_predictions(
        [
            {"model_version_id": version, "input_data": {"x": i}, "output_data": [i]}
            for i in range(predictions)
        ]
    )


def run_job(config, instance=None):
    instance = instance or dg.DagsterInstance.ephemeral()
    result = defs.resolve_job_def(JOB_NAME).execute_in_process(
        resources=resources_for(config), instance=instance, raise_on_error=False, run_config=QUIET
    )
    return result, instance


def test_a_sync_cycle_is_one_step_with_a_materialization_per_table(writer, sync_config):
    fill(writer)
    result, instance = run_job(sync_config)
    assert result.success
    steps = [
        e.step_key for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_START
    ]
    assert steps == ["redis_to_postgres"]
    materialized = [
        m.asset_key.to_user_string()
        for m in result.asset_materializations_for_node("redis_to_postgres")
    ]
    assert sorted(materialized) == sorted(spec.name for spec in ENTITIES)
    assert instance.get_run_by_id(result.run_id).tags["rp_pipeline/predictions"] == "30"


def test_a_long_load_logs_its_progress_as_it_goes_and_a_quiet_table_logs_nothing(
    writer, sync_config, monkeypatch
):
    import dataclasses

    from rp_pipeline import engine

    fill(writer, predictions=2_000)
    # Every chunk of 200 counts as a long wait: each logs a progress line.
    monkeypatch.setattr(engine, "PROGRESS_EVERY_SECONDS", 0.0)
    result, instance = run_job(dataclasses.replace(sync_config, chunk_size=200))
    assert result.success
    logs = instance.all_logs(result.run_id)
    progress = [
        i
        for i, e in enumerate(logs)
        if "predictions: " in e.user_message and "so far" in e.user_message
    ]
    # One event per progress line, as the load goes: not one message at the end.
    assert len(progress) >= 5
    (materialized,) = [
        i
        for i, e in enumerate(logs)
        if e.dagster_event
        and e.dagster_event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION
        and e.dagster_event.asset_key.to_user_string() == "predictions"
    ]
    assert max(progress) < materialized

    monkeypatch.setattr(engine, "PROGRESS_EVERY_SECONDS", 10.0)
    idle, instance = run_job(sync_config, instance)
    assert idle.success
    lines = [e.user_message for e in instance.all_logs(idle.run_id) if not e.dagster_event]
    assert not [line for line in lines if "Syncing" in line], lines
    assert len(idle.asset_materializations_for_node("redis_to_postgres")) == len(ENTITIES)


def test_every_materialization_carries_the_standard_table_metadata(
    writer, sync_config, pg_conn, postgres_url
):
    fill(writer)
    run_job(sync_config)
    writer.log_predictions(
        [{"model_version_id": 1, "input_data": {"x": -i}, "output_data": [i]} for i in range(5)]
    )
    result, _ = run_job(sync_config)  # the counts are kept across cycles, not recounted
    database = postgres_url.rsplit("/", 1)[1]
    for materialization in result.asset_materializations_for_node("redis_to_postgres"):
        table = materialization.asset_key.to_user_string()
        metadata = materialization.metadata
        count = pg_conn.execute(
            f'SELECT count(*) FROM "{sync_config.schema}"."{table}"'
        ).fetchone()[0]
        assert metadata["dagster/row_count"].value == count, table
        assert metadata["dagster/table_name"].value == f"{database}.{sync_config.schema}.{table}"
        schema = metadata["dagster/column_schema"].value
        actual = {
            name: (kind, nullable == "YES")
            for name, kind, nullable in pg_conn.execute(
                "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
                "WHERE table_schema = %s AND table_name = %s",
                (sync_config.schema, table),
            ).fetchall()
        }
        declared = {c.name: (c.type, c.constraints.nullable) for c in schema.columns}
        assert declared == actual, table
        spec = next(s for s in ENTITIES if s.name == table)
        assert any(f"unique ({', '.join(spec.natural_key)}" in c for c in schema.constraints.other)
        for parent in spec.parents:
            assert any(
                c.startswith(f"foreign key ({parent.column}) → {parent.entity}.id ON DELETE")
                for c in schema.constraints.other
            )
    predictions = next(
        m
        for m in result.asset_materializations_for_node("redis_to_postgres")
        if m.asset_key.to_user_string() == "predictions"
    ).metadata
    assert predictions["dagster/row_count"].value == 35 and predictions["rows_inserted"].value == 5


def test_the_same_data_under_a_second_origin_fails_the_identity_check(
    writer, sync_config, redis_client, key_prefix
):
    fill(writer)
    first, _ = run_job(sync_config)
    assert first.success and all(e.passed for e in first.get_asset_check_evaluations())
    # A copy of the data set under a marker of its own (a restored backup whose marker was deleted, as
    # the README advises) is another origin: its runs and predictions load again, as copies.
    redis_client.delete(f"{key_prefix}rp_pipeline:generation")
    second, _ = run_job(sync_config)
    evaluations = {
        (e.asset_key.to_user_string(), e.check_name): e
        for e in second.get_asset_check_evaluations()
    }
    # Rows identified by origin are copied, not merged. (The metric points point at the copied runs, so
    # their content differs; the runs themselves are the duplicates.)
    for table in ("training_runs", "predictions"):
        failed = evaluations[(table, "identity_is_unique")]
        assert failed.passed is False, table
        assert failed.metadata["content_duplicates"].value > 0
    assert evaluations[("predictions", "foreign_keys_resolve")].passed


def test_a_prediction_logged_twice_fails_the_identity_check_in_a_small_cycle(
    writer, sync_config, redis_client, key_prefix
):
    fill(writer)
    run_job(sync_config)
    # The same record again under a new id: one new row among many, its content already there.
    original = redis_client.hgetall(f"{key_prefix}prediction:1")
    copy = redis_client.incr(f"{key_prefix}counter:prediction")
    redis_client.hset(f"{key_prefix}prediction:{copy}", mapping={**original, "id": str(copy)})
    result, _ = run_job(sync_config)
    evaluations = {
        (e.asset_key.to_user_string(), e.check_name): e
        for e in result.get_asset_check_evaluations()
    }
    failed = evaluations[("predictions", "identity_is_unique")]
    assert failed.passed is False
    assert failed.metadata["content_duplicates"].value == 1


def _checks_alone(config, table: str):
    only_checks = dg.define_asset_job(
        f"only_{table}_checks", selection=dg.AssetSelection.checks_for_assets(table)
    )
    project = dg.Definitions(
        assets=[redis_to_postgres], jobs=[only_checks], resources=resources_for(config)
    )
    result = project.resolve_job_def(f"only_{table}_checks").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False, run_config=QUIET
    )
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_an_enforced_foreign_key_vouches_for_the_rows_and_a_missing_one_has_them_looked_up(
    writer, sync_config, pg_conn
):
    fill(writer)
    first, _ = run_job(sync_config)
    enforced = next(
        e
        for e in first.get_asset_check_evaluations()
        if (e.asset_key.to_user_string(), e.check_name) == ("predictions", "foreign_keys_resolve")
    )
    assert enforced.passed
    assert enforced.metadata["rows_checked"].value == 30
    assert enforced.metadata["rows_looked_up"].value == 0  # Postgres already refused any orphan
    assert "fk_predictions_model_version_id" in enforced.metadata["enforced_by"].value
    # Without the constraint, a deleted version leaves the predictions the sync wrote dangling.
    schema = sync_config.schema
    pg_conn.execute(
        f'ALTER TABLE "{schema}".predictions DROP CONSTRAINT fk_predictions_model_version_id'
    )
    pg_conn.execute(f'DELETE FROM "{schema}".model_versions')
    failed = _checks_alone(sync_config, "predictions")["foreign_keys_resolve"]
    assert failed.passed is False
    assert failed.metadata["not_enforced"].value == "model_version_id"
    assert failed.metadata["rows_looked_up"].value == 30
    assert failed.metadata["dangling_model_version_id"].value == 30


def test_a_missing_unique_index_fails_the_identity_check(writer, sync_config, pg_conn):
    writer.create_model("ResNet50-Redis")
    run_job(sync_config)
    pg_conn.execute(f'DROP INDEX "{sync_config.schema}".uq_models_identity')
    only_checks = dg.define_asset_job(
        "only_model_checks", selection=dg.AssetSelection.checks_for_assets("models")
    )
    project = dg.Definitions(
        assets=[redis_to_postgres], jobs=[only_checks], resources=resources_for(sync_config)
    )
    result = project.resolve_job_def("only_model_checks").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False, run_config=QUIET
    )
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not result.get_asset_materialization_events()  # checks run alone: nothing synced
    assert evaluations["identity_is_unique"].passed is False
    assert "missing or invalid" in evaluations["identity_is_unique"].metadata["unique_index"].value
    assert evaluations["reconciles_with_redis"].passed is True


def test_a_cycle_with_nothing_new_emits_no_check_results(writer, sync_config):
    fill(writer)
    run_job(sync_config)
    quiet, _ = run_job(sync_config)
    assert quiet.success
    assert len(quiet.get_asset_materialization_events()) == len(ENTITIES)
    assert quiet.get_asset_check_evaluations() == []


def _freshness(instance, key: str, seconds_from_now: float):
    from dagster._core.definitions import freshness_evaluator
    from dagster._core.loader import LoadingContextForTest

    node = defs.resolve_asset_graph().get(dg.AssetKey(key))
    evaluator = freshness_evaluator.TimeWindowFreshnessPolicyEvaluator()
    original = freshness_evaluator.get_current_timestamp
    freshness_evaluator.get_current_timestamp = lambda: time.time() + seconds_from_now
    try:
        return asyncio.run(
            evaluator.evaluate_freshness(LoadingContextForTest(instance), node)
        ).value
    finally:
        freshness_evaluator.get_current_timestamp = original


def test_a_table_not_synced_for_two_intervals_warns_and_after_three_fails(writer, sync_config):
    writer.create_model("ResNet50-Redis")
    _, instance = run_job(sync_config)
    interval = schedule_interval_seconds()
    policy = defs.resolve_asset_graph().get(dg.AssetKey("models")).freshness_policy
    assert policy.warn_window.to_timedelta().total_seconds() == 2 * interval
    assert policy.fail_window.to_timedelta().total_seconds() == 3 * interval
    assert _freshness(instance, "models", 0) == "PASS"
    assert _freshness(instance, "models", 2.5 * interval) == "WARN"
    assert _freshness(instance, "models", 3.5 * interval) == "FAIL"


def test_freshness_is_enabled_on_the_instance():
    import yaml

    assert yaml.safe_load((REPO / "dagster.yaml").read_text())["freshness"] == {"enabled": True}


def _evaluate(sensor, instance, redis_url, key_prefix):
    context = dg.build_sensor_context(
        instance=instance,
        resources={"sync": SyncResource(redis_url=redis_url, redis_key_prefix=key_prefix)},
    )
    return sensor(context)


def test_backlog_sensor_requests_a_run_only_above_its_threshold(
    writer, sync_config, redis_url, key_prefix
):
    sensor = build_backlog_sensor(trigger=20)
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    model = writer.create_model("m")
    version = writer.create_model_version(model, "v1")
    writer.log_predictions(
        [{"model_version_id": version, "input_data": [i], "output_data": [i]} for i in range(10)]
    )
    instance = dg.DagsterInstance.ephemeral()
    below = _evaluate(sensor, instance, redis_url, key_prefix)
    assert isinstance(below, dg.SkipReason) and "12 records wait" in below.skip_message
    writer.log_predictions(
        [{"model_version_id": version, "input_data": [i], "output_data": [i]} for i in range(10)]
    )
    above = _evaluate(sensor, instance, redis_url, key_prefix)
    assert isinstance(above, dg.RunRequest) and above.tags["rp_pipeline/backlog"] == "22"
    run_job(sync_config, instance)  # synced: nothing waits any more
    after = _evaluate(sensor, instance, redis_url, key_prefix)
    assert isinstance(after, dg.SkipReason) and "0 records wait" in after.skip_message


def test_backlog_sensor_never_requests_while_a_run_is_in_flight(writer, redis_url, key_prefix):
    sensor = build_backlog_sensor(trigger=0)
    writer.create_model("m")
    instance = dg.DagsterInstance.ephemeral()
    job = defs.resolve_job_def(JOB_NAME)
    run = instance.create_run_for_job(job, run_config={}, status=dg.DagsterRunStatus.STARTED)
    waiting = _evaluate(sensor, instance, redis_url, key_prefix)
    assert isinstance(waiting, dg.SkipReason) and run.run_id in waiting.skip_message
    instance.report_run_canceled(run)
    assert isinstance(_evaluate(sensor, instance, redis_url, key_prefix), dg.RunRequest)


def _dg(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "DAGSTER_POSTGRES_URL")}
    return subprocess.run(
        [str(Path(sys.executable).with_name("dg")), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_dg_check_defs_passes_from_the_repository_root():
    done = _dg("check", "defs")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_dg_list_defs_shows_the_tables_jobs_schedule_and_sensors():
    done = _dg("list", "defs", "--json")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    listed = json.loads(done.stdout[done.stdout.index("{") :])
    assets = {a["asset_key"] for a in listed["assets"]}
    assert assets == {spec.name for spec in ENTITIES} | {"redis_cache_warm"}
    assert {j["name"] for j in listed["jobs"]} >= {JOB_NAME, "redis_cache_warm_job"}
    assert {s["name"] for s in listed["schedules"]} == {"redis_to_postgres_sync_schedule"}
    assert {s["name"] for s in listed["sensors"]} == {"redis_backlog_sensor", "warm_on_flush"}
    assert {c["name"] for c in listed["asset_checks"]} == {
        "identity_is_unique",
        "foreign_keys_resolve",
        "reconciles_with_redis",
        "no_rejected_records",
    }
