"""Two syncs of the same Redis into the same Postgres at once (a one-shot run while the schedule fires).

Covers: two threads, each with its own Redis and Postgres connections, running
`sync_all` over the same data at the same moment create no duplicate rows and lose
nothing (between them every record is inserted exactly once), also while a writer
keeps logging predictions, metrics and runs during the syncs.
"""

from __future__ import annotations

import threading

import pytest
from psycopg.rows import dict_row

from rp_pipeline.connections import connect_postgres, connect_redis
from rp_pipeline.engine import sync_all
from rp_pipeline.schema import migrate

from .faults import TABLES

IDENTITY = {  # what makes a row unique for a user looking for duplicates
    "models": "name",
    "model_versions": "model_id, version",
    "datasets": "name",
    "training_runs": "origin_redis_id",
    "hyperparameters": "training_run_id, param_name",
    "metrics": "training_run_id, metric_name, split, epoch, step, timestamp",
    "experiments": "name",
    "experiment_runs": "experiment_id, training_run_id",
    "predictions": "origin_redis_id",
}


def rows(conn, sql: str, *params) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(sql, params or None).fetchall()


def counts(conn) -> dict[str, int]:
    return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}


def fill(
    writer, models: int = 4, runs_per_model: int = 3, predictions: int = 300
) -> dict[str, int]:
    versions = []
    experiment = writer.create_experiment("ablation")
    dataset = writer.create_dataset("imagenet", size_bytes=150_000_000_000)
    for m in range(models):
        model = writer.create_model(f"model-{m}")
        version = writer.create_model_version(model, "1.0")
        versions.append(version)
        for r in range(runs_per_model):
            run = writer.create_training_run(version, dataset_id=dataset, run_name=f"run-{m}-{r}")
            writer.log_hyperparameters(run, {"lr": 0.1 * (r + 1), "seed": r})
            for epoch in range(1, 4):
                writer.log_metric(run, "loss", 1.0 / epoch, epoch=epoch)
            writer.add_experiment_run(experiment, run, variant_name=f"v{r}")
    writer.log_predictions(
        [
            {
                "model_version_id": versions[i % len(versions)],
                "input_data": {"i": i},
                "output_data": i,
            }
            for i in range(predictions)
        ]
    )
    runs = models * runs_per_model
    return {
        "models": models,
        "model_versions": models,
        "datasets": 1,
        "training_runs": runs,
        "hyperparameters": runs * 2,
        "metrics": runs * 3,
        "experiments": 1,
        "experiment_runs": runs,
        "predictions": predictions,
    }


def run_at_once(config, syncs: int = 2) -> list[dict]:
    """Start `syncs` full cycles together, each on its own connections; re-raise any failure."""
    barrier = threading.Barrier(syncs)
    results: list = [None] * syncs
    errors: list[BaseException] = []

    def one(slot: int) -> None:
        try:
            client, conn = connect_redis(config), connect_postgres(config)
            try:
                barrier.wait(timeout=30)
                results[slot] = sync_all(client, conn, config, run_id=f"concurrent-{slot}")
            finally:
                client.close()
                conn.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(syncs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a sync did not finish"
    if errors:
        raise errors[0]
    return results


def assert_no_duplicates(conn) -> None:
    for table, key in IDENTITY.items():
        assert (
            rows(conn, f"SELECT {key}, count(*) FROM {table} GROUP BY {key} HAVING count(*) > 1")
            == []
        ), table


@pytest.fixture
def migrated(sync_config):
    migrate(sync_config)
    return sync_config


def test_two_syncs_at_once_create_no_duplicates_and_lose_nothing(migrated, writer, pg_conn):
    expected = fill(writer)

    first, second = run_at_once(migrated)

    assert counts(pg_conn) == expected
    assert_no_duplicates(pg_conn)
    assert {t: first[t].inserted + second[t].inserted for t in TABLES} == expected
    assert sum(first[t].rejected + second[t].rejected for t in TABLES) == 0


def test_syncs_at_once_while_the_writer_keeps_writing_lose_nothing(
    migrated, writer, pg_conn, run_sync
):
    expected = fill(writer, models=2, predictions=100)
    version = 1  # the first model's version, written by fill()
    stop = threading.Event()
    written = {"predictions": 0, "metrics": 0}

    def keep_writing() -> None:
        run = writer.create_training_run(version, run_name="live")
        while not stop.is_set():
            writer.log_prediction(version, {"live": written["predictions"]}, "y")
            written["predictions"] += 1
            writer.log_metric(run, "live_loss", 0.5, step=written["metrics"])
            written["metrics"] += 1

    live = threading.Thread(target=keep_writing)
    live.start()
    try:
        for _ in range(3):
            run_at_once(migrated)
    finally:
        stop.set()
        live.join(timeout=30)
    run_sync()  # one quiet cycle picks up whatever was written after the last concurrent one

    expected["predictions"] += written["predictions"]
    expected["metrics"] += written["metrics"]
    expected["training_runs"] += 1
    assert counts(pg_conn) == expected
    assert_no_duplicates(pg_conn)
    assert written["predictions"] > 0
