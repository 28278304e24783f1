"""Conflicts with rows the sync did not create, and the per-entity conflict policy.

Covers: a model inserted into Postgres by hand (origin_source NULL) before the
first sync, with the same name as a Redis model, is skipped by default (its values
untouched, counted as skipped and not as synced) while the Redis model's children
still attach to it; `conflict={"models": "overwrite"}` replaces its values;
`conflict={"models": "merge"}` fills only its NULL columns; and rows the sync
created itself are always updated when the Redis record changes.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from psycopg.rows import dict_row

from rp_pipeline.engine import stats_from_results
from rp_pipeline.schema import migrate

MODEL_COLUMNS = (
    "name, description, architecture, framework, task_type, input_shape, output_shape, created_at"
)
HAND_CREATED = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def rows(conn, sql: str, *params) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(sql, params or None).fetchall()


@pytest.fixture
def hand_model(sync_config, pg_conn):
    """An analyst's row, inserted before any sync: some columns set, some NULL."""
    migrate(sync_config)
    pg_conn.execute(
        "INSERT INTO models (name, description, framework, created_at) VALUES (%s, %s, %s, %s)",
        ("resnet", "curated by hand", "tensorflow", HAND_CREATED),
    )
    return rows(pg_conn, "SELECT * FROM models")[0]


@pytest.fixture
def redis_model(writer):
    model = writer.create_model(
        "resnet",
        description="from redis",
        architecture="ResNet-50",
        framework="pytorch",
        task_type="classification",
    )
    writer.create_model_version(model, "1.0")
    return model


def test_hand_inserted_model_is_skipped_by_default(hand_model, redis_model, run_sync, pg_conn):
    results = run_sync()

    assert rows(pg_conn, "SELECT * FROM models") == [hand_model]
    assert hand_model["origin_source"] is None
    assert (results["models"].inserted, results["models"].updated, results["models"].skipped) == (
        0,
        0,
        1,
    )
    assert stats_from_results(results.values())["models"] == 0
    assert stats_from_results(results.values())["errors"] == 0


def test_children_of_a_skipped_model_attach_to_the_existing_row(
    hand_model, redis_model, run_sync, pg_conn
):
    results = run_sync()

    assert rows(pg_conn, "SELECT model_id, version FROM model_versions") == [
        {"model_id": hand_model["id"], "version": "1.0"}
    ]
    assert stats_from_results(results.values())["versions"] == 1


def test_skipped_model_stays_untouched_on_later_cycles(
    hand_model, redis_model, redis_client, key_prefix, run_sync, pg_conn
):
    run_sync()
    redis_client.hset(f"{key_prefix}model:{redis_model}", "description", "changed in redis")

    results = run_sync()

    assert rows(pg_conn, "SELECT * FROM models") == [hand_model]
    assert results["models"].skipped == 1


def test_overwrite_policy_replaces_the_hand_inserted_values(
    hand_model, redis_model, run_sync, pg_conn
):
    results = run_sync(conflict={"models": "overwrite"})

    assert rows(pg_conn, f"SELECT id, {MODEL_COLUMNS} FROM models") == [
        {
            "id": hand_model["id"],
            "name": "resnet",
            "description": "from redis",
            "architecture": "ResNet-50",
            "framework": "pytorch",
            "task_type": "classification",
            "input_shape": None,
            "output_shape": None,
            "created_at": rows(pg_conn, "SELECT created_at FROM models")[0]["created_at"],
        }
    ]
    assert rows(pg_conn, "SELECT created_at <> %s AS replaced FROM models", HAND_CREATED) == [
        {"replaced": True}
    ]
    assert (results["models"].inserted, results["models"].updated) == (0, 1)
    assert stats_from_results(results.values())["models"] == 1


def test_merge_policy_fills_only_null_columns(hand_model, redis_model, run_sync, pg_conn):
    results = run_sync(conflict={"models": "merge"})

    assert rows(pg_conn, f"SELECT id, {MODEL_COLUMNS} FROM models") == [
        {
            "id": hand_model["id"],
            "name": "resnet",
            "description": "curated by hand",
            "architecture": "ResNet-50",
            "framework": "tensorflow",
            "task_type": "classification",
            "input_shape": None,
            "output_shape": None,
            "created_at": HAND_CREATED,
        }
    ]
    assert (results["models"].inserted, results["models"].updated) == (0, 1)


def test_merge_policy_changes_nothing_once_merged(hand_model, redis_model, run_sync, pg_conn):
    run_sync(conflict={"models": "merge"})
    merged = rows(pg_conn, "SELECT * FROM models")

    results = run_sync(conflict={"models": "merge"})

    assert rows(pg_conn, "SELECT * FROM models") == merged
    assert (results["models"].inserted, results["models"].updated) == (0, 0)


def test_policy_of_one_entity_leaves_the_others_on_skip(sync_config, pg_conn, writer, run_sync):
    migrate(sync_config)
    pg_conn.execute("INSERT INTO datasets (name, description) VALUES ('imagenet', 'by hand')")
    pg_conn.execute("INSERT INTO models (name, description) VALUES ('resnet', 'by hand')")
    writer.create_dataset("imagenet", description="from redis")
    writer.create_model("resnet", description="from redis")

    run_sync(conflict={"models": "overwrite"})

    assert rows(pg_conn, "SELECT description FROM datasets") == [{"description": "by hand"}]
    assert rows(pg_conn, "SELECT description FROM models") == [{"description": "from redis"}]


@pytest.mark.parametrize("policy", ["skip", "overwrite", "merge"])
def test_rows_created_by_the_sync_follow_redis_changes(
    policy, writer, redis_client, key_prefix, run_sync, pg_conn
):
    model = writer.create_model("bert", description="first", architecture="transformer")
    dataset = writer.create_dataset("wiki", description="first", num_samples=10)
    conflict = {"models": policy, "datasets": policy}
    run_sync(conflict=conflict)
    redis_client.hset(
        f"{key_prefix}model:{model}", mapping={"description": "second", "architecture": ""}
    )
    redis_client.hset(
        f"{key_prefix}dataset:{dataset}", mapping={"description": "second", "num_samples": "20"}
    )

    results = run_sync(conflict=conflict)

    assert rows(pg_conn, "SELECT description, architecture FROM models") == [
        {"description": "second", "architecture": None}
    ]
    assert rows(pg_conn, "SELECT description, num_samples FROM datasets") == [
        {"description": "second", "num_samples": 20}
    ]
    assert (results["models"].updated, results["datasets"].updated) == (1, 1)
    assert stats_from_results(results.values())["models"] == 1
