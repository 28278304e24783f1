"""Schema revisions: 0001 is frozen (it builds today what it always built), and every database —
a new one, one at 0001, the old SQL adapter's own — ends at head with the analysts' indexes and the
ON DELETE rules of docs/postgres-schema.md, its rows intact, a sync on it working, and a second
migration changing nothing."""

from __future__ import annotations

import json
from pathlib import Path

from alembic.script import ScriptDirectory

from rp_pipeline.schema import MIGRATIONS_DIR, migrate
from rp_pipeline_tests.catalog import read_catalog
from rp_pipeline_tests.test_schema_migration import OLD_ADAPTER_DDL

from .faults import TABLES

# The spec's "Indexes and foreign keys analysts rely on", as (table, columns).
SPEC_INDEXES = {
    ("training_runs", ("status",)),
    ("training_runs", ("status", "started_at")),
    ("metrics", ("metric_name",)),
    ("metrics", ("training_run_id", "metric_name", "epoch")),
    ("predictions", ("timestamp",)),
    ("predictions", ("model_version_id", "timestamp")),
    ("model_versions", ("model_id", "status")),
}
SPEC_INDEX_NAMES = {
    "ix_training_runs_status": "training_runs",
    "ix_metrics_metric_name": "metrics",
    "ix_predictions_timestamp": "predictions",
}
# (table, column, parent, pg_constraint.confdeltype): 'c' CASCADE, 'n' SET NULL. One each, no more.
SPEC_FOREIGN_KEYS = sorted(
    [
        ("model_versions", "model_id", "models", "c"),
        ("training_runs", "model_version_id", "model_versions", "c"),
        ("training_runs", "dataset_id", "datasets", "n"),
        ("hyperparameters", "training_run_id", "training_runs", "c"),
        ("metrics", "training_run_id", "training_runs", "c"),
        ("experiment_runs", "experiment_id", "experiments", "c"),
        ("experiment_runs", "training_run_id", "training_runs", "c"),
        ("predictions", "model_version_id", "model_versions", "c"),
    ]
)

# Rows as the sync at revision 0001 wrote them: one model's whole tree, a dataset, an experiment.
ROWS_AT_0001 = """
INSERT INTO models (name, origin_source) VALUES ('Legacy', 'old-source');
INSERT INTO datasets (name, size_bytes, origin_source) VALUES ('ImageNet', 150000000000, 'old-source');
INSERT INTO experiments (name, origin_source) VALUES ('Sweep', 'old-source');
INSERT INTO model_versions (model_id, version, config, status, origin_source)
  SELECT id, 'v1', '{"lr": 0.1}', 'active', 'old-source' FROM models;
INSERT INTO training_runs (model_version_id, dataset_id, run_name, status, started_at, origin_source, origin_redis_id)
  SELECT v.id, d.id, 'r1', 'completed', '2024-01-01 12:00+00', 'old-source', 1 FROM model_versions v, datasets d;
INSERT INTO hyperparameters (training_run_id, param_name, param_value) SELECT id, 'lr', '0.1' FROM training_runs;
INSERT INTO metrics (training_run_id, epoch, metric_name, metric_value, split, timestamp, origin_source)
  SELECT id, 1, 'loss', 0.5, 'train', '2024-01-01 12:05+00', 'old-source' FROM training_runs;
INSERT INTO experiment_runs (experiment_id, training_run_id, variant_name)
  SELECT e.id, r.id, 'baseline' FROM experiments e, training_runs r;
INSERT INTO predictions (model_version_id, input_data, timestamp, origin_source, origin_redis_id)
  SELECT id, '{"x": 1}', '2024-01-01 13:00+00', 'old-source', 1 FROM model_versions;
"""


