"""Retention: old records leave Redis only once Postgres durably holds them exactly as they are.

Covers: retention is off by default (nothing is deleted, however old); with
`retention_hours={"predictions": h}` only predictions that are in Postgres and
older than h are deleted, each with its index entry (no index member is left
without its hash), while newer ones, ones waiting for a parent, rejected ones,
ones written after the sync's watermark and ones changed (HSET) after their sync
stay; metric points likewise with `{"metrics": h}`; the deleted counts are
reported in `EntityResult.deleted` and the run history; Postgres keeps every row
(it is the archive) and later cycles neither duplicate nor lose any.
"""

from __future__ import annotations

import dataclasses
import json
import time

from rp_pipeline.connections import connect_postgres, connect_redis
from rp_pipeline.entities import PREDICTIONS
from rp_pipeline.strategies import apply_retention

from .faults import fill, utc_iso, write_prediction_by_hand

HOUR = 3600.0


def old(hours: float = 3.0) -> float:
    return time.time() - hours * HOUR


def write_point(
    client, prefix: str, run_id: int, step: int, at: float, name: str = "loss", split: str = "train"
):
    """A metric point as the layout stores it: a JSON member scored by its step."""
    member = json.dumps(
        {
            "epoch": None,
            "step": step,
            "metric_name": name,
            "metric_value": step / 10,
            "split": split,
            "timestamp": utc_iso(at),
        }
    )
    client.zadd(f"{prefix}metric:{run_id}:{name}:{split}", {member: step})
    return member


def prediction_keys(client, prefix: str) -> set[int]:
    return {
        int(k.rsplit(":", 1)[1])
        for k in client.scan_iter(match=f"{prefix}prediction:*", count=10_000)
    }


def index_members(client, prefix: str) -> dict[int, str]:
    members = {}
    for key in client.scan_iter(match=f"{prefix}idx:predictions:*", count=10_000):
        members.update({int(m): key for m in client.zrange(key, 0, -1)})
    return members


def assert_no_index_member_without_hash(client, prefix: str) -> None:
    orphans = set(index_members(client, prefix)) - prediction_keys(client, prefix)
    assert not orphans, f"index members without a hash: {sorted(orphans)[:10]}"


def count(pg_conn, table: str) -> int:
    return pg_conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_retention_is_off_by_default(writer, redis_client, key_prefix, run_sync, pg_conn):
    setup = fill(writer, models=1, runs_per_version=1, points=0, predictions=5)
    olds = [
        write_prediction_by_hand(redis_client, key_prefix, setup["versions"][0], old(24 * 30))
        for _ in range(10)
    ]
    for step in range(10):
        write_point(redis_client, key_prefix, setup["runs"][0], step, old(24 * 30))

    for _ in range(2):
        results = run_sync()
        assert results["predictions"].deleted == 0 and results["metrics"].deleted == 0
    assert set(olds) <= prediction_keys(redis_client, key_prefix)
    assert redis_client.zcard(f"{key_prefix}metric:{setup['runs'][0]}:loss:train") == 10
    assert count(pg_conn, "predictions") == 15 and count(pg_conn, "metrics") == 10


def test_only_old_predictions_held_by_postgres_are_deleted_with_their_index_entries(
    writer, redis_client, key_prefix, run_sync, pg_conn, pg_schemas
):
    versions = fill(writer, models=2, runs_per_version=0, predictions=20)["versions"]  # logged now
    olds = [
        write_prediction_by_hand(redis_client, key_prefix, versions[i % 2], old())
        for i in range(30)
    ]
    orphan = write_prediction_by_hand(
        redis_client, key_prefix, 999, old()
    )  # its version is not in Postgres
    invalid = write_prediction_by_hand(
        redis_client, key_prefix, versions[0], old(), input="{not json"
    )
    newish = write_prediction_by_hand(
        redis_client, key_prefix, versions[0], old(0.5)
    )  # younger than 1 h

    results = run_sync(retention_hours={"predictions": 1})

    assert results["predictions"].deleted == 30
    remaining = prediction_keys(redis_client, key_prefix)
    assert not set(olds) & remaining
    assert {orphan, invalid, newish} <= remaining and len(remaining) == 20 + 3
    assert set(index_members(redis_client, key_prefix)) == remaining
    assert_no_index_member_without_hash(redis_client, key_prefix)
    history = pg_conn.execute(
        f'SELECT deleted FROM "{pg_schemas[1]}".entity_runs WHERE entity = %s', ("predictions",)
    ).fetchall()
    assert history == [(30,)]

    # Postgres is the archive: the deleted records' rows stay, and later cycles add nothing twice.
    assert count(pg_conn, "predictions") == 20 + 30 + 1
    again = run_sync(retention_hours={"predictions": 1})
    assert again["predictions"].deleted == 0
    assert count(pg_conn, "predictions") == 51
    assert (
        pg_conn.execute("SELECT count(DISTINCT origin_redis_id) FROM predictions").fetchone()[0]
        == 51
    )


