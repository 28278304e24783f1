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

# Old column types that are widened in place: (type name prefix, new type, USING expression).
_WIDENINGS = {
    "BIGINT": (("INTEGER", "SMALLINT"), "bigint", "{col}::bigint"),
    "JSONB": (("JSON", "TEXT", "VARCHAR"), "jsonb", "{col}::jsonb"),
    "TIMESTAMP": (("TIMESTAMP",), "timestamptz", "{col} AT TIME ZONE 'UTC'"),
    "TEXT": (("VARCHAR", "CHAR"), "text", "{col}::text"),
    "DOUBLE": (("REAL", "NUMERIC", "INTEGER"), "double precision", "{col}::double precision"),
}

# Foreign-key columns that analysts and the sync look rows up by.
_LOOKUP_INDEXES = {
    "training_runs": ("model_version_id",),
    "metrics": ("training_run_id",),
    "predictions": ("model_version_id",),
}


def _kind(sa_type) -> str:
    text = str(sa_type.compile(dialect=op.get_bind().dialect)).upper()
    return text


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
            _bring_up_to_date(table, inspector, schema)
        where = f" WHERE {spec.key_where}" if spec.key_where else ""
        op.execute(
            f'CREATE UNIQUE INDEX IF NOT EXISTS {identity_index_name(spec)} '
            f'ON "{schema}"."{spec.name}" ({", ".join(spec.identity_sql)}){where}'
        )
        for column in _LOOKUP_INDEXES.get(spec.name, ()):
            op.execute(f'CREATE INDEX IF NOT EXISTS ix_{spec.name}_{column} ON "{schema}"."{spec.name}" ({column})')
    for table in bookkeeping_tables(sa.MetaData(), sync_schema).values():
        table.create(bind, checkfirst=True)


def _bring_up_to_date(table: sa.Table, inspector, schema: str) -> None:
    """Add missing columns and widen types the old adapter got too narrow; never drops anything."""
    existing = {c["name"]: c for c in inspector.get_columns(table.name, schema=schema)}
    for column in table.columns:
        if column.name not in existing:
            op.add_column(table.name, sa.Column(column.name, column.type), schema=schema)
            continue
        have, want = _kind(existing[column.name]["type"]), _kind(column.type)
        for target, (old_prefixes, new_type, using) in _WIDENINGS.items():
            if want.startswith(target) and not have.startswith(target.split()[0]) and have.startswith(old_prefixes):
                op.execute(
                    f'ALTER TABLE "{schema}"."{table.name}" ALTER COLUMN "{column.name}" '
                    f'TYPE {new_type} USING {using.format(col=chr(34) + column.name + chr(34))}'
                )
                break
