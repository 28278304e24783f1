"""Schema creation and migration: an empty database, an existing one with the old SQL adapter's
narrower tables, and repeated migrations (idempotent, concurrent-safe)."""

import threading

from alembic.script import ScriptDirectory

from rp_pipeline.entities import ENTITIES
from rp_pipeline.schema import MIGRATIONS_DIR, migrate

OLD_ADAPTER_DDL = """
CREATE TABLE models (id SERIAL PRIMARY KEY, name VARCHAR(255) NOT NULL UNIQUE, description TEXT,
  architecture VARCHAR(100), framework VARCHAR(50), task_type VARCHAR(50), input_shape VARCHAR(100),
  output_shape VARCHAR(100), created_at TIMESTAMP, updated_at TIMESTAMP);
CREATE TABLE model_versions (id SERIAL PRIMARY KEY, model_id INTEGER NOT NULL REFERENCES models(id),
  version VARCHAR(50) NOT NULL, checkpoint_path VARCHAR(500), config JSON, status VARCHAR(50), created_at TIMESTAMP,
  UNIQUE (model_id, version));
CREATE TABLE datasets (id SERIAL PRIMARY KEY, name VARCHAR(255) NOT NULL UNIQUE, description TEXT,
  source_path VARCHAR(500), format VARCHAR(50), size_bytes INTEGER, num_samples INTEGER, split_info JSON,
  preprocessing JSON, created_at TIMESTAMP);
CREATE TABLE training_runs (id SERIAL PRIMARY KEY, model_version_id INTEGER NOT NULL REFERENCES model_versions(id),
  dataset_id INTEGER REFERENCES datasets(id), run_name VARCHAR(255), status VARCHAR(50), started_at TIMESTAMP,
  completed_at TIMESTAMP, duration_seconds REAL, final_loss REAL, best_metric_value REAL, artifacts JSON);
CREATE TABLE hyperparameters (id SERIAL PRIMARY KEY, training_run_id INTEGER NOT NULL REFERENCES training_runs(id),
  param_name VARCHAR(100) NOT NULL, param_value TEXT, UNIQUE (training_run_id, param_name));
CREATE TABLE metrics (id SERIAL PRIMARY KEY, training_run_id INTEGER NOT NULL REFERENCES training_runs(id),
  epoch INTEGER, step INTEGER, metric_name VARCHAR(100) NOT NULL, metric_value REAL NOT NULL, split VARCHAR(20),
  timestamp TIMESTAMP);
CREATE TABLE experiments (id SERIAL PRIMARY KEY, name VARCHAR(255) NOT NULL UNIQUE, description TEXT,
  hypothesis TEXT, status VARCHAR(50), created_at TIMESTAMP, completed_at TIMESTAMP, results JSON);
CREATE TABLE experiment_runs (id SERIAL PRIMARY KEY, experiment_id INTEGER NOT NULL REFERENCES experiments(id),
  training_run_id INTEGER NOT NULL REFERENCES training_runs(id), variant_name VARCHAR(100), notes TEXT,
  UNIQUE (experiment_id, training_run_id));
CREATE TABLE predictions (id SERIAL PRIMARY KEY, model_version_id INTEGER NOT NULL REFERENCES model_versions(id),
  input_data JSON, output_data JSON, confidence REAL, inference_time_ms REAL, timestamp TIMESTAMP, metadata JSON);
INSERT INTO models (name, description, created_at) VALUES ('Legacy', 'written by the old adapter', '2024-01-01 12:00');
INSERT INTO model_versions (model_id, version, config) VALUES (1, 'v1', '{"lr": 0.1}');
INSERT INTO predictions (model_version_id, input_data, timestamp) VALUES (1, '{"x": 1}', '2024-01-01 12:00');
"""


def _column_types(conn, schema, table):
    return dict(
        conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
            (schema, table),
        ).fetchall()
    )


def test_empty_database_gets_all_tables_with_identity_indexes(sync_config, pg_conn):
    migrate(sync_config)
    schema = sync_config.schema
    for spec in ENTITIES:
        types = _column_types(pg_conn, schema, spec.name)
        assert types["id"] == "bigint" and "origin_source" in types, spec.name
        index = pg_conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND indexname = %s",
            (schema, f"uq_{spec.name}_identity"),
        ).fetchone()
        assert index and "UNIQUE" in index[0], spec.name
    assert _column_types(pg_conn, schema, "datasets")["size_bytes"] == "bigint"
    assert _column_types(pg_conn, schema, "predictions")["input_data"] == "jsonb"


def test_old_adapter_tables_are_widened_and_keep_their_rows(sync_config, pg_conn, writer, run_sync):
    pg_conn.execute(OLD_ADAPTER_DDL)
    migrate(sync_config)
    schema = sync_config.schema
    models = _column_types(pg_conn, schema, "models")
    assert models["id"] == "bigint" and models["created_at"] == "timestamp with time zone"
    assert models["origin_source"] == "text"
    assert _column_types(pg_conn, schema, "datasets")["size_bytes"] == "bigint"
    assert _column_types(pg_conn, schema, "predictions")["input_data"] == "jsonb"
    assert _column_types(pg_conn, schema, "training_runs")["final_loss"] == "double precision"
    assert pg_conn.execute("SELECT name, description, created_at::text FROM models").fetchall() == [
        ("Legacy", "written by the old adapter", "2024-01-01 12:00:00+00")
    ]
    assert pg_conn.execute("SELECT input_data FROM predictions").fetchone()[0] == {"x": 1}

    # The sync then works on the migrated tables: big datasets fit, the legacy row is left alone.
    writer.create_model("Legacy", description="from Redis")
    writer.create_dataset("ImageNet-Redis", size_bytes=150_000_000_000)
    run_sync()
    assert (
        pg_conn.execute("SELECT description FROM models WHERE name = 'Legacy'").fetchone()[0]
        == "written by the old adapter"
    )
    assert pg_conn.execute("SELECT size_bytes FROM datasets").fetchone()[0] == 150_000_000_000


def test_migration_is_idempotent_and_safe_to_run_concurrently(sync_config, pg_conn):
    errors = []

    def run():
        try:
            migrate(sync_config)
        except Exception as exc:  # collected: a thread's exception would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    migrate(sync_config)
    assert errors == []
    version = pg_conn.execute(
        f'SELECT version_num FROM "{sync_config.sync_schema}".alembic_version'
    ).fetchall()
    assert version == [(ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head(),)]
