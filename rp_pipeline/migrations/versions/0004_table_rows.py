"""Row counts kept by the sync, and what each entity's run wrote, so checks cost what a cycle changed.

- `table_rows`: the exact row count of each analytics table, added to in the same transaction as
  the rows (initialised once by count(*)), so `dagster/row_count` never scans a table;
- `entity_runs.inserted_after_id` / `inserted_up_to_id`: the ids the run's inserts fall between
  (ids come from an identity column, so a transaction's new rows lie above the largest id it saw
  first), and `updated_ids`: the rows its upserts changed. Checks read those rows by primary key.
- The lookup indexes the content-duplicate check uses (the analysts' indexes of
  postgres-schema.md; the same names as revision 0003's, so IF NOT EXISTS makes either one enough).

Revision ID: 0004
Revises: 0003
"""

from alembic import context, op

revision = "0004"
down_revision = "0003"

LOOKUP_INDEXES = {
    "ix_training_runs_status_started_at": ("training_runs", ("status", "started_at")),
    "ix_metrics_training_run_id_metric_name_epoch": ("metrics", ("training_run_id", "metric_name", "epoch")),
    "ix_predictions_model_version_id_timestamp": ("predictions", ("model_version_id", "timestamp")),
}


def upgrade():
    schema = context.config.attributes["schema"]
    sync_schema = context.config.attributes["sync_schema"]
    op.execute(f'''
        CREATE TABLE IF NOT EXISTS "{sync_schema}".table_rows (
            schema_name text NOT NULL,
            table_name text NOT NULL,
            row_count bigint NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (schema_name, table_name)
        )''')
    op.execute(f'ALTER TABLE "{sync_schema}".entity_runs ADD COLUMN IF NOT EXISTS inserted_after_id bigint, '
               'ADD COLUMN IF NOT EXISTS inserted_up_to_id bigint, ADD COLUMN IF NOT EXISTS updated_ids bigint[]')
    op.execute(f'CREATE INDEX IF NOT EXISTS ix_entity_runs_source_entity ON "{sync_schema}".entity_runs '
               '(source, entity, id)')
    for name, (table, columns) in LOOKUP_INDEXES.items():
        op.execute(f'CREATE INDEX IF NOT EXISTS {name} ON "{schema}"."{table}" '
                   f'({", ".join(chr(34) + c + chr(34) for c in columns)})')
