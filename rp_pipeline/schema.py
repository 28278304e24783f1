"""The Postgres schema, derived from the entity specs, and its migration entry point.

Tables are SQLAlchemy Core metadata built from `entities.ENTITIES`; Alembic
(`rp_pipeline/migrations`) creates them in an empty database and brings an
existing one (the old SQL adapter's tables) up to date, idempotently.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.dialects import postgresql as pg

from .connections import explain_postgres_refusal
from .entities import HASH_BY_ID, BIGINT, FLOAT, JSONB, TEXT, TIMESTAMPTZ, EntitySpec
from .errors import PermissionProblem
from .settings import SyncConfig, sqlalchemy_url

SA_TYPES = {
    TEXT: sa.Text, BIGINT: sa.BigInteger, FLOAT: sa.Float(precision=53),
    JSONB: pg.JSONB, TIMESTAMPTZ: sa.DateTime(timezone=True),
}


def has_redis_id(spec: EntitySpec) -> bool:
    """Rows identified by their origin carry the Redis id they came from."""
    return spec.by_origin and spec.strategy == HASH_BY_ID


def identity_index_name(spec: EntitySpec) -> str:
    return f"uq_{spec.name}_identity"


def entity_table(spec: EntitySpec, metadata: sa.MetaData, schema: str) -> sa.Table:
    """The analytics table of one entity, as the analysts know it plus origin columns."""
    cols: list[sa.Column] = [sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True)]
    for parent in spec.parents:
        cols.append(sa.Column(parent.column, sa.BigInteger,
                              sa.ForeignKey(f"{schema}.{parent.entity}.id"), nullable=parent.optional))
    for column in spec.columns:
        cols.append(sa.Column(column.name, SA_TYPES[column.type],
                              nullable=not (column.required and column.name in spec.natural_key)))
    cols.append(sa.Column("origin_source", sa.Text))
    if has_redis_id(spec):
        cols.append(sa.Column("origin_redis_id", sa.BigInteger))
    return sa.Table(spec.name, metadata, *cols, schema=schema)


def bookkeeping_tables(metadata: sa.MetaData, schema: str) -> dict[str, sa.Table]:
    """The sync's own state, kept apart from the analytics tables."""
    ts = sa.DateTime(timezone=True)
    now = sa.text("now()")
    tables = [
        sa.Table("watermarks", metadata,
                 sa.Column("source", sa.Text, primary_key=True), sa.Column("entity", sa.Text, primary_key=True),
                 sa.Column("generation", sa.Text, nullable=False), sa.Column("last_id", sa.BigInteger, nullable=False),
                 sa.Column("updated_at", ts, server_default=now, nullable=False), schema=schema),
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
                 sa.Column("first_seen", ts, server_default=now, nullable=False),
                 sa.Column("last_seen", ts, server_default=now, nullable=False),
                 sa.Index("uq_pending_key", "source", "entity", sa.text("md5(redis_key)"), unique=True),
                 sa.Index("ix_pending_redis_key", "redis_key", postgresql_using="hash"), schema=schema),
        sa.Table("rejected_records", metadata,
                 sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
                 sa.Column("source", sa.Text, nullable=False), sa.Column("entity", sa.Text, nullable=False),
                 sa.Column("redis_key", sa.Text, nullable=False), sa.Column("raw", sa.Text),
                 sa.Column("raw_md5", sa.Text, nullable=False), sa.Column("reason", sa.Text, nullable=False),
                 sa.Column("first_seen", ts, server_default=now, nullable=False),
                 sa.Column("last_seen", ts, server_default=now, nullable=False),
                 sa.Column("times_seen", sa.Integer, server_default="1", nullable=False),
                 sa.Index("uq_rejected_record", "source", "entity", sa.text("md5(redis_key)"), "raw_md5",
                          unique=True),
                 sa.Index("ix_rejected_redis_key", "redis_key", postgresql_using="hash"), schema=schema),
        sa.Table("entity_runs", metadata,
                 sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
                 sa.Column("run_id", sa.Text, nullable=False), sa.Column("source", sa.Text, nullable=False),
                 sa.Column("entity", sa.Text, nullable=False),
                 sa.Column("started_at", ts, nullable=False), sa.Column("finished_at", ts, nullable=False),
                 *[sa.Column(n, sa.BigInteger, nullable=False, server_default="0")
                   for n in ("read", "inserted", "updated", "unchanged", "skipped", "rejected", "pending", "deleted")],
                 sa.Column("watermark", sa.BigInteger), sa.Column("duration_seconds", sa.Float(precision=53)),
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
    return {t.name: t for t in tables}


INSUFFICIENT_PRIVILEGE = "42501"  # a role without the grant (README, Security): explained, not a traceback
MIGRATIONS_DIR = Path(__file__).parent / "migrations"


_migrated: set[tuple[str, str, str]] = set()


def ensure_schema(config: SyncConfig) -> None:
    """Migrate once per process and target; later calls cost nothing."""
    target = (config.require_postgres_url(), config.schema, config.sync_schema)
    if target not in _migrated:
        migrate(config)
        _migrated.add(target)


def migrate(config: SyncConfig) -> None:
    """Create or upgrade every table to the current revision; safe to call on every cycle."""
    engine = sa.create_engine(sqlalchemy_url(config.require_postgres_url()), poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            # One migrator at a time per target; others wait here, then find nothing to do.
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
                         {"k": f"rp_pipeline.migrate/{config.schema}/{config.sync_schema}"})
            for schema in (config.sync_schema, config.schema):
                # Checked first: CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when the
                # schema exists, a right a least-privilege role (README) does not have.
                if not conn.execute(sa.text("SELECT 1 FROM pg_namespace WHERE nspname = :s"), {"s": schema}).first():
                    conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
            cfg = Config()
            cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
            cfg.attributes.update(connection=conn, schema=config.schema, sync_schema=config.sync_schema)
            command.upgrade(cfg, "head")
    except sa.exc.DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) == INSUFFICIENT_PRIVILEGE:
            raise PermissionProblem(explain_postgres_refusal(exc.orig, config)) from None
        raise
    finally:
        engine.dispose()
