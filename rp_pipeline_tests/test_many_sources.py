"""Many sources: REDIS_URL naming several Redis data sets, synced into one Postgres.

Covers: the REDIS_URL format (URLs separated by commas, `key_prefix=` and `label=` per URL) and its
refusals; three sources (two prefixes in one Redis db and a second db) synced through the API with
exact rows per source and each source's check evaluations in a table's check history; the Dagster
job partitioned by source only when there are several; one RunRequest per source at a schedule tick
and from the backlog sensor; a source that is down failing its own run only (API and CLI); models of
the same name in two sources converging on one row when both sources load at the same moment, that
row holding the values of the last source to sync; and with one source, the job's source tag on a
run queued from the UI.
"""

from __future__ import annotations

import threading
import uuid

import dagster as dg
import pytest

from rp_pipeline.settings import ConfigError, SyncConfig

from .cli_support import clean_env, run_cli

DOWN_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1


def test_redis_url_names_several_sources_with_their_prefixes_and_labels():
    config = SyncConfig.from_env(
        {
            "REDIS_URL": "redis://127.0.0.1:6379/3 , redis://:s3cr%3Ft@10.0.0.2:6380/0?key_prefix=eu:"
            "&label=eu-west,rediss://cache:6390/2?ssl_cert_reqs=none&key_prefix=us:",
            "REDIS_KEY_PREFIX": "app:",
        }
    )
    assert [(s.label, s.redis_url, s.key_prefix) for s in config.sources] == [
        ("127.0.0.1-6379-3-app", "redis://127.0.0.1:6379/3", "app:"),
        ("eu-west", "redis://:s3cr%3Ft@10.0.0.2:6380/0", "eu:"),
        ("cache-6390-2-us", "rediss://cache:6390/2?ssl_cert_reqs=none", "us:"),
    ]
    one = config.for_source("eu-west")  # what the engine runs with: one plain URL for redis-py
    assert (one.redis_url, one.key_prefix, one.labels) == (
        "redis://:s3cr%3Ft@10.0.0.2:6380/0",
        "eu:",
        ("eu-west",),
    )
    assert SyncConfig.from_env(config.to_env()) == config
    # One source, as today: the URL as written, the default label, no options left over.
    single = SyncConfig(redis_url="redis://127.0.0.1:6379/0")
    assert single.redis_url == "redis://127.0.0.1:6379/0" and single.labels == ("127.0.0.1-6379-0",)
    assert single.for_source() is single
    with pytest.raises(
        ConfigError, match=r"unknown source 'nope'.*127\.0\.0\.1-6379-3-app, eu-west"
    ):
        config.select_sources(["nope"])


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://h:6379/0,redis://h/0", "names the same Redis and key prefix 'aidb:' twice"),
        ("redis://a/0?label=x,redis://b/0?label=x", "two sources labelled 'x'"),
        ("redis://a/0?label=no/slash", "'no/slash' is not a valid source label"),
        ("redis://a/0,redis://b/zero", "database 'zero' is not a number"),
        ("redis://a/0,http://b/0", "more than one address in one URL"),
    ],
)
def test_a_redis_url_list_that_cannot_work_is_refused_with_one_line(url, expected):
    with pytest.raises(ConfigError, match=expected.replace("?", r"\?")) as refused:
        SyncConfig(redis_url=url)
    assert "\n" not in str(refused.value)


@pytest.fixture
def other_db_url(redis_url):
    """A second Redis database on the same server: a second Redis source."""
    base, _, db = redis_url.rpartition("/")
    return f"{base}/{int(db) % 15 + 1}"


@pytest.fixture
def three_sources(redis_url, other_db_url, key_prefix):
    """(REDIS_URL naming three sources, {label: (url, prefix)}); their keys are removed afterwards."""
    import redis

    second = f"{key_prefix}b:"
    urls = {
        "first": (redis_url, key_prefix),
        "second": (redis_url, second),
        "third": (other_db_url, key_prefix),
    }
    yield (
        ",".join(
            f"{url}?key_prefix={prefix}&label={label}" for label, (url, prefix) in urls.items()
        ),
        urls,
    )
    for url, prefix in urls.values():
        client = redis.Redis.from_url(url)
        keys = list(client.scan_iter(match=f"{prefix}*", count=5000))
        if keys:
            client.delete(*keys)
        client.close()


