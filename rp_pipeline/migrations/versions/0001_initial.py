"""Analytics tables (created, or the old adapter's ones brought up to date) and sync bookkeeping.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import context, op

from rp_pipeline.entities import ENTITIES
from rp_pipeline.schema import bookkeeping_tables, entity_table, identity_index_name

revision = "0001"
down_revision = None

# Old column types widened in place: wanted type -> {old type: USING expression}.
_WIDENINGS = {
    "bigint": {"integer": "{col}::bigint", "smallint": "{col}::bigint"},
    "double precision": {t: "{col}::double precision" for t in ("real", "numeric", "integer", "smallint", "bigint")},
    "jsonb": {t: "{col}::jsonb" for t in ("json", "text", "character varying")},
    "timestamp with time zone": {"timestamp without time zone": "{col} AT TIME ZONE 'UTC'",
                                 "text": "{col}::timestamp AT TIME ZONE 'UTC'",
                                 "character varying": "{col}::timestamp AT TIME ZONE 'UTC'"},
    "text": {"character varying": "{col}::text", "character": "{col}::text"},
}
_WANTED = {"BIGINT": "bigint", "FLOAT(53)": "double precision", "DOUBLE PRECISION": "double precision",
           "JSONB": "jsonb", "TIMESTAMP WITH TIME ZONE": "timestamp with time zone", "TEXT": "text"}

# Foreign-key columns that analysts and the sync look rows up by.
_LOOKUP_INDEXES = {
    "training_runs": ("model_version_id",),
    "metrics": ("training_run_id",),
    "predictions": ("model_version_id",),
}


def upgrade():
    schema = context.config.attributes["schema"]
    sync_schema = context.config.attributes["sync_schema"]
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    metadata = sa.MetaData()
    for spec in ENTITIES:
        table = entity_table(spec, metadata, schema)
        if not inspector.has_table(spec.name, schema=schema):
            table.create(bind)
        else:
            _bring_up_to_date(table, schema)
        where = f" WHERE {spec.key_where}" if spec.key_where else ""
        op.execute(
            f'CREATE UNIQUE INDEX IF NOT EXISTS {identity_index_name(spec)} '
            f'ON "{schema}"."{spec.name}" ({", ".join(spec.identity_sql)}){where}'
        )
        for column in _LOOKUP_INDEXES.get(spec.name, ()):
            op.execute(f'CREATE INDEX IF NOT EXISTS ix_{spec.name}_{column} ON "{schema}"."{spec.name}" ({column})')
    for table in bookkeeping_tables(sa.MetaData(), sync_schema).values():
        table.create(bind, checkfirst=True)


def _bring_up_to_date(table: sa.Table, schema: str) -> None:
    """Add missing columns and widen types the old adapter got too narrow; never drops anything."""
    existing = dict(op.get_bind().execute(sa.text(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = :schema AND table_name = :table"), {"schema": schema, "table": table.name}).all())
    for column in table.columns:
        if column.name not in existing:
            op.add_column(table.name, sa.Column(column.name, column.type), schema=schema)
            continue
        wanted = _WANTED.get(str(column.type.compile(dialect=op.get_bind().dialect)).upper())
        using = _WIDENINGS.get(wanted, {}).get(existing[column.name])
        if using:
            op.execute(f'ALTER TABLE "{schema}"."{table.name}" ALTER COLUMN "{column.name}" '
                       f'TYPE {wanted} USING {using.format(col=chr(34) + column.name + chr(34))}')
