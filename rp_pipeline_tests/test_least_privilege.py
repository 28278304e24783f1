"""The Postgres role the README lists is enough: a sync runs with exactly those rights, no more.

The role is made by running the README's statements as written (role, database and schema
names replaced by the test's), so the README is what is tested.
"""

import dataclasses
import re
import uuid

import psycopg
import pytest

from rp_pipeline.connections import connect_postgres, connect_redis
from rp_pipeline.engine import sync_all
from rp_pipeline.schema import migrate

from .acl_support import README


def readme_role_statements(role: str, database: str, schema: str, sync_schema: str) -> list[str]:
    """The README's role section (the ```sql block after CREATE ROLE rp_sync), with this test's names."""
    block = README.split("```sql\nCREATE ROLE rp_sync", 1)[1].split("```", 1)[0]
    sql = "CREATE ROLE rp_sync" + "\n".join(line.split("--", 1)[0] for line in block.splitlines())
    sql = sql.replace("SCHEMA rp_sync AUTHORIZATION", f'SCHEMA "{sync_schema}" AUTHORIZATION')
    sql = re.sub(r"\brp_sync\b", f'"{role}"', sql).replace("'...'", "'unused-with-trust-auth'")
    sql = re.sub(r"\bpublic\b", f'"{schema}"', sql).replace("ai_models", f'"{database}"')
    return [statement.strip() for statement in sql.split(";") if statement.strip()]


@pytest.fixture
def least_privilege_url(postgres_url, pg_schemas):
    """A login role with the README's grants only (no superuser, no CREATEDB, no DELETE), made by
    running the README's statements as written, with this test's role, database and schemas."""
    role = f"rp_lp_{uuid.uuid4().hex[:8]}"
    schema, sync_schema = pg_schemas
    database = postgres_url.rsplit("/", 1)[1]
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')  # stands in for public, which every database has
        for statement in readme_role_statements(role, database, schema, sync_schema):
            admin.execute(statement)
    base, _, _ = postgres_url.partition("://")
    rest = postgres_url.split("@", 1)[1]
    yield f"{base}://{role}@{rest}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.execute(f'DROP SCHEMA IF EXISTS "{sync_schema}" CASCADE')
        admin.execute(f'DROP OWNED BY "{role}"')
        admin.execute(f'DROP ROLE "{role}"')


def test_sync_runs_with_the_documented_least_privilege_role(
    writer, sync_config, least_privilege_url, pg_conn
):
    model = writer.create_model("ResNet50-Redis")
    version = writer.create_model_version(model, "v1")
    run = writer.create_training_run(version, run_name="r")
    writer.log_hyperparameters(run, {"lr": 0.1})
    writer.log_metric(run, "loss", 0.5, epoch=1)
    writer.log_predictions(
        [{"model_version_id": version, "input_data": {"x": i}, "output_data": i} for i in range(20)]
    )
    config = dataclasses.replace(sync_config, postgres_url=least_privilege_url)
    migrate(config)
    client, conn = connect_redis(config), connect_postgres(config)
    try:
        for _ in range(2):
            results = sync_all(client, conn, config)
        assert all(r.rejected == 0 for r in results.values())
        role_is_super = conn.execute(
            "SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user"
        )
        assert role_is_super.fetchone()[0] is False
    finally:
        client.close()
        conn.close()
    assert pg_conn.execute("SELECT count(*) FROM predictions").fetchone()[0] == 20
    assert pg_conn.execute("SELECT count(*) FROM metrics").fetchone()[0] == 1
