"""The Redis ACLs in the README's Security section are enough, and no more than needed.

Covers, each user made from the README's `ACL SETUSER` line as written (renamed, with the
test's prefix): a full cycle of the Dagster job (nine entities and their checks) as the sync's
user with retention off; retention deleting old predictions and metric points under the
retention line; retention without that line failing with the rule to add, nothing silently
kept; reads refused by a narrower ACL failing the entity instead of rejecting its records;
and the hot-path writer doing everything it offers as its own user, which cannot delete.
"""

from __future__ import annotations

import dataclasses

import pytest
import redis

from rp_pipeline.connections import connect_postgres, connect_redis
from rp_pipeline.engine import sync_all
from rp_pipeline.errors import PermissionProblem
from rp_pipeline.schema import migrate
from rp_pipeline.writer import RedisWriter

from .acl_support import RETENTION_ACL, SYNC_ACL, WRITER_ACL, acl_users
from .faults import TABLES as NINE
from .faults import fill, write_prediction_by_hand
from .test_retention import old, write_point


@pytest.fixture
def users(redis_url, key_prefix):
    with acl_users(redis_url, key_prefix) as made:
        yield made


@pytest.fixture
def in_work_dir(work_dir, monkeypatch):
    for name in ("DAGSTER_HOME", "DAGSTER_POSTGRES_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(work_dir)
    return work_dir


def sync_as(url: str, config, **overrides):
    config = dataclasses.replace(config, redis_url=url, **overrides)
    migrate(config)
    client, conn = connect_redis(config), connect_postgres(config)
    try:
        return sync_all(client, conn, config)
    finally:
        client.close()
        conn.close()


def counts(pg_conn) -> dict[str, int]:
    return {t: pg_conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in NINE}


def test_a_full_cycle_runs_as_the_readme_sync_user(
    users, writer, key_prefix, sync_config, pg_conn, in_work_dir
):
    from rp_pipeline import RedisPgSync

    fill(writer, models=2, runs_per_version=2, points=3, predictions=50)
    _user, url = users.create(SYNC_ACL)

    outcome = RedisPgSync.from_config(dataclasses.replace(sync_config, redis_url=url)).sync_once()

    assert outcome.success and outcome.failures == [] and outcome.stats["errors"] == 0
    assert counts(pg_conn) == {
        "models": 2,
        "model_versions": 2,
        "datasets": 1,
        "training_runs": 4,
        "hyperparameters": 8,
        "metrics": 12,
        "experiments": 1,
        "experiment_runs": 4,
        "predictions": 50,
    }
    as_sync_user = redis.Redis.from_url(url)
    try:  # read-mostly for real: the layout cannot be written or deleted with these rights
        for write in (
            lambda: as_sync_user.hset(f"{key_prefix}model:1", "name", "x"),
            lambda: as_sync_user.delete(f"{key_prefix}model:1"),
            lambda: as_sync_user.set(f"{key_prefix}counter:model", 0),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                write()
    finally:
        as_sync_user.close()


def test_retention_works_under_the_readme_retention_line(
    users, writer, redis_client, key_prefix, sync_config, pg_conn
):
    setup = fill(writer, models=1, runs_per_version=1, points=0, predictions=5)
    olds = [
        write_prediction_by_hand(redis_client, key_prefix, setup["versions"][0], old())
        for _ in range(10)
    ]
    for step in range(4):
        write_point(redis_client, key_prefix, setup["runs"][0], step, old())
    _, url = users.create(SYNC_ACL, RETENTION_ACL)

    results = sync_as(url, sync_config, retention_hours={"predictions": 1, "metrics": 1})

    assert results["predictions"].deleted == 10 and results["metrics"].deleted == 4
    assert not any(redis_client.exists(f"{key_prefix}prediction:{i}") for i in olds)
    assert redis_client.zcard(f"{key_prefix}metric:{setup['runs'][0]}:loss:train") == 0
    assert counts(pg_conn)["predictions"] == 15 and counts(pg_conn)["metrics"] == 4


def test_retention_without_its_line_names_the_rule_to_add(
    users, writer, redis_client, key_prefix, sync_config
):
    versions = fill(writer, models=1, runs_per_version=0, points=0, predictions=0)["versions"]
    olds = [
        write_prediction_by_hand(redis_client, key_prefix, versions[0], old()) for _ in range(3)
    ]
    user, url = users.create(SYNC_ACL)

    with pytest.raises(PermissionProblem) as refused:
        sync_as(url, sync_config, retention_hours={"predictions": 1})

    message = str(refused.value)
    assert f"refused user '{user}' SCRIPT|EXISTS on {key_prefix}prediction:*" in message
    assert f"ACL SETUSER {user} +evalsha +script|load +script|exists +del +zrem" in message
    assert "retries" not in message
    assert all(redis_client.exists(f"{key_prefix}prediction:{i}") for i in olds)


def test_reads_refused_by_a_narrower_acl_fail_the_entity_instead_of_rejecting_records(
    users, writer, key_prefix, sync_config, pg_conn
):
    fill(writer, models=1, runs_per_version=1, points=0, predictions=0)
    # Reads of models and counters only: the training runs' hashes are refused.
    user, url = users.create(
        "ACL SETUSER x reset on >CHANGE-ME %R~aidb:model:* %R~aidb:counter:* %R~aidb:idx:* "
        "%RW~aidb:rp_pipeline:* +@read +@connection +set"
    )

    with pytest.raises(PermissionProblem) as refused:
        sync_as(url, sync_config)

    assert f"refused user '{user}' " in str(refused.value)
    assert f"ACL SETUSER {user} +@read %R~{key_prefix}*" in str(refused.value)
    rejected = pg_conn.execute(
        f'SELECT count(*) FROM "{sync_config.sync_schema}".rejected_records'
    ).fetchone()[0]
    assert rejected == 0


def test_the_writer_works_under_its_documented_acl_and_cannot_delete(
    users, key_prefix, redis_client, run_sync, pg_conn
):
    import rp_pipeline.writer

    assert (
        WRITER_ACL in rp_pipeline.writer.__doc__
    )  # the writer documents the same ACL as the README
    _, url = users.create(WRITER_ACL)
    with RedisWriter.from_url(url, key_prefix=key_prefix) as writer:
        fill(writer, models=2, runs_per_version=2, points=3, predictions=1200)  # two script batches
        writer.log_prediction(1, {"x": 1}, {"y": 2}, confidence=0.5)
        assert writer.update_training_run(1) is True  # no fields: EXISTS only
        stats = writer.get_statistics()
        for forbidden in (
            lambda: writer.client.delete(f"{key_prefix}model:1"),
            lambda: writer.client.flushdb(),
            lambda: writer.client.eval("return 1", 0),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                forbidden()

    assert stats == {
        "models": 2,
        "model_versions": 2,
        "datasets": 1,
        "training_runs": 4,
        "completed_runs": 4,
        "experiments": 1,
        "predictions": 1201,
    }
    run_sync()
    assert counts(pg_conn) == {
        "models": 2,
        "model_versions": 2,
        "datasets": 1,
        "training_runs": 4,
        "hyperparameters": 8,
        "metrics": 12,
        "experiments": 1,
        "experiment_runs": 4,
        "predictions": 1201,
    }
