"""The Postgres role the README lists is enough: a sync runs with exactly those rights, no more."""

import dataclasses
import uuid

import psycopg
import pytest

from rp_pipeline.connections import connect_postgres, connect_redis
from rp_pipeline.engine import sync_all
from rp_pipeline.schema import migrate


@pytest.fixture
def least_privilege_url(postgres_url, pg_schemas):
    """A login role with the README's grants only (no superuser, no CREATEDB, no DELETE)."""
    role = f"rp_lp_{uuid.uuid4().hex[:8]}"
    schema, sync_schema = pg_schemas
    database = postgres_url.rsplit("/", 1)[1]
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE')
        admin.execute(f'GRANT CONNECT, TEMPORARY ON DATABASE "{database}" TO "{role}"')
        admin.execute(f'CREATE SCHEMA "{schema}"')
        admin.execute(f'GRANT USAGE, CREATE ON SCHEMA "{schema}" TO "{role}"')
        admin.execute(f'CREATE SCHEMA "{sync_schema}" AUTHORIZATION "{role}"')
    base, _, _ = postgres_url.partition("://")
    rest = postgres_url.split("@", 1)[1]
    yield f"{base}://{role}@{rest}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.execute(f'DROP SCHEMA IF EXISTS "{sync_schema}" CASCADE')
        admin.execute(f'DROP OWNED BY "{role}"')
        admin.execute(f'DROP ROLE "{role}"')


def test_sync_runs_with_the_documented_least_privilege_role(writer, sync_config, least_privilege_url, pg_conn):
    model = writer.create_model("ResNet50-Redis")
    version = writer.create_model_version(model, "v1")
    run = writer.create_training_run(version, run_name="r")
    writer.log_hyperparameters(run, {"lr": 0.1})
    writer.log_metric(run, "loss", 0.5, epoch=1)
    writer.log_predictions([{"model_version_id": version, "input_data": {"x": i}, "output_data": i}
                            for i in range(20)])
    config = dataclasses.replace(sync_config, postgres_url=least_privilege_url)
    migrate(config)
    client, conn = connect_redis(config), connect_postgres(config)
    try:
        for _ in range(2):
            results = sync_all(client, conn, config)
        assert all(r.rejected == 0 for r in results.values())
        role_is_super = conn.execute("SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user")
        assert role_is_super.fetchone()[0] is False
    finally:
        client.close()
        conn.close()
    assert pg_conn.execute("SELECT count(*) FROM predictions").fetchone()[0] == 20
    assert pg_conn.execute("SELECT count(*) FROM metrics").fetchone()[0] == 1
