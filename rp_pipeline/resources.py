"""The Dagster resource: a view of the sync's configuration that hands out connections.

Each field is one environment variable (its name upper-cased), set through `dg.EnvVar` so the UI
shows the variable's name, never its value (URLs can hold passwords). An unset field keeps
`SyncConfig`'s default: the defaults and the parsing live in settings.py only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import dagster as dg
import psycopg
import redis

from .connections import connect_postgres, connect_redis
from .settings import ENVIRONMENT_VARIABLES, ConfigError, SyncConfig

# What a Dagster step says when it has no Postgres to write to (the CLI's own message offers --postgres-url).
POSTGRES_URL_MISSING = (
    "POSTGRES_URL is not set: set POSTGRES_URL=postgresql://USER:PASSWORD@HOST:5432/DATABASE in the environment "
    "of the Dagster process or in ./.env where `dagster dev` / `dagster job execute` is started "
    "(scripts/quickstart.sh writes one)"
)


class Connections(NamedTuple):
    """One source's Redis client and a Postgres connection, with the configuration they were opened by."""

    redis: redis.Redis
    postgres: psycopg.Connection
    config: SyncConfig


@contextmanager
def open_connections(config: SyncConfig) -> Iterator[Connections]:
    """Both connections of one source, closed on leaving the block."""
    client = connect_redis(config)
    try:
        with connect_postgres(config) as conn:
            yield Connections(client, conn, config)
    finally:
        client.close()


class SyncResource(dg.ConfigurableResource):
    """Where Redis and Postgres are and how the sync behaves (README, Configuration)."""

    redis_url: str | None = None
    redis_key_prefix: str | None = None
    postgres_url: str | None = None
    postgres_schema: str | None = None
    sync_schema: str | None = None
    sync_source: str | None = None
    sync_conflict_policy: str | None = None
    sync_retention_hours: str | None = None
    sync_interval: str | None = None
    sync_backlog_trigger: str | None = None
    sync_pending_max_age: str | None = None
    sync_chunk_size: str | None = None
    sync_memory_budget_mb: str | None = None
    sync_statement_timeout_ms: str | None = None
    sync_lock_timeout_ms: str | None = None
    sync_metric_rescan_seconds: str | None = None

    @classmethod
    def from_env(cls) -> SyncResource:
        """Every variable the environment sets, as an EnvVar (read when the resource is used)."""
        return cls(
            **{
                name.lower(): dg.EnvVar(name)
                for name in ENVIRONMENT_VARIABLES
                if os.environ.get(name) is not None
            }
        )

    @classmethod
    def of(cls, config: SyncConfig) -> SyncResource:
        """The resource carrying `config`, for runs in process (the API, tests)."""
        return cls(**{name.lower(): value for name, value in config.to_env().items()})

    def environment(self) -> dict[str, str]:
        values = {name: getattr(self, name.lower()) for name in ENVIRONMENT_VARIABLES}
        return {name: value for name, value in values.items() if value is not None}

    def sync_config(self, source: str | None = None, postgres: bool = True) -> SyncConfig:
        """The engine's configuration, of one source (None: the only one, or all of several);
        `postgres=False` for readers of Redis alone, which run without POSTGRES_URL.

        A setting that cannot work fails the step as a `dg.Failure` whose description is the one
        line saying what to set: not retried, and without a ConfigError traceback chained to it.
        """
        try:
            config = SyncConfig.from_env(self.environment())
            if postgres and not config.postgres_url:
                raise ConfigError(POSTGRES_URL_MISSING)
            return config.for_source(source) if source or len(config.sources) == 1 else config
        except ConfigError as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from None

    @contextmanager
    def connections(self, source: str | None = None) -> Iterator[Connections]:
        """Redis (the source's) and Postgres, open for the block."""
        with open_connections(self.sync_config(source)) as opened:
            yield opened

    @contextmanager
    def redis_client(self, source: str | None = None) -> Iterator[tuple[redis.Redis, SyncConfig]]:
        """The source's Redis alone (for sensors that read Redis only), open for the block."""
        config = self.sync_config(source)
        client = connect_redis(config)
        try:
            yield client, config
        finally:
            client.close()


def resources_from_env() -> dict[str, dg.ConfigurableResource]:
    """The code location's resources: REDIS_URL, POSTGRES_URL, REDIS_KEY_PREFIX, SYNC_*, ... ."""
    return {"sync": SyncResource.from_env()}


def resources_for(config: SyncConfig) -> dict[str, dg.ConfigurableResource]:
    """The job's resources carrying `config`, for runs in process."""
    return {"sync": SyncResource.of(config)}
