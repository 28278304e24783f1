"""A Redis flush or restart between cycles: ids start again at 1 for new, different records.

Covers: after every key under the prefix is deleted (what FLUSHDB does to this
tenant; the shared test db is never flushed) and new records reuse the same ids,
the next sync leaves every earlier Postgres row exactly as it was, adds the new
records as new rows (runs, predictions and metrics told apart by their creation
time), maps the new children to the new parents rather than the old ones with the
same Redis id, and deletes nothing.
"""

from __future__ import annotations

import pytest
from psycopg.rows import dict_row

from .faults import TABLES


def rows(conn, sql: str, *params) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(sql, params or None).fetchall()


def snapshot(conn) -> dict[str, list[dict]]:
    return {t: rows(conn, f"SELECT * FROM {t} ORDER BY id") for t in TABLES}


def delete_prefix(client, prefix: str) -> None:
    """What FLUSHDB does to one tenant: every key under the prefix is gone, counters included."""
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    client.delete(*keys)
    assert not list(client.scan_iter(match=f"{prefix}*", count=1000))


def fill(writer, tag: str) -> dict[str, int]:
    model = writer.create_model(f"model-{tag}", description=f"life {tag}")
    version = writer.create_model_version(model, f"v-{tag}")
    dataset = writer.create_dataset(f"data-{tag}", size_bytes=150_000_000_000)
    run = writer.create_training_run(version, dataset_id=dataset, run_name=f"run-{tag}")
    writer.log_hyperparameters(run, {"lr": tag, f"only-{tag}": 1})
    writer.log_metric(run, "loss", 0.5, epoch=1)
    writer.log_metric(run, "loss", 0.4, epoch=2)
    experiment = writer.create_experiment(f"exp-{tag}")
    writer.add_experiment_run(experiment, run, variant_name=tag)
    predictions = [writer.log_prediction(version, f"{tag}-{i}", i) for i in range(3)]
    return {
        "model": model,
        "version": version,
        "dataset": dataset,
        "run": run,
        "experiment": experiment,
        "last_prediction": predictions[-1],
    }


@pytest.fixture
def flushed(writer, redis_client, key_prefix, run_sync, pg_conn):
    """Life 1 synced and snapshotted, then Redis flushed and life 2 written with the same ids, then synced."""
    before_ids = fill(writer, "one")
    run_sync()
    before = snapshot(pg_conn)
    delete_prefix(redis_client, key_prefix)
    pg_conn.execute(
        "SELECT pg_sleep(1.1)"
    )  # creation times (second resolution or finer) must differ
    after_ids = fill(writer, "two")
    assert after_ids == before_ids  # the same Redis ids, reused for different records
    results = run_sync()
    return before, results


def test_earlier_rows_are_untouched_after_a_flush(flushed, pg_conn):
    before, _ = flushed
    after = snapshot(pg_conn)
    for table, old_rows in before.items():
        by_id = {r["id"]: r for r in after[table]}
        assert [by_id.get(r["id"]) for r in old_rows] == old_rows, table


def test_records_reusing_ids_after_a_flush_become_new_rows(flushed, pg_conn):
    _, results = flushed
    assert {t: len(r) for t, r in snapshot(pg_conn).items()} == {
        "models": 2,
        "model_versions": 2,
        "datasets": 2,
        "training_runs": 2,
        "hyperparameters": 4,
        "metrics": 4,
        "experiments": 2,
        "experiment_runs": 2,
        "predictions": 6,
    }
    assert {name: (r.inserted, r.updated, r.deleted) for name, r in results.items()} == {
        "models": (1, 0, 0),
        "datasets": (1, 0, 0),
        "experiments": (1, 0, 0),
        "model_versions": (1, 0, 0),
        "training_runs": (1, 0, 0),
        "hyperparameters": (2, 0, 0),
        "metrics": (2, 0, 0),
        "experiment_runs": (1, 0, 0),
        "predictions": (3, 0, 0),
    }


def test_new_children_attach_to_the_new_parents_not_the_old_ones_with_the_same_redis_id(
    flushed, pg_conn
):
    tree = rows(
        pg_conn,
        """
        SELECT m.name AS model, v.version, d.name AS dataset, r.run_name,
               (SELECT string_agg(h.param_name || '=' || h.param_value, ',' ORDER BY h.param_name)
                  FROM hyperparameters h WHERE h.training_run_id = r.id) AS params,
               (SELECT count(*) FROM metrics x WHERE x.training_run_id = r.id) AS points,
               (SELECT string_agg(e.name || ':' || er.variant_name, ',') FROM experiment_runs er
                  JOIN experiments e ON e.id = er.experiment_id WHERE er.training_run_id = r.id) AS experiments,
               (SELECT string_agg(p.input_data->>'data', ',' ORDER BY p.input_data->>'data')
                  FROM predictions p WHERE p.model_version_id = v.id) AS predictions
        FROM training_runs r JOIN model_versions v ON v.id = r.model_version_id
        JOIN models m ON m.id = v.model_id JOIN datasets d ON d.id = r.dataset_id ORDER BY r.started_at""",
    )
    assert tree == [
        {
            "model": "model-one",
            "version": "v-one",
            "dataset": "data-one",
            "run_name": "run-one",
            "params": "lr=one,only-one=1",
            "points": 2,
            "experiments": "exp-one:one",
            "predictions": "one-0,one-1,one-2",
        },
        {
            "model": "model-two",
            "version": "v-two",
            "dataset": "data-two",
            "run_name": "run-two",
            "params": "lr=two,only-two=1",
            "points": 2,
            "experiments": "exp-two:two",
            "predictions": "two-0,two-1,two-2",
        },
    ]