def fill(url: str, prefix: str, models: list[str], predictions: int) -> None:
    """Each model with version "1"; `predictions` predictions on the first model's version."""
    from rp_pipeline.writer import RedisWriter

    writer = RedisWriter.from_url(url, key_prefix=prefix)
    versions = [writer.create_model_version(writer.create_model(m), "1") for m in models]
    writer.log_predictions(
        [
            {"model_version_id": versions[0], "input_data": [i], "output_data": [i]}
            for i in range(predictions)
        ]
    )
    writer.close()


def counts_by_origin(conn, schema: str, table: str) -> list[int]:
    return sorted(
        n
        for (n,) in conn.execute(
            f'SELECT count(*) FROM "{schema}".{table} GROUP BY origin_source'
        ).fetchall()
    )


def test_three_sources_sync_through_the_api_with_exact_rows_per_source(
    three_sources, postgres_url, pg_schemas, pg_conn, work_dir, monkeypatch
):
    from rp_pipeline import RedisPgSync

    monkeypatch.chdir(work_dir)
    for name in ("DAGSTER_HOME", "DAGSTER_POSTGRES_URL", "SYNC_INTERVAL", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    url, sources = three_sources
    fill(*sources["first"], ["shared", "only-first"], 3)
    fill(*sources["second"], ["shared"], 5)
    fill(*sources["third"], ["shared", "only-third"], 7)
    schema, sync_schema = pg_schemas
    sync = RedisPgSync(
        redis_url=url, postgres_url=postgres_url, schema=schema, sync_schema=sync_schema
    )

    stats = sync.full_sync()

    assert stats["predictions"] == 15 and stats["errors"] == 0
    by_source = sync.last_outcome.by_source
    assert {label: o.stats["predictions"] for label, o in by_source.items()} == {
        "first": 3,
        "second": 5,
        "third": 7,
    }
    assert all(o.success for o in by_source.values())
    models = pg_conn.execute(f'SELECT name FROM "{schema}".models ORDER BY name').fetchall()
    assert models == [("only-first",), ("only-third",), ("shared",)]  # "shared" converged
    assert counts_by_origin(pg_conn, schema, "predictions") == [3, 5, 7]  # one origin each
    [(versions,)] = pg_conn.execute(
        f'SELECT count(*) FROM "{schema}".model_versions v JOIN "{schema}".models m '
        "ON m.id = v.model_id WHERE m.name = 'shared'"
    ).fetchall()
    assert versions == 1  # ("shared", "1") is one version, whichever source wrote it
    # Each run was a partition of the job, tagged with its source.
    from rp_pipeline.instance_storage import sync_instance

    with sync_instance() as instance:
        runs = instance.get_runs(dg.RunsFilter(job_name="redis_to_postgres_sync"))
        assert sorted(r.tags["rp_pipeline/source"] for r in runs) == ["first", "second", "third"]
        assert sorted(r.tags["dagster/partition"] for r in runs) == ["first", "second", "third"]
        # A table's check history (its Checks tab) holds one evaluation per source: each names
        # its run, whose partition is the source, and checked that run's own materialization.
        history = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey("predictions"), "no_rejected_records"), limit=10
        )
        partition_of = {r.run_id: r.tags["dagster/partition"] for r in runs}
        assert sorted(partition_of[record.run_id] for record in history) == [
            "first",
            "second",
            "third",
        ]
        for record in history:
            evaluation = record.event.dagster_event.event_specific_data
            assert evaluation.passed and evaluation.target_materialization_data.run_id == (
                record.run_id
            )
    # Syncing one source by name runs that source only.
    fill(*sources["second"], ["shared"], 2)
    assert sync.full_sync(sources=["second"])["predictions"] == 2
    assert list(sync.last_outcome.by_source) == ["second"]
    with pytest.raises(ConfigError, match="unknown source 'fourth'"):
        sync.full_sync(sources=["fourth"])