def test_prediction_changed_after_its_sync_is_not_deleted(
    writer, redis_client, key_prefix, run_sync, pg_conn
):
    versions = fill(writer, models=1, runs_per_version=0, predictions=0)["versions"]
    olds = [
        write_prediction_by_hand(redis_client, key_prefix, versions[0], old()) for _ in range(10)
    ]
    run_sync()  # synced without retention
    edited = olds[:2]
    for record_id in edited:  # a writer touches them after they were synced
        redis_client.hset(f"{key_prefix}prediction:{record_id}", "metadata", '{"reviewed": true}')

    results = run_sync(retention_hours={"predictions": 1})

    assert results["predictions"].deleted == 8
    assert prediction_keys(redis_client, key_prefix) == set(edited)
    assert set(index_members(redis_client, key_prefix)) == set(edited)
    assert count(pg_conn, "predictions") == 10


def test_prediction_written_after_the_synced_watermark_is_not_deleted(
    writer, redis_client, key_prefix, sync_config, run_sync, pg_conn
):
    versions = fill(writer, models=1, runs_per_version=0, predictions=0)["versions"]
    synced = [
        write_prediction_by_hand(redis_client, key_prefix, versions[0], old()) for _ in range(5)
    ]
    run_sync()
    late = write_prediction_by_hand(
        redis_client, key_prefix, versions[0], old()
    )  # old timestamp, never synced

    config = dataclasses.replace(sync_config, retention_hours={"predictions": 1})
    client, conn = connect_redis(config), connect_postgres(config)
    try:
        deleted = apply_retention(PREDICTIONS, client, conn, config)
    finally:
        client.close()
        conn.close()

    assert deleted == 5
    assert prediction_keys(redis_client, key_prefix) == {late}
    assert not set(synced) & set(index_members(redis_client, key_prefix))
    assert count(pg_conn, "predictions") == 5
    results = run_sync(
        retention_hours={"predictions": 1}
    )  # the next cycle syncs it, then may delete it
    assert results["predictions"].inserted == 1 and results["predictions"].deleted == 1
    assert count(pg_conn, "predictions") == 6


def test_only_old_metric_points_held_by_postgres_are_deleted(
    writer, redis_client, key_prefix, run_sync, pg_conn, pg_schemas
):
    run = fill(writer, models=1, runs_per_version=1, points=0, predictions=0)["runs"][0]
    for step in range(10):
        write_point(redis_client, key_prefix, run, step, old())
    fresh = {
        write_point(redis_client, key_prefix, run, 100 + step, time.time()) for step in range(5)
    }
    for step in range(
        3
    ):  # points of a run that is not in Postgres: they wait, and must not be deleted
        write_point(redis_client, key_prefix, 777, step, old())
    for step in range(4):  # another synced series, all old: it empties and vanishes
        write_point(redis_client, key_prefix, run, step, old(), name="acc", split="val:clean")

    results = run_sync(retention_hours={"metrics": 1})

    assert results["metrics"].deleted == 14
    assert set(redis_client.zrange(f"{key_prefix}metric:{run}:loss:train", 0, -1)) == fresh
    assert redis_client.zcard(f"{key_prefix}metric:777:loss:train") == 3
    assert not redis_client.exists(f"{key_prefix}metric:{run}:acc:val:clean")
    assert count(pg_conn, "metrics") == 19
    history = pg_conn.execute(
        f'SELECT deleted FROM "{pg_schemas[1]}".entity_runs WHERE entity = %s', ("metrics",)
    ).fetchall()
    assert history == [(14,)]

    again = run_sync(retention_hours={"metrics": 1})
    assert again["metrics"].deleted == 0 and count(pg_conn, "metrics") == 19
    assert (
        pg_conn.execute(
            "SELECT count(*) FROM (SELECT DISTINCT training_run_id, metric_name, split, step, "
            '"timestamp" FROM metrics) d'
        ).fetchone()[0]
        == 19
    )