def test_runs_and_predictions_with_the_same_redis_id_are_told_apart_by_creation_time(
    flushed, pg_conn
):
    runs = rows(
        pg_conn, "SELECT origin_redis_id, started_at FROM training_runs ORDER BY started_at"
    )
    assert runs[0]["origin_redis_id"] == runs[1]["origin_redis_id"]
    assert runs[0]["started_at"] < runs[1]["started_at"]
    predictions = rows(
        pg_conn, "SELECT origin_redis_id, count(*) AS n FROM predictions GROUP BY 1 ORDER BY 1"
    )
    assert predictions == [{"origin_redis_id": i, "n": 2} for i in (1, 2, 3)]


def test_fewer_records_after_a_flush_are_still_read(
    writer, redis_client, key_prefix, run_sync, pg_conn
):
    version = writer.create_model_version(writer.create_model("m"), "1")
    for i in range(5):
        writer.log_prediction(version, f"old-{i}", i)
    run_sync()
    delete_prefix(redis_client, key_prefix)
    pg_conn.execute("SELECT pg_sleep(1.1)")
    version = writer.create_model_version(writer.create_model("m"), "1")
    writer.log_prediction(version, "new-0", 0)  # id 1, far below the old watermark of 5

    results = run_sync()

    assert results["predictions"].inserted == 1
    assert [
        r["i"] for r in rows(pg_conn, "SELECT input_data->>'data' AS i FROM predictions ORDER BY i")
    ] == ["new-0", "old-0", "old-1", "old-2", "old-3", "old-4"]
    assert rows(pg_conn, "SELECT count(*) AS n FROM model_versions") == [{"n": 1}]


def test_sync_after_a_flush_with_nothing_new_deletes_nothing(
    writer, redis_client, key_prefix, run_sync, pg_conn
):
    fill(writer, "one")
    run_sync()
    before = snapshot(pg_conn)
    delete_prefix(redis_client, key_prefix)

    results = run_sync()

    assert snapshot(pg_conn) == before
    assert sum(r.inserted + r.updated + r.deleted + r.rejected for r in results.values()) == 0


def test_metrics_of_finished_runs_written_after_a_flush_reach_postgres_next_cycle(
    writer, redis_client, key_prefix, run_sync, pg_conn
):
    def life(tag: str) -> None:
        version = writer.create_model_version(writer.create_model(f"model-{tag}"), "1.0")
        run = writer.create_training_run(version, run_name=f"run-{tag}")
        writer.log_metric(run, f"loss-{tag}", 0.5, epoch=1)
        writer.update_training_run(run, status="completed")

    life("one")
    run_sync()
    delete_prefix(redis_client, key_prefix)
    pg_conn.execute("SELECT pg_sleep(1.1)")
    life("two")

    run_sync()

    assert rows(
        pg_conn,
        "SELECT r.run_name, m.metric_name FROM metrics m JOIN training_runs r "
        "ON r.id = m.training_run_id ORDER BY r.run_name",
    ) == [
        {"run_name": "run-one", "metric_name": "loss-one"},
        {"run_name": "run-two", "metric_name": "loss-two"},
    ]


def test_a_model_re_created_after_a_flush_updates_the_row_the_sync_created(
    writer, redis_client, key_prefix, run_sync, pg_conn
):
    """After a restart the application re-creates its catalog under the same names: the rows the sync
    created earlier follow the new records (description, a version's status), under the default policy."""
    model = writer.create_model("resnet", description="before the restart")
    writer.create_model_version(model, "1.0", status="staging")
    run_sync()
    delete_prefix(redis_client, key_prefix)
    model = writer.create_model("resnet", description="after the restart")
    writer.create_model_version(model, "1.0", status="production")
    results = run_sync()
    assert rows(pg_conn, "SELECT name, description FROM models") == [
        {"name": "resnet", "description": "after the restart"}
    ]
    assert rows(pg_conn, "SELECT version, status FROM model_versions") == [
        {"version": "1.0", "status": "production"}
    ]
    assert (results["models"].updated, results["models"].skipped) == (1, 0)
