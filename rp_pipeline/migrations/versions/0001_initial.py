"""Analytics tables (created, or the old adapter's ones brought up to date) and sync bookkeeping.

Frozen: every table, column, type and index this revision makes is written out here rather than
derived from the entity specs, so a later change to the specs cannot change what "a database at
0001" is. Each later schema change is a revision of its own.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None

TIMESTAMPTZ = sa.DateTime(timezone=True)
FLOAT = sa.Float(precision=53)


def _analytics_tables(metadata: sa.MetaData, schema: str) -> list[sa.Table]:
    """The nine tables as the analysts know them plus origin columns, parents before children."""

    def table(name, *columns):
        return sa.Table(name, metadata, sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
                        *columns, schema=schema)

    def parent(column, entity, nullable=False):
        return sa.Column(column, sa.BigInteger, sa.ForeignKey(f"{schema}.{entity}.id"), nullable=nullable)

    def text(name, nullable=True):
        return sa.Column(name, sa.Text, nullable=nullable)

    return [
        table("models", text("name", nullable=False), text("description"), text("architecture"),
              text("framework"), text("task_type"), text("input_shape"), text("output_shape"),
              sa.Column("created_at", TIMESTAMPTZ), sa.Column("updated_at", TIMESTAMPTZ), text("origin_source")),
        table("datasets", text("name", nullable=False), text("description"), text("source_path"), text("format"),
              sa.Column("size_bytes", sa.BigInteger), sa.Column("num_samples", sa.BigInteger),
              sa.Column("split_info", JSONB), sa.Column("preprocessing", JSONB),
              sa.Column("created_at", TIMESTAMPTZ), text("origin_source")),
        table("experiments", text("name", nullable=False), text("description"), text("hypothesis"), text("status"),
              sa.Column("created_at", TIMESTAMPTZ), sa.Column("completed_at", TIMESTAMPTZ),
              sa.Column("results", JSONB), text("origin_source")),
        table("model_versions", parent("model_id", "models"), text("version", nullable=False),
              text("checkpoint_path"), sa.Column("config", JSONB), text("status"),
              sa.Column("created_at", TIMESTAMPTZ), text("origin_source")),
        table("training_runs", parent("model_version_id", "model_versions"),
              parent("dataset_id", "datasets", nullable=True), text("run_name"), text("status"),
              sa.Column("started_at", TIMESTAMPTZ, nullable=False), sa.Column("completed_at", TIMESTAMPTZ),
              sa.Column("duration_seconds", FLOAT), sa.Column("final_loss", FLOAT),
              sa.Column("best_metric_value", FLOAT), sa.Column("artifacts", JSONB), text("origin_source"),
              sa.Column("origin_redis_id", sa.BigInteger)),
        table("hyperparameters", parent("training_run_id", "training_runs"), text("param_name", nullable=False),
              text("param_value"), text("origin_source")),
        table("metrics", parent("training_run_id", "training_runs"), sa.Column("epoch", sa.BigInteger),
              sa.Column("step", sa.BigInteger), text("metric_name", nullable=False), sa.Column("metric_value", FLOAT),
              text("split", nullable=False), sa.Column("timestamp", TIMESTAMPTZ, nullable=False),
              text("origin_source")),
        table("experiment_runs", parent("experiment_id", "experiments"), parent("training_run_id", "training_runs"),
              text("variant_name"), text("notes"), text("origin_source")),
        table("predictions", parent("model_version_id", "model_versions"), sa.Column("input_data", JSONB),
              sa.Column("output_data", JSONB), sa.Column("confidence", FLOAT), sa.Column("inference_time_ms", FLOAT),
              sa.Column("timestamp", TIMESTAMPTZ, nullable=False), sa.Column("metadata", JSONB),
              text("origin_source"), sa.Column("origin_redis_id", sa.BigInteger)),
    ]


# Each table's identity: a unique index over its natural key, nullable key columns compared through
# COALESCE so that NULL matches NULL; rows identified by their origin have a partial one.
_IDENTITY_INDEXES = {
    "models": ('"name"',),
    "datasets": ('"name"',),
    "experiments": ('"name"',),
    "model_versions": ('"model_id"', '"version"'),
    "training_runs": ('"origin_source"', '"origin_redis_id"', '"started_at"'),
    "hyperparameters": ('"training_run_id"', '"param_name"'),
    "metrics": ('"training_run_id"', '"metric_name"', '"split"', 'COALESCE("epoch", -1)', 'COALESCE("step", -1)',
                '"timestamp"'),
    "experiment_runs": ('"experiment_id"', '"training_run_id"'),
    "predictions": ('"origin_source"', '"origin_redis_id"', '"timestamp"'),
}
_BY_ORIGIN = ("training_runs", "metrics", "predictions")

# Foreign-key columns that analysts and the sync look rows up by.
_LOOKUP_INDEXES = {
    "training_runs": ("model_version_id",),
    "metrics": ("training_run_id",),
    "predictions": ("model_version_id",),
}


def _bookkeeping_tables(metadata: sa.MetaData, schema: str) -> list[sa.Table]:
    """The sync's own state, kept apart from the analytics tables."""
    now = sa.text("now()")
    return [
        sa.Table("watermarks", metadata,
                 sa.Column("source", sa.Text, primary_key=True), sa.Column("entity", sa.Text, primary_key=True),
                 sa.Column("generation", sa.Text, nullable=False), sa.Column("last_id", sa.BigInteger, nullable=False),
                 sa.Column("updated_at", TIMESTAMPTZ, server_default=now, nullable=False), schema=schema),
        sa.Table("id_map", metadata,
                 sa.Column("source", sa.Text, primary_key=True), sa.Column("entity", sa.Text, primary_key=True),
                 sa.Column("redis_id", sa.BigInteger, primary_key=True),
                 sa.Column("generation", sa.Text, nullable=False), sa.Column("pg_id", sa.BigInteger, nullable=False),
                 schema=schema),
        # Redis keys can be longer than a btree entry (a metric name is part of one): they are
        # unique by md5 and looked up through hash indexes, which have no size limit.
        sa.Table("pending", metadata,
                 sa.Column("source", sa.Text, nullable=False), sa.Column("entity", sa.Text, nullable=False),
                 sa.Column("redis_key", sa.Text, nullable=False),
                 sa.Column("generation", sa.Text, nullable=False), sa.Column("reason", sa.Text, nullable=False),
                 sa.Column("first_seen", TIMESTAMPTZ, server_default=now, nullable=False),
                 sa.Column("last_seen", TIMESTAMPTZ, server_default=now, nullable=False),
                 sa.Index("uq_pending_key", "source", "entity", sa.text("md5(redis_key)"), unique=True),
                 sa.Index("ix_pending_redis_key", "redis_key", postgresql_using="hash"), schema=schema),
        sa.Table("rejected_records", metadata,
                 sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
                 sa.Column("source", sa.Text, nullable=False), sa.Column("entity", sa.Text, nullable=False),
                 sa.Column("redis_key", sa.Text, nullable=False), sa.Column("raw", sa.Text),
                 sa.Column("raw_md5", sa.Text, nullable=False), sa.Column("reason", sa.Text, nullable=False),
                 sa.Column("first_seen", TIMESTAMPTZ, server_default=now, nullable=False),
                 sa.Column("last_seen", TIMESTAMPTZ, server_default=now, nullable=False),
                 sa.Column("times_seen", sa.Integer, server_default="1", nullable=False),
                 sa.Index("uq_rejected_record", "source", "entity", sa.text("md5(redis_key)"), "raw_md5",
                          unique=True),
                 sa.Index("ix_rejected_redis_key", "redis_key", postgresql_using="hash"), schema=schema),
        sa.Table("entity_runs", metadata,
                 sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
                 sa.Column("run_id", sa.Text, nullable=False), sa.Column("source", sa.Text, nullable=False),
                 sa.Column("entity", sa.Text, nullable=False),
                 sa.Column("started_at", TIMESTAMPTZ, nullable=False),
                 sa.Column("finished_at", TIMESTAMPTZ, nullable=False),
                 *[sa.Column(n, sa.BigInteger, nullable=False, server_default="0")
                   for n in ("read", "inserted", "updated", "unchanged", "skipped", "rejected", "pending", "deleted")],
                 sa.Column("watermark", sa.BigInteger), sa.Column("duration_seconds", FLOAT),
                 sa.Index("ix_entity_runs_run", "run_id"), schema=schema),
        sa.Table("metric_series", metadata,
                 sa.Column("source", sa.Text, nullable=False), sa.Column("redis_key", sa.Text, nullable=False),
                 sa.Column("generation", sa.Text, nullable=False), sa.Column("card", sa.BigInteger, nullable=False),
                 sa.Index("uq_metric_series_key", "source", sa.text("md5(redis_key)"), unique=True),
                 schema=schema),
        sa.Table("state", metadata,
                 sa.Column("source", sa.Text, primary_key=True), sa.Column("name", sa.Text, primary_key=True),
                 sa.Column("value", sa.Text, nullable=False), schema=schema),
    ]


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


def upgrade():
    schema = context.config.attributes["schema"]
    sync_schema = context.config.attributes["sync_schema"]
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    for table in _analytics_tables(sa.MetaData(), schema):
        if not inspector.has_table(table.name, schema=schema):
            table.create(bind)
        else:
            _bring_up_to_date(table, schema)
        where = " WHERE origin_source IS NOT NULL" if table.name in _BY_ORIGIN else ""
        op.execute(f'CREATE UNIQUE INDEX IF NOT EXISTS uq_{table.name}_identity '
                   f'ON "{schema}"."{table.name}" ({", ".join(_IDENTITY_INDEXES[table.name])}){where}')
        for column in _LOOKUP_INDEXES.get(table.name, ()):
            op.execute(f'CREATE INDEX IF NOT EXISTS ix_{table.name}_{column} ON "{schema}"."{table.name}" ({column})')
    for table in _bookkeeping_tables(sa.MetaData(), sync_schema):
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
