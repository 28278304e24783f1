"""Incremental cycles: what a second, third... sync does with what changed in Redis since the last one.

Covers: a cycle with nothing new inserts and updates nothing; only new predictions
are read; in-place changes reach Postgres on the next cycle (a run's status,
completed_at and final_loss via update_training_run, new and overwritten
hyperparameters, new metric points while the run trains, a model's new
description written by a raw HSET); and reruns never create duplicates.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from psycopg.rows import dict_row

from rp_pipeline.engine import stats_from_results

from .faults import TABLES


def rows(conn, sql: str, *params) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(sql, params or None).fetchall()


def counts(conn) -> dict[str, int]:
    return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}


@pytest.fixture
def tree(writer):
    """One of everything, the run still training; returns the Redis ids."""
    model = writer.create_model("resnet", description="first description")
    version = writer.create_model_version(model, "1.0")
    dataset = writer.create_dataset("imagenet", size_bytes=150_000_000_000)
    run = writer.create_training_run(version, dataset_id=dataset, run_name="r1")
    writer.log_hyperparameters(run, {"lr": 0.1, "batch_size": 32})
    writer.log_metric(run, "loss", 0.9, epoch=1)
    writer.log_metric(run, "loss", 0.8, epoch=2)
    experiment = writer.create_experiment("exp")
    writer.add_experiment_run(experiment, run, variant_name="a")
    for i in range(5):
        writer.log_prediction(version, {"x": i}, {"y": i})
    return {
        "model": model,
        "version": version,
        "dataset": dataset,
        "run": run,
        "experiment": experiment,
    }


def test_second_cycle_with_nothing_new_inserts_and_updates_nothing(tree, run_sync, pg_conn):
    run_sync()
    before = counts(pg_conn)
    snapshot = {t: rows(pg_conn, f"SELECT * FROM {t} ORDER BY id") for t in TABLES}

    results = run_sync()

    assert counts(pg_conn) == before
    assert {t: rows(pg_conn, f"SELECT * FROM {t} ORDER BY id") for t in TABLES} == snapshot
    assert {name: (r.inserted, r.updated, r.rejected) for name, r in results.items()} == {
        name: (0, 0, 0) for name in results
    }
    assert set(stats_from_results(results.values()).values()) == {0}


def test_only_new_predictions_are_read(tree, writer, run_sync, pg_conn):
    first = run_sync()
    assert (first["predictions"].read, first["predictions"].inserted) == (5, 5)
    for i in range(3):
        writer.log_prediction(tree["version"], {"x": 100 + i}, {"y": i})

    second = run_sync()

    assert (second["predictions"].read, second["predictions"].inserted) == (3, 3)
    assert counts(pg_conn)["predictions"] == 8
    assert [
        r["x"]
        for r in rows(
            pg_conn, "SELECT input_data->>'x' AS x FROM predictions ORDER BY origin_redis_id"
        )
    ] == ["0", "1", "2", "3", "4", "100", "101", "102"]
    assert run_sync()["predictions"].read == 0


def test_run_completion_reaches_postgres_next_cycle(tree, writer, run_sync, pg_conn):
    run_sync()
    started = rows(
        pg_conn, "SELECT id, status, completed_at, final_loss, best_metric_value FROM training_runs"
    )
    assert [(r["status"], r["completed_at"], r["best_metric_value"]) for r in started] == [
        ("started", None, None)
    ]

    writer.update_training_run(
        tree["run"],
        status="completed",
        completed_at=datetime(2025, 11, 23, 8, 15, 30),
        duration_seconds=120.5,
        final_loss=0.042,
        best_metric_value=0.91,
        artifacts={"weights": "w.pt"},
    )
    results = run_sync()

    done = rows(pg_conn, "SELECT * FROM training_runs")
    assert len(done) == 1
    assert done[0]["id"] == started[0]["id"]
    assert {
        k: done[0][k]
        for k in (
            "status",
            "completed_at",
            "duration_seconds",
            "final_loss",
            "best_metric_value",
            "artifacts",
        )
    } == {
        "status": "completed",
        "completed_at": datetime(2025, 11, 23, 8, 15, 30, tzinfo=timezone.utc),
        "duration_seconds": 120.5,
        "final_loss": 0.042,
        "best_metric_value": 0.91,
        "artifacts": {"weights": "w.pt"},
    }
    assert (results["training_runs"].inserted, results["training_runs"].updated) == (0, 1)
    assert stats_from_results(results.values())["runs"] == 1


def test_failed_run_status_reaches_postgres(tree, writer, run_sync, pg_conn):
    run_sync()
    writer.update_training_run(tree["run"], status="failed")
    run_sync()
    assert rows(pg_conn, "SELECT status, completed_at FROM training_runs") == [
        {"status": "failed", "completed_at": None}
    ]


def test_new_and_overwritten_hyperparameters_reach_postgres(tree, writer, run_sync, pg_conn):
    run_sync()
    writer.log_hyperparameters(tree["run"], {"lr": 0.01, "weight_decay": 1e-4})

    results = run_sync()

    assert rows(
        pg_conn, "SELECT param_name, param_value FROM hyperparameters ORDER BY param_name"
    ) == [
        {"param_name": "batch_size", "param_value": "32"},
        {"param_name": "lr", "param_value": "0.01"},
        {"param_name": "weight_decay", "param_value": "0.0001"},
    ]
    assert (results["hyperparameters"].inserted, results["hyperparameters"].updated) == (1, 1)


def test_new_metric_points_of_a_training_run_reach_postgres(tree, writer, run_sync, pg_conn):
    run_sync()
    writer.log_metric(tree["run"], "loss", 0.7, epoch=3)
    writer.log_metric(tree["run"], "accuracy", 0.6, epoch=3, split="val")

    results = run_sync()

    assert rows(
        pg_conn,
        "SELECT metric_name, split, epoch, metric_value FROM metrics ORDER BY metric_name, epoch",
    ) == [
        {"metric_name": "accuracy", "split": "val", "epoch": 3, "metric_value": 0.6},
        {"metric_name": "loss", "split": "train", "epoch": 1, "metric_value": 0.9},
        {"metric_name": "loss", "split": "train", "epoch": 2, "metric_value": 0.8},
        {"metric_name": "loss", "split": "train", "epoch": 3, "metric_value": 0.7},
    ]
    assert results["metrics"].inserted == 2


def test_points_logged_just_before_completion_are_not_lost(tree, writer, run_sync, pg_conn):
    run_sync()
    writer.log_metric(tree["run"], "loss", 0.7, epoch=3)
    writer.update_training_run(tree["run"], status="completed")

    run_sync()

    assert [r["epoch"] for r in rows(pg_conn, "SELECT epoch FROM metrics ORDER BY epoch")] == [
        1,
        2,
        3,
    ]


def test_model_description_rewritten_by_raw_hset_reaches_postgres(
    tree, redis_client, key_prefix, run_sync, pg_conn
):
    run_sync()
    model_pg_id = pg_conn.execute("SELECT id FROM models").fetchone()[0]
    redis_client.hset(
        f"{key_prefix}model:{tree['model']}",
        mapping={"description": "second description", "updated_at": "2025-12-01T09:00:00"},
    )

    results = run_sync()

    assert rows(pg_conn, "SELECT id, name, description, updated_at FROM models") == [
        {
            "id": model_pg_id,
            "name": "resnet",
            "description": "second description",
            "updated_at": datetime(2025, 12, 1, 9, 0, tzinfo=timezone.utc),
        }
    ]
    assert (results["models"].inserted, results["models"].updated) == (0, 1)
    assert pg_conn.execute("SELECT model_id FROM model_versions").fetchone()[0] == model_pg_id


def test_reruns_create_no_duplicates(tree, writer, run_sync, pg_conn):
    run_sync()
    writer.log_prediction(tree["version"], "late", "row")
    writer.log_metric(tree["run"], "loss", 0.5, epoch=4)
    for _ in range(3):
        run_sync()

    assert counts(pg_conn) == {
        "models": 1,
        "model_versions": 1,
        "datasets": 1,
        "training_runs": 1,
        "hyperparameters": 2,
        "metrics": 3,
        "experiments": 1,
        "experiment_runs": 1,
        "predictions": 6,
    }
    for table, key in (
        ("predictions", "origin_redis_id"),
        ("training_runs", "origin_redis_id"),
        ("metrics", "metric_name, split, epoch"),
        ("hyperparameters", "param_name"),
    ):
        dupes = rows(
            pg_conn, f"SELECT {key}, count(*) FROM {table} GROUP BY {key} HAVING count(*) > 1"
        )
        assert dupes == [], table


def test_series_started_after_completion_is_found_by_the_periodic_rescan(
    tree, writer, run_sync, pg_conn
):
    writer.update_training_run(tree["run"], status="completed")
    run_sync()
    writer.log_metric(tree["run"], "accuracy", 0.95, split="test")  # evaluated after training ended

    run_sync(metric_rescan_seconds=0)

    assert rows(
        pg_conn, "SELECT metric_name, split, metric_value FROM metrics WHERE split = 'test'"
    ) == [{"metric_name": "accuracy", "split": "test", "metric_value": 0.95}]
