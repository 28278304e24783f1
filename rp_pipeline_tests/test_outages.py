"""Postgres or Redis going away, and Postgres making the sync wait, before or during a cycle.

Covers: a server that is down when the cycle starts (a clear error naming host and
port, never the password); a connection that dies before the first statement; a
Postgres connection killed in the middle of the predictions load and a Redis
connection killed in the middle of the predictions read (through a TCP proxy in
front of the real server) — the error names the entity, the entity commits nothing
(row count and watermark unchanged), and the next cycle through a working
connection recovers everything; a table lock, an advisory lock and a statement
timeout: each wait is bounded by the configured timeout, reported as an error
naming the entity, and the next cycle syncs everything; servers that stop
answering but keep the connection open (a paused proxy, a silent listener) fail
the cycle clearly within a bounded time (client-side deadlines).
"""

from __future__ import annotations

import dataclasses
import socket
import threading
import time

import psycopg
import pytest

from rp_pipeline.connections import connect_redis
from rp_pipeline.engine import lock_key
from rp_pipeline.entities import BY_NAME
from rp_pipeline.errors import ConnectionProblem, SyncFailed
from rp_pipeline.schema import migrate
from rp_pipeline.sources import current_origin

from .faults import (
    TcpProxy,
    differences,
    fill,
    free_port,
    log_predictions,
    postgres_truth,
    redis_truth,
    run_cycle,
    table_counts,
    traceback_text,
    watermark,
    with_address,
)

PASSWORD = (
    "Pw-s3cr3t-7f1e"  # trust auth and a password-less Redis user accept it; it must never be shown
)


@pytest.fixture
def config(sync_config):
    # No source name is needed for the direct and the proxied URLs to be one source: they show one data set.
    return dataclasses.replace(sync_config, chunk_size=5000)


def assert_recovered(config, redis_client, pg_conn) -> None:
    """A cycle through working connections leaves Postgres equal to Redis."""
    run_cycle(config, "recovery")
    assert (
        differences(
            redis_truth(redis_client, config.key_prefix), postgres_truth(pg_conn, config.schema)
        )
        == {}
    )


def assert_clear(exc: BaseException, *words: str) -> None:
    text = traceback_text(exc)
    print(f"\nOUTAGE reported: {exc}")
    assert PASSWORD not in text
    for word in words:
        assert word in str(exc), f"{word!r} not in {str(exc)!r}"


def snapshot(pg_conn, config) -> tuple[dict, int | None]:
    return table_counts(pg_conn, config.schema), watermark(
        pg_conn, config.sync_schema, "predictions"
    )


# -- Postgres ------------------------------------------------------------------------------------------


def test_postgres_down_when_the_cycle_starts(writer, config, redis_client, pg_conn):
    fill(writer, predictions=200)
    port = free_port()
    down = dataclasses.replace(
        config, postgres_url=with_address(config.postgres_url, port, PASSWORD, "postgres")
    )

    with pytest.raises(ConnectionProblem) as failure:
        run_cycle(down, migrate_first=False)
    assert_clear(failure.value, f"127.0.0.1:{port}", "cannot connect to Postgres")
    with pytest.raises(
        Exception
    ) as migration_failure:  # the migration is the first thing a run does
        migrate(down)
    assert PASSWORD not in traceback_text(migration_failure.value)

    assert_recovered(config, redis_client, pg_conn)


def test_postgres_connection_dies_before_the_first_statement(writer, config, redis_client, pg_conn):
    fill(writer, predictions=200)
    migrate(config)
    from rp_pipeline.connections import connect_postgres, connect_redis
    from rp_pipeline.engine import sync_all

    with TcpProxy.to(config.postgres_url, 5432) as proxy:
        proxied = dataclasses.replace(
            config, postgres_url=with_address(config.postgres_url, proxy.port, PASSWORD)
        )
        client, conn = connect_redis(proxied), connect_postgres(proxied)
        proxy.kill()
        with pytest.raises(SyncFailed) as failure:
            sync_all(client, conn, proxied)
        client.close()
        conn.close()
    assert_clear(failure.value, "models", "nothing committed")
    assert sum(table_counts(pg_conn, config.schema).values()) == 0

    assert_recovered(config, redis_client, pg_conn)


