"""Shared fixtures: a real Redis and a real Postgres, isolated per test.

Each test gets its own Redis key prefix (in a Redis db chosen per xdist worker)
and its own pair of Postgres schemas (analytics tables + sync bookkeeping) in a
database created for the test session. Everything is removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import psycopg
import pytest
import redis

TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
TEST_POSTGRES_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def _worker_index() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(worker[2:]) if worker[2:].isdigit() else 0


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A Redis URL on a db of this worker's own (db 1..15), so db 0 stays the user's."""
    return f"{TEST_REDIS_URL.rstrip('/')}/{1 + _worker_index() % 15}"


@pytest.fixture
def key_prefix(redis_url: str):
    """A fresh key prefix; all its keys are deleted after the test."""
    prefix = f"t{uuid.uuid4().hex[:10]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    for batch in _batched(client.scan_iter(match=f"{prefix}*", count=5000), 5000):
        client.delete(*batch)
    client.close()


@pytest.fixture
def redis_client(redis_url: str, key_prefix: str):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A database created for this test session (per worker) and dropped at its end."""
    name = f"rp_test_{_worker_index()}_{os.getpid()}"
    with psycopg.connect(TEST_POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = TEST_POSTGRES_URL.rpartition("/")
    yield f"{base}/{name}"
    with psycopg.connect(TEST_POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_schemas(postgres_url: str):
    """(analytics schema, bookkeeping schema), unique to the test and dropped after it."""
    tag = uuid.uuid4().hex[:10]
    schemas = (f"a_{tag}", f"s_{tag}")
    yield schemas
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for schema in schemas:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def pg_conn(postgres_url: str, pg_schemas):
    """An autocommit connection whose search_path is the test's analytics schema."""
    schema, _ = pg_schemas
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        conn.execute(f'SET search_path TO "{schema}"')
        yield conn


def _batched(iterable, size):
    batch = []
    for item in iterable:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@pytest.fixture
def sync_config(redis_url, key_prefix, postgres_url, pg_schemas):
    """A SyncConfig pointing at this test's Redis prefix and Postgres schemas."""
    from rp_pipeline.settings import SyncConfig

    schema, sync_schema = pg_schemas
    return SyncConfig(
        postgres_url=postgres_url,
        redis_url=redis_url,
        key_prefix=key_prefix,
        schema=schema,
        sync_schema=sync_schema,
    )


@pytest.fixture
def writer(redis_url, key_prefix):
    """The hot-path client, writing the aidb layout under this test's prefix."""
    from rp_pipeline.writer import RedisWriter

    w = RedisWriter.from_url(redis_url, key_prefix=key_prefix)
    yield w
    w.close()


@pytest.fixture
def run_sync(sync_config):
    """Run one full sync cycle (migrating first); returns {entity: EntityResult}. Accepts config overrides."""
    import dataclasses

    from rp_pipeline.connections import connect_postgres, connect_redis
    from rp_pipeline.engine import sync_all
    from rp_pipeline.schema import migrate

    opened = []

    def run(**overrides):
        config = dataclasses.replace(sync_config, **overrides) if overrides else sync_config
        migrate(config)
        client, conn = connect_redis(config), connect_postgres(config)
        opened.append((client, conn))
        return sync_all(client, conn, config, run_id=uuid.uuid4().hex)

    yield run
    for client, conn in opened:
        client.close()
        conn.close()


@pytest.fixture
def work_dir(tmp_path):
    """A fresh working directory for a CLI run: no .env, no dagster.yaml; on tmpfs when available
    (Dagster's SQLite run history syncs to disk for every event)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        path = Path(tempfile.mkdtemp(prefix="rp_cli_", dir=shm))
        yield path
        shutil.rmtree(path, ignore_errors=True)
    else:
        yield tmp_path
