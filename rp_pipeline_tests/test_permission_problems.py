"""A missing right is a configuration problem: one line naming what was refused and the grant to add.

Covers: a Redis user made from the README's sync line without `+set`, or without write rights
on the marker's keys, makes the engine raise PermissionProblem naming SET, the key pattern and
the `ACL SETUSER` rule; the CLI exits 2 with that one line on stderr, never "the next cycle
retries", never "Errors: 0"; a connection lost at that same SET stays a transient SyncFailed
that does say the next cycle retries; a Dagster run fails its steps with the same text, which
the API reports once (as `problem`) and counts in the statistics; a Postgres role missing one
of the README's grants (CONNECT or TEMPORARY on the database, USAGE/CREATE on the schema, the
table rights) gets the same kind of line naming that GRANT, from connecting, the engine, the
migration and the CLI.
"""

from __future__ import annotations

import dataclasses
import uuid

import dagster as dg
import psycopg
import pytest

from rp_pipeline.connections import connect_postgres, connect_redis
from rp_pipeline.engine import sync_all
from rp_pipeline.errors import PermissionProblem, SyncFailed
from rp_pipeline.schema import migrate

from .acl_support import SYNC_ACL, acl_users
from .cli_support import clean_env, run_cli
from .faults import TcpProxy, with_address

MARKER_RIGHTS = {
    "+set": "this user has no permissions to run the 'set' command",
    "%RW~aidb:rp_pipeline:*": "this user has no permissions to access one of the keys",
}


@pytest.fixture
def users(redis_url, key_prefix):
    with acl_users(redis_url, key_prefix) as made:
        yield made


def write_some(writer) -> None:
    model = writer.create_model("ResNet50-Redis")
    version = writer.create_model_version(model, "1.0")
    writer.create_dataset("ImageNet")
    writer.log_predictions(
        {"model_version_id": version, "input_data": [i], "output_data": [i]} for i in range(5)
    )


def sync_with(config):
    """As the CLI does it: connect (the pre-flight), migrate, sync."""
    client, conn = connect_redis(config), connect_postgres(config)
    try:
        migrate(config)
        return sync_all(client, conn, config)
    finally:
        client.close()
        conn.close()


def marker_refusal(user: str, prefix: str) -> str:
    return (
        f"refused user '{user}' SET on {prefix}rp_pipeline:* "
        f"(the sync's generation marker {prefix}rp_pipeline:generation"
    )


@pytest.mark.parametrize("missing", sorted(MARKER_RIGHTS))
def test_a_user_that_may_not_set_the_marker_gets_the_rule_to_add(
    missing, users, writer, key_prefix, sync_config
):
    write_some(writer)
    user, url = users.create(SYNC_ACL, drop=(missing.replace("aidb:", key_prefix),))

    with pytest.raises(PermissionProblem) as refused:
        sync_with(dataclasses.replace(sync_config, redis_url=url))

    message = str(refused.value)
    assert marker_refusal(user, key_prefix) in message and MARKER_RIGHTS[missing] in message
    assert message.endswith(
        f"ACL SETUSER {user} +set %RW~{key_prefix}rp_pipeline:* (README, Security: Redis ACL)."
    )
    assert "retries" not in message and "\n" not in message


def test_cli_exits_2_with_one_line_when_the_marker_may_not_be_set(
    users, writer, key_prefix, postgres_url, pg_schemas, work_dir
):
    write_some(writer)
    user, url = users.create(SYNC_ACL, drop=("+set",))
    schema, sync_schema = pg_schemas
    env = clean_env(
        REDIS_URL=url,
        REDIS_KEY_PREFIX=key_prefix,
        POSTGRES_URL=postgres_url,
        POSTGRES_SCHEMA=schema,
        SYNC_SCHEMA=sync_schema,
    )

    done = run_cli(["--once"], env, work_dir)

    assert done.returncode == 2, done.stdout + done.stderr
    errors = done.stderr.splitlines()
    assert len(errors) == 1
    assert errors[0].startswith(
        "Error: Redis at 127.0.0.1:6379 " + marker_refusal(user, key_prefix)
    )
    assert f"ACL SETUSER {user} +set %RW~{key_prefix}rp_pipeline:*" in errors[0]
    shown = done.stdout + done.stderr
    assert (
        "retries" not in shown
        and "Traceback" not in shown
        and url.split("@")[0].split(":")[-1] not in shown
    )
    assert "Errors: 0" not in done.stdout
    failed_lines = [line for line in done.stdout.splitlines() if "refused user" in line]
    assert len(failed_lines) == 1, failed_lines  # the entities that failed alike, named on one line


