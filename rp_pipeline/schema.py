"""The Postgres schema's migration entry point and the names live code shares with it.

Alembic (`rp_pipeline/migrations/versions`) creates the tables in an empty database and brings an
existing one (the old SQL adapter's tables, or one at an older revision) up to date, idempotently.
Each revision is frozen: a schema change is a new revision, never an edit of an old one.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from .connections import explain_postgres_refusal
from .entities import EntitySpec
from .errors import PermissionProblem
from .settings import SyncConfig, sqlalchemy_url


def has_redis_id(spec: EntitySpec) -> bool:
    """Rows identified by their origin carry the Redis id they came from (when Redis allocated one)."""
    from .strategies import strategy_of  # strategies → retention → load → schema: import on use

    return spec.by_origin and strategy_of(spec).allocates_ids


def identity_index_name(spec: EntitySpec) -> str:
    """The unique index that enforces an entity's identity (made by revision 0001)."""
    return f"uq_{spec.name}_identity"


INSUFFICIENT_PRIVILEGE = (
    "42501"  # a role without the grant (README, Security): explained, not a traceback
)
MIGRATIONS_DIR = Path(__file__).parent / "migrations"


_migrated: set[tuple[str, str, str]] = set()


def ensure_schema(config: SyncConfig) -> None:
    """Migrate once per process and target; later calls cost nothing."""
    target = (config.require_postgres_url(), config.schema, config.sync_schema)
    if target not in _migrated:
        migrate(config)
        _migrated.add(target)


def migrate(config: SyncConfig, revision: str = "head") -> None:
    """Create or upgrade every table to `revision` (the newest by default); safe to call on every cycle."""
    engine = sa.create_engine(
        sqlalchemy_url(config.require_postgres_url()), poolclass=sa.pool.NullPool
    )
    try:
        with engine.begin() as conn:
            # One migrator at a time per target; others wait here, then find nothing to do.
            conn.execute(
                sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
                {"k": f"rp_pipeline.migrate/{config.schema}/{config.sync_schema}"},
            )
            for schema in (config.sync_schema, config.schema):
                # Checked first: CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when the
                # schema exists, a right a least-privilege role (README) does not have.
                if not conn.execute(
                    sa.text("SELECT 1 FROM pg_namespace WHERE nspname = :s"), {"s": schema}
                ).first():
                    conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
            cfg = Config()
            cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
            cfg.attributes.update(
                connection=conn, schema=config.schema, sync_schema=config.sync_schema
            )
            command.upgrade(cfg, revision)
    except sa.exc.DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) == INSUFFICIENT_PRIVILEGE:
            raise PermissionProblem(explain_postgres_refusal(exc.orig, config)) from None
        raise
    finally:
        engine.dispose()