def test_postgres_lost_mid_predictions_load_commits_nothing_of_predictions(
    writer, config, redis_client, pg_conn
):
    versions = fill(writer, predictions=1000)["versions"]
    run_cycle(config, "before")
    before = snapshot(pg_conn, config)
    assert before[1] == 1000
    log_predictions(writer, versions, 20_000, tag="backlog")  # four chunks of 5,000

    with TcpProxy.to(config.postgres_url, 5432) as proxy:
        # Die in the middle of the third chunk's COPY data (each backlog row carries the tag once):
        # two chunks are loaded, uncommitted.
        proxy.kill_after(b'"tag": "backlog"', occurrence=2 * 5000 + 2500)
        proxied = dataclasses.replace(
            config, postgres_url=with_address(config.postgres_url, proxy.port, PASSWORD)
        )
        started = time.monotonic()
        with pytest.raises(SyncFailed) as failure:
            run_cycle(proxied, "interrupted", migrate_first=False)
        assert proxy.killed.is_set()
    assert time.monotonic() - started < 60
    assert_clear(failure.value, "predictions", "Postgres", "nothing committed")
    assert snapshot(pg_conn, config) == before  # not one row, and not the watermark

    assert_recovered(config, redis_client, pg_conn)
    assert watermark(pg_conn, config.sync_schema, "predictions") == 21_000


# -- Redis ---------------------------------------------------------------------------------------------


def test_redis_down_when_the_cycle_starts(writer, config, redis_client, pg_conn):
    fill(writer, predictions=200)
    port = free_port()
    down = dataclasses.replace(
        config, redis_url=with_address(config.redis_url, port, PASSWORD, "default")
    )

    with pytest.raises(ConnectionProblem) as failure:
        run_cycle(down)
    assert_clear(failure.value, f"127.0.0.1:{port}", "cannot connect to Redis")

    assert_recovered(config, redis_client, pg_conn)


def test_redis_lost_mid_predictions_read_commits_nothing_of_predictions(
    writer, config, redis_client, pg_conn
):
    versions = fill(writer, predictions=1000)["versions"]
    run_cycle(config, "before")
    before = snapshot(pg_conn, config)
    log_predictions(writer, versions, 20_000, tag="backlog")

    with TcpProxy.to(config.redis_url, 6379) as proxy:
        # Each prediction key is sent once per read: die in the middle of the third chunk's HMGETs.
        proxy.kill_after(f"{config.key_prefix}prediction:".encode(), occurrence=2 * 5000 + 2500)
        proxied = dataclasses.replace(
            config, redis_url=with_address(config.redis_url, proxy.port, PASSWORD, "default")
        )
        started = time.monotonic()
        with pytest.raises(SyncFailed) as failure:
            run_cycle(proxied, "interrupted", migrate_first=False)
        assert proxy.killed.is_set()
    assert time.monotonic() - started < 60
    assert_clear(failure.value, "predictions", "Redis", "nothing committed")
    assert snapshot(pg_conn, config) == before

    assert_recovered(config, redis_client, pg_conn)


# -- Postgres making us wait ----------------------------------------------------------------------------


