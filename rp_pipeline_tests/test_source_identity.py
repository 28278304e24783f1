"""A source is the Redis data set, not the address it was reached by.

Covers: one Redis synced through `127.0.0.1`, `localhost` and a TCP forwarder (and a
replica of its own, on servers this module starts) adds every row once, with records
written between the syncs landing exactly once, and all bookkeeping under one origin;
two syncs reaching one Redis by two names take turns on one lock and, started at once,
add every row once; a database the previous version synced (origins named
host:port/db/prefix, no `sources` table, schema at revision 0001) gains no duplicate
after upgrading, even when that version had synced it under two names; a flushed Redis
is a new data set whose records become new rows under a new origin; `SYNC_SOURCE` is
recorded as a label and renaming it adds nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import subprocess
import threading
import time
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis

from rp_pipeline.engine import lock_key
from rp_pipeline.errors import SyncFailed
from rp_pipeline.extract import RedisSource
from rp_pipeline.schema import migrate
from rp_pipeline.sources import current_origin

from .faults import (
    TABLES,
    TcpProxy,
    delete_prefix,
    differences,
    fill,
    free_port,
    log_predictions,
    postgres_truth,
    redis_truth,
    run_cycle,
    table_counts,
    with_address,
)

SOURCE_COLUMN_TABLES = (
    "watermarks",
    "id_map",
    "pending",
    "rejected_records",
    "entity_runs",
    "metric_series",
    "state",
)


@pytest.fixture
def redis_client(redis_url):
    """A reading client patient enough for a machine shared with other test runs (redis-py's default
    gives up after 5 s)."""
    with redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=60) as client:
        yield client


def at_host(url: str, host: str, port: int = 6379) -> str:
    return urlunsplit(urlsplit(url)._replace(netloc=f"{host}:{port}"))


def sources(conn, sync_schema: str) -> list[tuple]:
    return conn.execute(
        f'SELECT generation, origin, label, last_address FROM "{sync_schema}".sources '
        "ORDER BY first_seen"
    ).fetchall()


def origins_in_rows(conn, schema: str) -> set[str | None]:
    return {
        row[0]
        for t in TABLES
        for row in conn.execute(f'SELECT DISTINCT origin_source FROM "{schema}".{t}')
    }


def origins_in_bookkeeping(conn, sync_schema: str) -> set[str]:
    return {
        row[0]
        for t in SOURCE_COLUMN_TABLES
        for row in conn.execute(f'SELECT DISTINCT source FROM "{sync_schema}".{t}')
    }


def inserted(results) -> int:
    return sum(r.inserted for r in results.values())


def assert_postgres_equals_redis(redis_client, prefix: str, pg_conn, schema: str) -> None:
    """Every record exactly once: nothing missing, nothing duplicated, nothing else."""
    assert differences(redis_truth(redis_client, prefix), postgres_truth(pg_conn, schema)) == {}


def test_one_redis_through_127_0_0_1_localhost_and_a_forwarder_adds_every_row_once(
    writer, redis_client, key_prefix, sync_config, run_sync, pg_conn
):
    fill(writer, predictions=300)
    direct = at_host(sync_config.redis_url, "127.0.0.1")
    run_sync(redis_url=direct)
    counts = table_counts(pg_conn, sync_config.schema)
    assert all(counts.values()), counts
    assert_postgres_equals_redis(redis_client, key_prefix, pg_conn, sync_config.schema)

    with TcpProxy.to(direct, 6379) as forwarder:
        others = {
            "localhost": at_host(sync_config.redis_url, "localhost"),
            "forwarder": with_address(direct, forwarder.port),
        }
        for name, url in others.items():
            results = run_sync(redis_url=url)
            assert inserted(results) == 0, name
            assert table_counts(pg_conn, sync_config.schema) == counts, name

        # Records written between syncs land once, whichever address reads them.
        for round_, url in enumerate([others["localhost"], others["forwarder"], direct]):
            fill(
                writer, models=1, runs_per_version=1, points=3, predictions=20, tag=f"-new{round_}"
            )
            run_sync(redis_url=url)
            assert_postgres_equals_redis(redis_client, key_prefix, pg_conn, sync_config.schema)
        assert forwarder.connections > 0  # the forwarder really carried a sync

    [(generation, origin, _, address)] = sources(pg_conn, sync_config.sync_schema)
    assert generation == RedisSource(redis_client, key_prefix).marker()
    assert (
        address == f"127.0.0.1:6379/{urlsplit(direct).path[1:]}/{key_prefix}"
    )  # the last one used, for people
    assert origins_in_rows(pg_conn, sync_config.schema) == {origin}
    assert origins_in_bookkeeping(pg_conn, sync_config.sync_schema) == {origin}


def test_two_syncs_reaching_one_redis_by_two_names_take_turns_on_one_lock(
    writer, sync_config, run_sync, postgres_url
):
    writer.create_model("locked-out")
    direct = dataclasses.replace(sync_config, redis_url=at_host(sync_config.redis_url, "127.0.0.1"))
    migrate(direct)
    with psycopg.connect(postgres_url, autocommit=True) as other_sync:
        other_sync.execute(
            "SELECT pg_advisory_lock(hashtextextended(%s, 0))",
            (lock_key(direct, current_origin(direct), "models"),),
        )
        with pytest.raises(SyncFailed, match=r"^models: .*lock"):
            run_sync(redis_url=at_host(sync_config.redis_url, "localhost"), lock_timeout_ms=200)


def test_two_syncs_started_at_once_through_two_names_add_every_row_once(
    writer, redis_client, key_prefix, sync_config, pg_conn
):
    fill(writer, predictions=2000)
    migrate(sync_config)
    configs = [
        dataclasses.replace(sync_config, redis_url=at_host(sync_config.redis_url, host))
        for host in ("127.0.0.1", "localhost")
    ]
    outcomes: list = []
    threads = [
        threading.Thread(target=lambda c=c: outcomes.append(run_cycle(c, migrate_first=False)))
        for c in configs
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(outcomes) == 2  # both finished, neither failed
    assert_postgres_equals_redis(redis_client, key_prefix, pg_conn, sync_config.schema)
    assert len(sources(pg_conn, sync_config.sync_schema)) == 1


# -- upgrading a database the previous version synced -----------------------------------------------------


def previous_version_name(redis_url: str, prefix: str) -> str:
    """How the previous version named a source: host:port/db/prefix of the URL it was given."""
    parts = urlsplit(redis_url)
    return f"{parts.hostname}:{parts.port or 6379}/{parts.path.lstrip('/') or '0'}/{prefix}"


def make_previous_version_database(conn, config, legacy: str) -> None:
    """Turn a database this version synced into the one the previous version would have left: every
    origin and bookkeeping source named by address, no `sources` table, schema at revision 0001."""
    [(_, origin, _, _)] = sources(conn, config.sync_schema)
    a, s = f'"{config.schema}"', f'"{config.sync_schema}"'
    for table in TABLES:
        conn.execute(
            f"UPDATE {a}.{table} SET origin_source = %s WHERE origin_source = %s", (legacy, origin)
        )
    for table in SOURCE_COLUMN_TABLES:
        conn.execute(f"UPDATE {s}.{table} SET source = %s WHERE source = %s", (legacy, origin))
    conn.execute(f"DROP TABLE {s}.sources")
    conn.execute(f"UPDATE {s}.alembic_version SET version_num = '0001'")


@pytest.fixture
def previous_version_database(writer, key_prefix, sync_config, run_sync, pg_conn):
    """All nine entities synced through 127.0.0.1, then rewritten as the previous version left them."""
    fill(writer, predictions=200)
    direct = at_host(sync_config.redis_url, "127.0.0.1")
    run_sync(redis_url=direct)
    legacy = previous_version_name(direct, key_prefix)
    make_previous_version_database(pg_conn, sync_config, legacy)
    assert origins_in_rows(pg_conn, sync_config.schema) == {legacy}
    return legacy


def test_upgrading_a_database_the_previous_version_synced_adds_no_duplicate(
    previous_version_database, writer, redis_client, key_prefix, sync_config, run_sync, pg_conn
):
    legacy = previous_version_database
    counts = table_counts(pg_conn, sync_config.schema)

    results = run_sync(
        redis_url=at_host(sync_config.redis_url, "localhost")
    )  # migrates to 0002 first

    assert inserted(results) == 0
    assert table_counts(pg_conn, sync_config.schema) == counts
    assert [row[:2] for row in sources(pg_conn, sync_config.sync_schema)] == [
        (RedisSource(redis_client, key_prefix).marker(), legacy)
    ]
    fill(writer, models=1, runs_per_version=1, points=3, predictions=20, tag="-after-upgrade")
    run_sync(redis_url=at_host(sync_config.redis_url, "localhost"))
    assert_postgres_equals_redis(redis_client, key_prefix, pg_conn, sync_config.schema)
    assert origins_in_rows(pg_conn, sync_config.schema) == {legacy}
    assert origins_in_bookkeeping(pg_conn, sync_config.sync_schema) == {legacy}


def test_after_an_upgrade_a_data_set_the_previous_version_synced_under_two_names_keeps_the_bigger_one(
    previous_version_database, redis_client, key_prefix, sync_config, run_sync, pg_conn, caplog
):
    legacy = previous_version_database
    s = f'"{sync_config.sync_schema}"'
    other = previous_version_name(at_host(sync_config.redis_url, "localhost"), key_prefix)
    # The previous version also synced it through localhost: fewer ids mapped there, a later watermark.
    pg_conn.execute(
        f"INSERT INTO {s}.id_map (source, entity, redis_id, generation, pg_id) "
        f"SELECT %s, entity, redis_id, generation, pg_id FROM {s}.id_map WHERE entity = 'models'",
        (other,),
    )
    pg_conn.execute(
        f"INSERT INTO {s}.watermarks (source, entity, generation, last_id, updated_at) "
        f"SELECT %s, entity, generation, last_id, now() + interval '1 hour' FROM {s}.watermarks",
        (other,),
    )
    counts = table_counts(pg_conn, sync_config.schema)

    with caplog.at_level(logging.WARNING, logger="rp_pipeline"):
        results = run_sync()

    assert inserted(results) == 0 and table_counts(pg_conn, sync_config.schema) == counts
    assert [row[1] for row in sources(pg_conn, sync_config.sync_schema)] == [legacy]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(legacy in w and other in w for w in warnings), warnings


# -- a flushed Redis; the label ---------------------------------------------------------------------------


def test_a_flushed_redis_is_a_new_data_set_whose_records_become_new_rows(
    writer, redis_client, key_prefix, sync_config, run_sync, pg_conn
):
    fill(writer, models=2, predictions=30, tag="-one")
    run_sync()
    [(old_generation, old_origin, _, _)] = sources(pg_conn, sync_config.sync_schema)
    before = {
        t: pg_conn.execute(f'SELECT * FROM "{sync_config.schema}".{t} ORDER BY id').fetchall()
        for t in TABLES
    }
    delete_prefix(redis_client, key_prefix)
    fill(writer, models=2, predictions=30, tag="-two")

    run_sync()

    [old, new] = sources(pg_conn, sync_config.sync_schema)
    assert (
        old[:2] == (old_generation, old_origin)
        and new[0] != old_generation
        and new[1] != old_origin
    )
    after = {
        t: pg_conn.execute(f'SELECT * FROM "{sync_config.schema}".{t} ORDER BY id').fetchall()
        for t in TABLES
    }
    for table in TABLES:
        assert after[table][: len(before[table])] == before[table], table  # earlier rows untouched
        assert len(after[table]) == 2 * len(before[table]), table
    assert origins_in_rows(pg_conn, sync_config.schema) == {old_origin, new[1]}


def test_sync_source_is_recorded_as_a_label_and_renaming_it_adds_nothing(
    writer, sync_config, run_sync, pg_conn
):
    fill(writer, models=1, predictions=20)
    run_sync(source="lab redis")
    counts = table_counts(pg_conn, sync_config.schema)
    [(generation, origin, label, _)] = sources(pg_conn, sync_config.sync_schema)
    assert label == "lab redis" and origin != "lab redis"

    results = run_sync(source="lab redis, renamed")

    assert inserted(results) == 0 and table_counts(pg_conn, sync_config.schema) == counts
    assert [row[:3] for row in sources(pg_conn, sync_config.sync_schema)] == [
        (generation, origin, "lab redis, renamed")
    ]
    run_sync()  # a sync without the setting leaves the label others gave
    assert sources(pg_conn, sync_config.sync_schema)[0][2] == "lab redis, renamed"
    assert origins_in_rows(pg_conn, sync_config.schema) == {origin}


# -- a replica (on a primary and a replica this module starts) -----------------------------------------------


def _start_redis(*args: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            *args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while True:
        try:
            with redis.Redis.from_url(url) as client:
                client.ping()
            return proc, url
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                raise


@pytest.fixture
def primary_and_replica(tmp_path):
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed")
    started = []
    try:
        (tmp_path / "primary").mkdir()
        (tmp_path / "replica").mkdir()
        primary, primary_url = _start_redis("--dir", str(tmp_path / "primary"))
        started.append(primary)
        replica, replica_url = _start_redis(
            "--dir",
            str(tmp_path / "replica"),
            "--replicaof",
            "127.0.0.1",
            str(urlsplit(primary_url).port),
        )
        started.append(replica)
        yield primary_url, replica_url
    finally:
        for proc in started:
            proc.kill()
            proc.wait(timeout=10)


def replicated(primary_url: str) -> None:
    """Wait until the replica holds everything written to the primary so far."""
    with redis.Redis.from_url(primary_url, socket_timeout=60) as primary:
        assert primary.execute_command("WAIT", 1, 30_000) == 1


def test_a_replica_is_the_same_source_as_its_primary(
    primary_and_replica, key_prefix, sync_config, run_sync, pg_conn
):
    from rp_pipeline.writer import RedisWriter

    primary_url, replica_url = primary_and_replica
    with RedisWriter.from_url(primary_url, key_prefix=key_prefix) as writer:
        fill(writer, predictions=100)
    replicated(primary_url)
    # A replica cannot set the marker of a data set never synced: the sync says what to do.
    with pytest.raises(SyncFailed, match="read-only replica"):
        run_sync(redis_url=replica_url)

    run_sync(redis_url=primary_url)
    counts = table_counts(pg_conn, sync_config.schema)
    with RedisWriter.from_url(primary_url, key_prefix=key_prefix) as writer:
        log_predictions(writer, [1], 10, tag="-late")
    replicated(primary_url)
    results = run_sync(redis_url=replica_url)

    assert inserted(results) == 10  # only the new predictions
    assert table_counts(pg_conn, sync_config.schema) == {
        **counts,
        "predictions": counts["predictions"] + 10,
    }
    with redis.Redis.from_url(replica_url, decode_responses=True, socket_timeout=60) as replica:
        assert_postgres_equals_redis(replica, key_prefix, pg_conn, sync_config.schema)
    assert len(sources(pg_conn, sync_config.sync_schema)) == 1
