"""Row counts kept by the sync, and what each entity's run wrote, so checks cost what a cycle changed.

- `table_rows`: the exact row count of each analytics table, added to in the same transaction as
  the rows (initialised once by count(*)), so `dagster/row_count` never scans a table;
- `entity_runs.inserted_after_id` / `inserted_up_to_id`: the ids the run's inserts fall between
  (ids come from an identity column, so a transaction's new rows lie above the largest id it saw
  first), and `updated_ids`: the rows its upserts changed. Checks read those rows by primary key.
(The content-duplicate check looks rows up through the analysts' indexes of revision 0003.)

Revision ID: 0004
Revises: 0003
"""

from alembic import context, op

revision = "0004"
down_revision = "0003"


def upgrade():
    sync_schema = context.config.attributes["sync_schema"]
    op.execute(f'''
        CREATE TABLE IF NOT EXISTS "{sync_schema}".table_rows (
            schema_name text NOT NULL,
            table_name text NOT NULL,
            row_count bigint NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (schema_name, table_name)
        )''')
    op.execute(
        f'ALTER TABLE "{sync_schema}".entity_runs ADD COLUMN IF NOT EXISTS inserted_after_id bigint, '
        "ADD COLUMN IF NOT EXISTS inserted_up_to_id bigint, ADD COLUMN IF NOT EXISTS updated_ids bigint[]"
    )
    op.execute(
        f'CREATE INDEX IF NOT EXISTS ix_entity_runs_source_entity ON "{sync_schema}".entity_runs '
        "(source, entity, id)"
    )