@pytest.mark.parametrize("holder", ["table lock", "advisory lock"])
def test_lock_wait_is_bounded_reported_and_retried(
    writer, config, redis_client, pg_conn, postgres_url, holder
):
    versions = fill(writer, predictions=500)["versions"]
    run_cycle(config, "before")
    log_predictions(writer, versions, 500, tag="more")
    before = snapshot(pg_conn, config)
    impatient = dataclasses.replace(config, lock_timeout_ms=300)

    with psycopg.connect(
        postgres_url
    ) as other:  # another session, holding its lock in an open transaction
        if holder == "table lock":
            other.execute(f'LOCK TABLE "{config.schema}".predictions IN ACCESS EXCLUSIVE MODE')
        else:
            other.execute(
                "SELECT pg_advisory_lock(hashtextextended(%s, 0))",
                (lock_key(config, current_origin(config), "predictions"),),
            )
        started = time.monotonic()
        with pytest.raises(SyncFailed) as failure:
            run_cycle(impatient, "blocked")
        waited = time.monotonic() - started
        other.rollback()
        other.execute("SELECT pg_advisory_unlock_all()")
    assert waited < 15, f"the cycle waited {waited:.1f} s for a 0.3 s lock timeout"
    assert_clear(failure.value, "predictions", "lock", "300 ms")
    assert snapshot(pg_conn, config) == before

    assert_recovered(config, redis_client, pg_conn)


def test_statement_timeout_is_bounded_reported_and_retried(writer, config, redis_client, pg_conn):
    versions = fill(writer, predictions=200)["versions"]
    run_cycle(config, "before")
    log_predictions(writer, versions, 40_000, tag="big")
    before = snapshot(pg_conn, config)
    hasty = dataclasses.replace(
        config, statement_timeout_ms=25, chunk_size=50_000
    )  # one 40k-row upsert

    started = time.monotonic()
    with pytest.raises(SyncFailed) as failure:
        run_cycle(hasty, "timed-out")
    assert time.monotonic() - started < 30
    entity = str(failure.value).split(":", 1)[0]
    assert entity in BY_NAME, f"the error does not start with the entity: {failure.value}"
    assert_clear(failure.value, "statement timeout", "25 ms")
    assert snapshot(pg_conn, config)[1] == before[1]
    assert table_counts(pg_conn, config.schema)["predictions"] == before[0]["predictions"]

    assert_recovered(config, redis_client, pg_conn)


# -- servers that stop answering without closing the connection -----------------------------------------------


def in_thread(work) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def run():
        try:
            outcome["result"] = work()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_postgres_that_stops_answering_mid_load_fails_the_cycle_in_bounded_time(
    writer, config, redis_client, pg_conn
):
    versions = fill(writer, predictions=1000)["versions"]
    run_cycle(config, "before")
    before = snapshot(pg_conn, config)
    log_predictions(writer, versions, 20_000, tag="backlog")
    proxy = TcpProxy.to(config.postgres_url, 5432)
    proxy.pause_after(b'"tag": "backlog"', occurrence=2 * 5000 + 2500)
    proxied = dataclasses.replace(
        config,
        postgres_url=with_address(config.postgres_url, proxy.port, PASSWORD),
        statement_timeout_ms=2000,
        lock_timeout_ms=1000,
    )

    thread, outcome = in_thread(lambda: run_cycle(proxied, "hung", migrate_first=False))
    thread.join(20)  # ten times the statement timeout
    hung = thread.is_alive()
    proxy.kill()  # now the connection dies for real, and the cycle ends
    thread.join(30)
    assert proxy.paused.is_set()
    assert snapshot(pg_conn, config) == before
    assert_recovered(config, redis_client, pg_conn)
    assert not hung, (
        "the cycle was still waiting 20 s after Postgres stopped answering (2 s statement timeout)"
    )
    assert isinstance(outcome.get("error"), SyncFailed) and "predictions" in str(outcome["error"])


def test_redis_that_never_answers_fails_clearly_in_bounded_time(sync_config):
    silent = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(silent.accept()[0]), daemon=True).start()
    url = with_address(sync_config.redis_url, silent.getsockname()[1], PASSWORD, "default")

    thread, outcome = in_thread(
        lambda: connect_redis(dataclasses.replace(sync_config, redis_url=url))
    )
    thread.join(15)
    hung = thread.is_alive()
    for sock in [silent, *held]:
        sock.close()
    thread.join(30)
    assert not hung, (
        "connect_redis was still waiting 15 s after connecting to a Redis that never answers"
    )
    assert isinstance(outcome.get("error"), ConnectionProblem)
    assert PASSWORD not in traceback_text(outcome["error"])