def test_a_source_that_is_down_fails_its_own_run_only(
    redis_url, key_prefix, postgres_url, pg_schemas, pg_conn, work_dir, monkeypatch
):
    from rp_pipeline import RedisPgSync

    monkeypatch.chdir(work_dir)
    for name in ("DAGSTER_HOME", "DAGSTER_POSTGRES_URL", "SYNC_INTERVAL", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    fill(redis_url, key_prefix, ["m"], 4)
    schema, sync_schema = pg_schemas
    url = f"{redis_url}?label=up,{DOWN_URL}?label=down"
    sync = RedisPgSync(
        redis_url=url,
        postgres_url=postgres_url,
        key_prefix=key_prefix,
        schema=schema,
        sync_schema=sync_schema,
    )

    outcome = sync.sync_once()

    assert not outcome.success
    assert outcome.by_source["up"].success and outcome.by_source["up"].stats["predictions"] == 4
    assert not outcome.by_source["down"].success
    assert [f for f in outcome.failures if f.startswith("down: ")] == outcome.failures
    assert "127.0.0.1:1" in outcome.failures[0]
    assert pg_conn.execute(f'SELECT count(*) FROM "{schema}".predictions').fetchone() == (4,)

    # The CLI: the other source synced, exit code 1; --source picks the one that is up.
    env = clean_env(
        REDIS_URL=url,
        REDIS_KEY_PREFIX=key_prefix,
        POSTGRES_URL=postgres_url,
        POSTGRES_SCHEMA=schema,
        SYNC_SCHEMA=sync_schema,
    )
    fill(redis_url, key_prefix, ["m"], 1)
    done = run_cli(["--once"], env, work_dir)
    assert done.returncode == 1, done.stdout + done.stderr
    assert pg_conn.execute(f'SELECT count(*) FROM "{schema}".predictions').fetchone() == (5,)
    done = run_cli(["--once", "--source", "up"], env, work_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    done = run_cli(["--once", "--source", "elsewhere"], env, work_dir)
    assert done.returncode == 2 and "unknown source 'elsewhere'" in done.stderr


def test_the_sync_job_is_partitioned_by_source_only_with_several_sources():
    from rp_pipeline.assets import build_sync_assets
    from rp_pipeline.schedules import sync_job

    assert build_sync_assets(("one",), 300).partitions_def is None
    assert sync_job(("one",)).partitions_def is None
    partitions = sync_job(("a", "b", "c")).partitions_def
    assert partitions.get_partition_keys() == ["a", "b", "c"]
    checks = build_sync_assets(("a", "b"), 300).check_keys
    assert checks  # the checks run per partition, in the same step as their table


def test_the_code_location_has_one_partition_per_source_in_redis_url(work_dir):
    script = (
        "from rp_pipeline import defs\n"
        "job = defs.resolve_job_def('redis_to_postgres_sync')\n"
        "print(job.partitions_def.get_partition_keys() if job.partitions_def else None)\n"
    )
    import subprocess
    import sys

    def keys(redis_url: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", script],
            env=clean_env(REDIS_URL=redis_url),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.strip().splitlines()[-1]

    assert keys("redis://127.0.0.1:6379/0") == "None"
    assert keys("redis://127.0.0.1:6379/0,redis://127.0.0.1:6379/0?key_prefix=b:") == (
        "['127.0.0.1-6379-0', '127.0.0.1-6379-0-b']"
    )


QUEUE_FROM_JOB = """
import json
import dagster as dg
from dagster import __version__
from dagster._cli.job import _create_run
from dagster._cli.workspace.cli_target import (
    WorkspaceOpts, get_code_location_from_workspace, get_remote_job_from_remote_repo,
    get_remote_repository_from_code_location, get_workspace_from_cli_opts)

instance = dg.DagsterInstance.get()
opts = WorkspaceOpts(module_name=("rp_pipeline",))
with get_workspace_from_cli_opts(instance, version=__version__, workspace_opts=opts) as workspace:
    location = get_code_location_from_workspace(workspace, None)
    repo = get_remote_repository_from_code_location(location, None)
    job = get_remote_job_from_remote_repo(repo, "redis_to_postgres_sync")
    run = _create_run(instance=instance, code_location=location, remote_repo=repo,
                      remote_job=job, run_config={}, tags={}, op_selection=None, run_id=None)
    instance.submit_run(run.run_id, workspace)
    queued = instance.get_run_by_id(run.run_id)
    print(json.dumps([queued.status.value, queued.tags.get("rp_pipeline/source")]))
"""


def test_with_one_source_a_run_launched_from_the_job_is_tagged_with_its_source_while_queued(
    work_dir,
):
    """The job carries the source tag, so a run launched from the UI is held by dagster.yaml's
    per-source limit like the schedule's; with several sources each run is tagged per partition."""
    import json
    import shutil
    import subprocess
    import sys

    from rp_pipeline.schedules import sync_job

    from .cli_support import REPO

    assert sync_job(("only",)).tags["rp_pipeline/source"] == "only"
    assert "rp_pipeline/source" not in sync_job(("a", "b")).tags
    home = work_dir / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")  # the queued run coordinator
    done = subprocess.run(
        [sys.executable, "-c", QUEUE_FROM_JOB],
        cwd=work_dir,
        env=clean_env(REDIS_URL="redis://127.0.0.1:6379/0?label=solo", DAGSTER_HOME=str(home)),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [line] = [line for line in done.stdout.splitlines() if line.startswith('["')]
    assert json.loads(line) == ["QUEUED", "solo"]


def test_a_schedule_tick_requests_one_run_per_source_skipping_one_in_flight():
    from rp_pipeline.schedules import build_sync_schedule, sync_job

    labels = ("first", "second", "third")
    schedule = build_sync_schedule(300, labels)
    with dg.instance_for_test() as instance:
        with dg.build_schedule_context(instance=instance) as context:
            requests = schedule(context)
        assert [r.partition_key for r in requests] == list(labels)
        assert [r.tags["rp_pipeline/source"] for r in requests] == list(labels)
        assert len({r.run_key for r in requests}) == 3
        instance.create_run_for_job(
            sync_job(labels),
            run_config={},
            status=dg.DagsterRunStatus.STARTED,
            tags={"dagster/partition": "second"},
        )
        with dg.build_schedule_context(instance=instance) as context:
            requests = schedule(context)
        assert [r.partition_key for r in requests] == ["first", "third"]
    # One source: one request, no partition, still tagged with its source.
    single = build_sync_schedule(300, ("only",))
    with dg.instance_for_test() as instance:
        with dg.build_schedule_context(instance=instance) as context:
            [request] = single(context)
        assert request.partition_key is None and request.tags["rp_pipeline/source"] == "only"


def test_the_backlog_sensor_requests_runs_for_the_sources_above_its_trigger_only(
    three_sources,
):
    from rp_pipeline.resources import SyncResource
    from rp_pipeline.schedules import build_backlog_sensor

    url, sources = three_sources
    fill(*sources["first"], ["m"], 10)  # 12 waiting: model, version, 10 predictions
    fill(*sources["third"], ["m"], 1)
    sensor = build_backlog_sensor(trigger=5, labels=("first", "second", "third"))
    context = dg.build_sensor_context(
        instance=dg.DagsterInstance.ephemeral(), resources={"sync": SyncResource(redis_url=url)}
    )
    [request] = sensor(context)
    assert request.partition_key == "first" and request.tags["rp_pipeline/backlog"] == "12"


# -- parents shared across sources ------------------------------------------------------------


def load(config, label, start, results, errors) -> None:
    """One source's sync, started together with the other's (`start`)."""
    from rp_pipeline.connections import connect_postgres, connect_redis
    from rp_pipeline.engine import sync_all

    one = config.for_source(label)
    client, conn = connect_redis(one), connect_postgres(one)
    try:
        start.wait()
        results[label] = sync_all(client, conn, one, run_id=uuid.uuid4().hex)
    except Exception as exc:  # reported by the test
        errors.append(exc)
    finally:
        client.close()
        conn.close()


def test_models_of_one_name_in_two_sources_converge_when_both_load_at_once(
    redis_url, key_prefix, sync_config, pg_conn
):
    """Two sources hold the same 400 models, created in opposite orders, and load at the same
    moment, four times over. Without a lock shared across sources for rows matched by name, their
    upserts locked each other's rows in opposite orders: "deadlock detected" at the first round."""
    from rp_pipeline.schema import migrate

    names = [f"model-{n:03d}" for n in range(400)]
    prefixes = (key_prefix, f"{key_prefix}b:")
    config = SyncConfig(
        redis_url=",".join(f"{redis_url}?key_prefix={p}" for p in prefixes),
        postgres_url=sync_config.postgres_url,
        schema=sync_config.schema,
        sync_schema=sync_config.sync_schema,
    )
    migrate(config)
    try:
        for round_ in range(4):
            fill(redis_url, prefixes[0], names, 2)
            fill(redis_url, prefixes[1], names[::-1], 3)
            start, errors, results = threading.Barrier(2), [], {}
            threads = [
                threading.Thread(target=load, args=(config, label, start, results, errors))
                for label in config.labels
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(120)
            assert not errors, errors  # no deadlock, no lock timeout, no duplicate key
            assert sorted(results) == sorted(config.labels)
            schema = config.schema
            assert pg_conn.execute(
                f'SELECT count(*), count(DISTINCT name) FROM "{schema}".models'
            ).fetchone() == (400, 400)
            assert pg_conn.execute(
                f'SELECT count(*) FROM "{schema}".model_versions'
            ).fetchone() == (400,)
            # Both sources' predictions hang off the one ("model-00", "1") version.
            assert pg_conn.execute(
                f'SELECT count(*), count(DISTINCT p.origin_source) FROM "{schema}".predictions p '
                f'JOIN "{schema}".model_versions v ON v.id = p.model_version_id '
                f"JOIN \"{schema}\".models m ON m.id = v.model_id WHERE m.name IN ('model-000', 'model-399')"
            ).fetchone() == (5 * (round_ + 1), 2)
    finally:
        import redis

        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(match=f"{prefixes[1]}*"))
        if keys:
            client.delete(*keys)
        client.close()


def test_a_model_in_two_sources_holds_the_values_of_the_last_source_to_sync(
    redis_url, key_prefix, postgres_url, pg_schemas, pg_conn
):
    """One row for the name; each source's sync writes its own values when they differ from the
    row's (counted as updated), so the row holds those of the source that synced last."""
    from rp_pipeline.connections import connect_postgres, connect_redis
    from rp_pipeline.engine import sync_all
    from rp_pipeline.schema import migrate
    from rp_pipeline.writer import RedisWriter

    schema, sync_schema = pg_schemas
    config = SyncConfig(
        redis_url=f"{redis_url}?key_prefix={key_prefix}&label=a,"
        f"{redis_url}?key_prefix={key_prefix}b:&label=b",
        postgres_url=postgres_url,
        schema=schema,
        sync_schema=sync_schema,
    )
    for label, prefix in (("a", key_prefix), ("b", f"{key_prefix}b:")):
        writer = RedisWriter.from_url(redis_url, key_prefix=prefix)
        writer.create_model("shared", description=f"from {label}", architecture=label)
        writer.close()

    def sync(label: str) -> tuple[int, int, int]:
        one = config.for_source(label)
        migrate(one)
        with connect_redis(one) as client, connect_postgres(one) as conn:
            models = sync_all(client, conn, one, run_id=uuid.uuid4().hex)["models"]
        return models.inserted, models.updated, models.unchanged

    def row() -> list[tuple]:
        return pg_conn.execute(
            f'SELECT description, architecture FROM "{schema}".models WHERE name = %s',
            ("shared",),
        ).fetchall()

    assert sync("a") == (1, 0, 0) and row() == [("from a", "a")]
    assert sync("b") == (0, 1, 0) and row() == [("from b", "b")]  # b synced last: b's values
    assert sync("b") == (0, 0, 1)  # b's values are the row's: nothing to write
    assert sync("a") == (0, 1, 0) and row() == [("from a", "a")]