def index_columns(conn, schema: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    """{index name: (table, columns)} of the plain column indexes in `schema`."""
    found = conn.execute(
        "SELECT x.relname, t.relname, array_agg(a.attname ORDER BY k.n) FROM pg_index i "
        "JOIN pg_class x ON x.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid "
        "JOIN pg_namespace ns ON ns.oid = t.relnamespace "
        "CROSS JOIN unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, n) "
        "JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum "
        "WHERE ns.nspname = %s AND i.indexprs IS NULL AND i.indpred IS NULL GROUP BY 1, 2",
        (schema,),
    ).fetchall()
    return {name: (table, tuple(columns)) for name, table, columns in found}


def foreign_keys(conn, schema: str) -> list[tuple[str, str, str, str]]:
    """(table, column, parent, confdeltype) of every foreign key in `schema`, duplicates included."""
    return sorted(
        conn.execute(
            "SELECT t.relname, a.attname, p.relname, c.confdeltype::text FROM pg_constraint c "
            "JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace ns ON ns.oid = t.relnamespace "
            "JOIN pg_class p ON p.oid = c.confrelid "
            "JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = ANY(c.conkey) "
            "WHERE c.contype = 'f' AND ns.nspname = %s",
            (schema,),
        ).fetchall()
    )


def assert_has_spec_indexes_and_rules(conn, schema: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    indexes = index_columns(conn, schema)
    assert set(indexes.values()) >= SPEC_INDEXES
    assert {
        name: indexes[name][0] for name in SPEC_INDEX_NAMES if name in indexes
    } == SPEC_INDEX_NAMES
    assert foreign_keys(conn, schema) == SPEC_FOREIGN_KEYS
    return indexes


def counts(conn) -> dict[str, int]:
    return {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in TABLES}


def table_rows(conn) -> dict[str, list[tuple]]:
    return {
        table: conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall() for table in TABLES
    }


def alembic_version(conn, sync_schema: str) -> list[tuple]:
    return conn.execute(f'SELECT version_num FROM "{sync_schema}".alembic_version').fetchall()


def test_revision_0001_builds_what_it_built_before_it_was_frozen(sync_config, pg_conn):
    """The snapshot was read from the catalog that 0001 made at commit 3a7ad2e, when it still derived
    its tables from the entity specs."""
    snapshot = json.loads((Path(__file__).parent / "data" / "catalog_0001.json").read_text())
    migrate(sync_config, "0001")
    assert alembic_version(pg_conn, sync_config.sync_schema) == [("0001",)]
    assert read_catalog(pg_conn, sync_config.schema, sync_config.sync_schema) == snapshot["empty"]


def test_revision_0001_upgrades_the_old_adapter_tables_as_before_it_was_frozen(
    sync_config, pg_conn
):
    snapshot = json.loads((Path(__file__).parent / "data" / "catalog_0001.json").read_text())
    pg_conn.execute(OLD_ADAPTER_DDL)
    migrate(sync_config, "0001")
    assert (
        read_catalog(pg_conn, sync_config.schema, sync_config.sync_schema)
        == snapshot["old_adapter"]
    )


def test_new_database_has_the_analysts_indexes_and_on_delete_rules(sync_config, pg_conn):
    migrate(sync_config)
    indexes = assert_has_spec_indexes_and_rules(pg_conn, sync_config.schema)
    assert indexes["ix_training_runs_status_started_at"] == (
        "training_runs",
        ("status", "started_at"),
    )
    assert indexes["ix_predictions_model_version_id_timestamp"] == (
        "predictions",
        ("model_version_id", "timestamp"),
    )
    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    assert alembic_version(pg_conn, sync_config.sync_schema) == [(head,)]


def test_deleting_a_model_removes_its_tree_and_deleting_a_dataset_unlinks_its_runs(
    writer, run_sync, pg_conn
):
    dataset = writer.create_dataset("ImageNet")
    experiment = writer.create_experiment("Sweep")
    for name in ("Doomed", "Kept"):
        version = writer.create_model_version(writer.create_model(name), "v1")
        run = writer.create_training_run(version, dataset_id=dataset, run_name=name)
        writer.log_hyperparameters(run, {"lr": 0.1})
        writer.log_metric(run, "loss", 0.5, epoch=1)
        writer.add_experiment_run(experiment, run)
        writer.log_predictions(
            [
                {"model_version_id": version, "input_data": {"x": i}, "output_data": i}
                for i in range(3)
            ]
        )
    run_sync()
    assert counts(pg_conn) == {
        "models": 2,
        "model_versions": 2,
        "datasets": 1,
        "training_runs": 2,
        "hyperparameters": 2,
        "metrics": 2,
        "experiments": 1,
        "experiment_runs": 2,
        "predictions": 6,
    }

    pg_conn.execute("DELETE FROM models WHERE name = 'Doomed'")
    assert counts(pg_conn) == {
        "models": 1,
        "model_versions": 1,
        "datasets": 1,
        "training_runs": 1,
        "hyperparameters": 1,
        "metrics": 1,
        "experiments": 1,
        "experiment_runs": 1,
        "predictions": 3,
    }
    assert pg_conn.execute("SELECT run_name FROM training_runs").fetchall() == [("Kept",)]

    pg_conn.execute("DELETE FROM datasets")
    assert pg_conn.execute("SELECT run_name, dataset_id FROM training_runs").fetchall() == [
        ("Kept", None)
    ]
    assert counts(pg_conn)["metrics"] == 1


def test_database_at_0001_upgrades_with_rows_intact(sync_config, pg_conn, writer, run_sync):
    migrate(sync_config, "0001")
    pg_conn.execute(ROWS_AT_0001)
    before = table_rows(pg_conn)
    migrate(sync_config)
    assert table_rows(pg_conn) == before
    assert_has_spec_indexes_and_rules(pg_conn, sync_config.schema)

    # A sync on the upgraded tables attaches to the rows already there (same names) and adds its own run.
    version = writer.create_model_version(writer.create_model("Legacy"), "v1")
    writer.create_training_run(version, dataset_id=writer.create_dataset("ImageNet"), run_name="r2")
    writer.log_predictions(
        [{"model_version_id": version, "input_data": {"x": 2}, "output_data": 2}]
    )
    run_sync()
    second = run_sync()
    assert all(r.inserted == 0 for r in second.values()), second
    assert counts(pg_conn) == {
        "models": 1,
        "model_versions": 1,
        "datasets": 1,
        "training_runs": 2,
        "hyperparameters": 1,
        "metrics": 1,
        "experiments": 1,
        "experiment_runs": 1,
        "predictions": 2,
    }

    # The rules hold for rows written before and after the upgrade alike.
    pg_conn.execute("DELETE FROM datasets")
    assert (
        pg_conn.execute("SELECT count(*) FROM training_runs WHERE dataset_id IS NULL").fetchone()[0]
        == 2
    )
    pg_conn.execute("DELETE FROM models")
    assert counts(pg_conn) == {
        "models": 0,
        "model_versions": 0,
        "datasets": 0,
        "training_runs": 0,
        "hyperparameters": 0,
        "metrics": 0,
        "experiments": 1,
        "experiment_runs": 0,
        "predictions": 0,
    }


def test_old_adapter_tables_get_the_rules_without_duplicate_keys_or_indexes(
    sync_config, pg_conn, writer, run_sync
):
    pg_conn.execute(OLD_ADAPTER_DDL)
    # Some of it may already be there under the old adapter's own names, one rule already right.
    pg_conn.execute("""
        CREATE INDEX ix_training_runs_status ON training_runs (status);
        CREATE INDEX idx_predictions_version_time ON predictions (model_version_id, timestamp);
        ALTER TABLE hyperparameters DROP CONSTRAINT hyperparameters_training_run_id_fkey,
          ADD CONSTRAINT hyperparameters_training_run_id_fkey FOREIGN KEY (training_run_id)
          REFERENCES training_runs (id) ON DELETE CASCADE;
    """)
    migrate(sync_config)
    indexes = assert_has_spec_indexes_and_rules(pg_conn, sync_config.schema)
    assert [
        name
        for name, found in indexes.items()
        if found == ("predictions", ("model_version_id", "timestamp"))
    ] == ["idx_predictions_version_time"]
    assert pg_conn.execute(
        "SELECT conname FROM pg_constraint WHERE conrelid = 'hyperparameters'::regclass "
        "AND contype = 'f'"
    ).fetchall() == [("hyperparameters_training_run_id_fkey",)]
    assert pg_conn.execute("SELECT name FROM models").fetchall() == [("Legacy",)]
    assert pg_conn.execute("SELECT input_data FROM predictions").fetchall() == [({"x": 1},)]

    # The sync works on them and does not duplicate the legacy model or version.
    writer.create_model_version(writer.create_model("Legacy"), "v1")
    run_sync()
    assert all(r.inserted == 0 for r in run_sync().values())
    assert counts(pg_conn)["model_versions"] == 1
    pg_conn.execute("DELETE FROM models")
    assert counts(pg_conn)["predictions"] == 0 and counts(pg_conn)["model_versions"] == 0


def test_migrating_again_changes_nothing(sync_config, pg_conn):
    migrate(sync_config)
    catalog = read_catalog(pg_conn, sync_config.schema, sync_config.sync_schema)
    migrate(sync_config)
    assert read_catalog(pg_conn, sync_config.schema, sync_config.sync_schema) == catalog
    # Revision 0003 itself, run on a database that already has all it makes, adds nothing either.
    pg_conn.execute(
        f"UPDATE \"{sync_config.sync_schema}\".alembic_version SET version_num = '0002'"
    )
    migrate(sync_config)
    assert read_catalog(pg_conn, sync_config.schema, sync_config.sync_schema) == catalog