def test_the_dagster_run_fails_its_step_with_the_same_line(
    users, writer, key_prefix, sync_config, work_dir, monkeypatch
):
    from rp_pipeline.api import RedisPgSync
    from rp_pipeline.instance_storage import sync_instance

    for name in ("DAGSTER_HOME", "DAGSTER_POSTGRES_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(work_dir)
    write_some(writer)
    user, url = users.create(SYNC_ACL, drop=("+set",))

    outcome = RedisPgSync.from_config(dataclasses.replace(sync_config, redis_url=url)).sync_once()

    assert not outcome.success and outcome.problem is not None
    assert marker_refusal(user, key_prefix) in outcome.problem
    with sync_instance() as instance:
        failures = instance.all_logs(outcome.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
        messages = []
        for entry in failures:
            error = entry.dagster_event.step_failure_data.error
            while error.cause is not None:
                error = error.cause
            messages.append(error.message.strip())
    roots = {
        "models",
        "datasets",
        "experiments",
    }  # the entities without parents; the others wait on them
    assert [entry.step_key for entry in failures] == ["redis_to_postgres"]  # the cycle's one step
    assert (
        messages[0].startswith("rp_pipeline.errors.PermissionProblem: ")
        and outcome.problem in messages[0]
    )
    assert outcome.failures[0].endswith(": " + outcome.problem)
    assert set(outcome.failures[0].split(": ", 1)[0].split(", ")) == roots
    assert outcome.stats["errors"] == len(roots)


def test_a_transient_redis_fault_on_the_marker_keeps_the_retry_wording(
    writer, key_prefix, sync_config
):
    write_some(writer)
    with TcpProxy.to(sync_config.redis_url, 6379) as proxy:
        proxy.kill_after(
            f"{key_prefix}rp_pipeline:generation".encode()
        )  # the connection drops at the SET
        config = dataclasses.replace(
            sync_config, redis_url=with_address(sync_config.redis_url, proxy.port)
        )
        with pytest.raises(SyncFailed) as failure:
            sync_with(config)
        assert proxy.killed.is_set()

    assert not isinstance(failure.value, PermissionProblem)
    assert str(failure.value).startswith("models: Redis failed (")
    assert str(failure.value).endswith("nothing committed, the next cycle retries")


# -- Postgres -------------------------------------------------------------------------------------------------

README_GRANTS = {  # the README's role section, per grant left out below
    "CONNECT": 'GRANT CONNECT, TEMPORARY ON DATABASE "{database}" TO "{role}"',
    "TEMPORARY": 'GRANT CONNECT, TEMPORARY ON DATABASE "{database}" TO "{role}"',
    "schema": 'GRANT USAGE, CREATE ON SCHEMA "{schema}" TO "{role}"',
    "tables": 'GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"',
}


@pytest.fixture
def role_without(request, postgres_url, pg_schemas):
    """(role's URL, role, the grant its missing): the README's grants but the one named by the parameter."""
    missing = request.param
    role = f"rp_perm_{uuid.uuid4().hex[:8]}"
    schema, sync_schema = pg_schemas
    database = postgres_url.rsplit("/", 1)[1]
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE')
        granted = {"CONNECT": "TEMPORARY", "TEMPORARY": "CONNECT"}.get(
            missing, "CONNECT, TEMPORARY"
        )
        admin.execute(f'GRANT {granted} ON DATABASE "{database}" TO "{role}"')
        admin.execute(f'CREATE SCHEMA "{schema}"')
        if missing != "schema":
            admin.execute(f'GRANT USAGE, CREATE ON SCHEMA "{schema}" TO "{role}"')
        admin.execute(f'CREATE SCHEMA "{sync_schema}" AUTHORIZATION "{role}"')
        # PUBLIC may connect and create temporary tables by default: taken away (for this test's database
        # only, given back after), so the role has only what it was given.
        admin.execute(f'REVOKE CONNECT, TEMPORARY ON DATABASE "{database}" FROM PUBLIC')
    base, rest = postgres_url.split("://", 1)
    yield (
        f"{base}://{role}@{rest.split('@', 1)[1]}",
        role,
        README_GRANTS[missing].format(database=database, schema=schema, role=role),
    )
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'GRANT CONNECT, TEMPORARY ON DATABASE "{database}" TO PUBLIC')
        for name in (schema, sync_schema):
            admin.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        admin.execute(f'DROP OWNED BY "{role}"')
        admin.execute(f'DROP ROLE "{role}"')


@pytest.mark.parametrize(
    "role_without", ["CONNECT", "TEMPORARY", "schema", "tables"], indirect=True
)
def test_a_postgres_role_missing_a_grant_gets_the_grant_to_add(
    role_without, writer, sync_config, postgres_url
):
    url, role, grant = role_without
    config = dataclasses.replace(sync_config, postgres_url=url)
    if "ALL TABLES" in grant:  # the role made the tables; then INSERT on one is taken away from it
        sync_with(config)
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f'REVOKE INSERT ON "{config.schema}".models FROM "{role}"')
    write_some(writer)

    with pytest.raises(PermissionProblem) as refused:
        sync_with(config)

    message = str(refused.value)
    assert (
        f"Postgres at 127.0.0.1:5432 refused role '{role}'" in message
        and "permission denied" in message
    ) or "no CONNECT privilege" in message
    assert f"{grant} (README, Security: Postgres role)." in message
    assert "retries" not in message and "\n" not in message


@pytest.mark.parametrize("role_without", ["TEMPORARY"], indirect=True)
def test_cli_exits_2_with_one_line_naming_the_postgres_grant(
    role_without, writer, key_prefix, redis_url, pg_schemas, work_dir
):
    url, role, grant = role_without
    write_some(writer)
    schema, sync_schema = pg_schemas
    env = clean_env(
        REDIS_URL=redis_url,
        REDIS_KEY_PREFIX=key_prefix,
        POSTGRES_URL=url,
        POSTGRES_SCHEMA=schema,
        SYNC_SCHEMA=sync_schema,
    )

    done = run_cli(["--once"], env, work_dir)

    assert done.returncode == 2, done.stdout + done.stderr
    errors = done.stderr.splitlines()
    assert len(errors) == 1 and errors[0].startswith(
        f"Error: Postgres at 127.0.0.1:5432 refused role '{role}'"
    )
    assert grant in errors[0]
    assert "retries" not in done.stdout + done.stderr and "Errors: 0" not in done.stdout
