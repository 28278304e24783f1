"""Dagster resources: where Redis and Postgres are, and how the sync behaves.

Values come from the environment through `dg.EnvVar`, so the UI shows the
variable's name, never its value (URLs can hold passwords).
"""

import os

import dagster as dg
import psycopg
import redis

from .connections import connect_postgres, connect_redis
from .settings import DEFAULT_KEY_PREFIX, DEFAULT_REDIS_URL, ConfigError, SyncConfig, parse_mapping


class RedisResource(dg.ConfigurableResource):
    """The Redis that applications write the aidb layout into."""

    url: str = DEFAULT_REDIS_URL
    key_prefix: str = DEFAULT_KEY_PREFIX


class PostgresResource(dg.ConfigurableResource):
    """The Postgres that holds the analytics tables and, in its own schema, the sync's bookkeeping."""

    url: str | None = None
    analytics_schema: str = "public"
    sync_schema: str = "rp_sync"


class SyncSettingsResource(dg.ConfigurableResource):
    """How the sync treats conflicts, late parents, retention and big backlogs."""

    conflict_policy: str = ""  # e.g. "models=overwrite,datasets=merge"; default skip
    pending_max_age_seconds: float = 3600.0
    chunk_size: int = 20_000
    memory_budget_mb: float = 256.0  # what one sync holds in flight (chunks read, prepared, loaded)
    statement_timeout_ms: int = 300_000
    lock_timeout_ms: int = 60_000
    retention_hours: str = ""  # e.g. "predictions=24,metrics=72"; default: keep everything in Redis
    metric_rescan_seconds: float = 3600.0  # a full SCAN for new metric series at least this often
    source: str = (
        ""  # a label for this Redis in rp_sync.sources; rows are identified by its data, not this
    )


# What a Dagster step says when it has no Postgres to write to (the CLI's own message offers --postgres-url).
POSTGRES_URL_MISSING = (
    "POSTGRES_URL is not set: set POSTGRES_URL=postgresql://USER:PASSWORD@HOST:5432/DATABASE in the environment "
    "of the Dagster process or in ./.env where `dagster dev` / `dagster job execute` is started "
    "(scripts/quickstart.sh writes one)"
)


def sync_config(
    redis_resource: RedisResource, postgres: PostgresResource, settings: SyncSettingsResource
) -> SyncConfig:
    """The engine's plain configuration from the three resources.

    A setting that cannot work fails the step as a `dg.Failure` whose description is the one
    line saying what to set: not retried, and without a ConfigError traceback chained to it.
    """
    try:
        if not postgres.url:
            raise ConfigError(POSTGRES_URL_MISSING)
        return _config_from(redis_resource, postgres, settings)
    except ConfigError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None


def _config_from(
    redis_resource: RedisResource, postgres: PostgresResource, settings: SyncSettingsResource
) -> SyncConfig:
    return SyncConfig(
        postgres_url=postgres.url,
        redis_url=redis_resource.url,
        key_prefix=redis_resource.key_prefix,
        schema=postgres.analytics_schema,
        sync_schema=postgres.sync_schema,
        source=settings.source or None,
        conflict=parse_mapping(settings.conflict_policy, "conflict_policy"),
        pending_max_age_seconds=settings.pending_max_age_seconds,
        chunk_size=settings.chunk_size,
        memory_budget_mb=settings.memory_budget_mb,
        statement_timeout_ms=settings.statement_timeout_ms,
        lock_timeout_ms=settings.lock_timeout_ms,
        retention_hours={
            k: float(v)
            for k, v in parse_mapping(settings.retention_hours, "retention_hours").items()
        },
        metric_rescan_seconds=settings.metric_rescan_seconds,
    )


def resources_for(config: SyncConfig) -> dict[str, dg.ConfigurableResource]:
    """The job's resources carrying `config` (the inverse of `sync_config`), for runs in process."""
    return {
        "redis": RedisResource(url=config.redis_url, key_prefix=config.key_prefix),
        "postgres": PostgresResource(
            url=config.postgres_url, analytics_schema=config.schema, sync_schema=config.sync_schema
        ),
        "sync_settings": SyncSettingsResource(
            conflict_policy=",".join(f"{k}={v}" for k, v in config.conflict.items()),
            pending_max_age_seconds=config.pending_max_age_seconds,
            chunk_size=config.chunk_size,
            memory_budget_mb=config.memory_budget_mb,
            statement_timeout_ms=config.statement_timeout_ms,
            lock_timeout_ms=config.lock_timeout_ms,
            retention_hours=",".join(f"{k}={v}" for k, v in config.retention_hours.items()),
            source=config.source or "",
            metric_rescan_seconds=config.metric_rescan_seconds,
        ),
    }


def open_connections(config: SyncConfig) -> tuple[redis.Redis, psycopg.Connection]:
    return connect_redis(config), connect_postgres(config)


def _env(name: str):
    """EnvVar when the variable is set (the UI shows its name), else None to keep the field's default."""
    return dg.EnvVar(name) if os.environ.get(name) else None


def _set(**fields):
    return {k: v for k, v in fields.items() if v is not None}


def resources_from_env() -> dict[str, dg.ConfigurableResource]:
    """Resources configured by REDIS_URL, REDIS_KEY_PREFIX, POSTGRES_URL, POSTGRES_SCHEMA, SYNC_* variables."""
    return {
        "redis": RedisResource(**_set(url=_env("REDIS_URL"), key_prefix=_env("REDIS_KEY_PREFIX"))),
        "postgres": PostgresResource(
            **_set(
                url=_env("POSTGRES_URL"),
                analytics_schema=_env("POSTGRES_SCHEMA"),
                sync_schema=_env("SYNC_SCHEMA"),
            )
        ),
        "sync_settings": SyncSettingsResource(
            **_set(
                conflict_policy=_env("SYNC_CONFLICT_POLICY"),
                retention_hours=_env("SYNC_RETENTION_HOURS"),
                source=_env("SYNC_SOURCE"),
                pending_max_age_seconds=_number_env("SYNC_PENDING_MAX_AGE", float),
                chunk_size=_number_env("SYNC_CHUNK_SIZE", int),
                memory_budget_mb=_number_env("SYNC_MEMORY_BUDGET_MB", float),
                statement_timeout_ms=_number_env("SYNC_STATEMENT_TIMEOUT_MS", int),
                lock_timeout_ms=_number_env("SYNC_LOCK_TIMEOUT_MS", int),
                metric_rescan_seconds=_number_env("SYNC_METRIC_RESCAN_SECONDS", float),
            )
        ),
    }


def _number_env(name: str, cast):
    value = os.environ.get(name)
    if not value:
        return None
    try:
        return cast(value)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
