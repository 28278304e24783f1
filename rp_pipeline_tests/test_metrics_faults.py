"""The exporter when its servers fail: it always answers, within its deadline, and never shows a password.

Covers: Redis and Postgres down from the start (up 0, nothing else invented); both
going away after a good scrape (up 0, the last known values repeated with the time
they were read as their sample timestamp, fresh values again once they are back);
servers that accept connections and never answer (up 0 within the deadline); refused
credentials (up 0; the password in neither the output nor the log).
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import time
from urllib.parse import urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rp_pipeline.exporter import SyncCollector, serve_metrics
from rp_pipeline.schema import migrate

from .faults import TcpProxy, fill, free_port, with_address
from .test_metrics_exporter import samples, scrape_text, value

PASSWORD = "Pw-metr1cs-9c2d"
DEADLINE = 1.0


def sample_timestamps(text: str, name: str) -> list[float | None]:
    return [
        s.timestamp
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == name
    ]


@pytest.fixture
def silent_listener():
    """A TCP port that accepts connections and never says a word (a hung server, a black-holing proxy)."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for sock in [server, *held]:
        sock.close()


def timed_scrape(port: int) -> tuple[str, float]:
    started = time.monotonic()
    text = scrape_text(port, timeout=30)
    return text, time.monotonic() - started


def test_servers_down_from_the_start(sync_config):
    config = dataclasses.replace(
        sync_config,
        redis_url=with_address(sync_config.redis_url, free_port()),
        postgres_url=with_address(sync_config.postgres_url, free_port(), PASSWORD),
    )
    exporter = serve_metrics(config, port=0, deadline_seconds=DEADLINE)
    try:
        for _ in range(2):  # and again: a failed scrape leaves nothing behind that breaks the next
            text, seconds = timed_scrape(exporter.port)
            parsed = samples(text)
            assert value(parsed, "rp_pipeline_up", target="redis") == 0
            assert value(parsed, "rp_pipeline_up", target="postgres") == 0
            assert not [
                k
                for k in parsed
                if k[0] in ("rp_pipeline_backlog_records", "rp_pipeline_rows_total")
            ]
            assert [v for k, v in parsed.items() if k[0] == "rp_pipeline_build_info"] == [1]
            assert seconds < 2 * DEADLINE + 3
            assert PASSWORD not in text
    finally:
        exporter.close()


def test_servers_going_away_leave_the_last_values_with_their_timestamps(
    sync_config, writer, run_sync
):
    fill(writer, models=1, predictions=20)
    run_sync()
    src = sync_config.redis_address
    with (
        TcpProxy.to(sync_config.redis_url, 6379) as redis_proxy,
        TcpProxy.to(sync_config.postgres_url, 5432) as pg_proxy,
    ):
        # The same source name as the sync's: the proxied URL names the same Redis.
        config = dataclasses.replace(
            sync_config,
            redis_url=with_address(sync_config.redis_url, redis_proxy.port),
            postgres_url=with_address(sync_config.postgres_url, pg_proxy.port),
            source=src,
        )
        exporter = serve_metrics(config, port=0, deadline_seconds=DEADLINE)
        try:
            read_at = time.time()
            good = scrape_text(exporter.port)
            assert (
                value(
                    samples(good), "rp_pipeline_backlog_records", entity="predictions", source=src
                )
                == 0
            )
            assert sample_timestamps(good, "rp_pipeline_last_success_timestamp_seconds")[0] is None
            redis_proxy.kill()
            pg_proxy.kill()
            text, seconds = timed_scrape(exporter.port)
        finally:
            exporter.close()
    parsed = samples(text)
    assert value(parsed, "rp_pipeline_up", target="redis") == 0
    assert value(parsed, "rp_pipeline_up", target="postgres") == 0
    assert seconds < 2 * DEADLINE + 3
    for name in (
        "rp_pipeline_last_success_timestamp_seconds",
        "rp_pipeline_rows_total",
        "rp_pipeline_backlog_records",
    ):
        assert (
            samples(good)[next(k for k in samples(good) if k[0] == name)]
            == parsed[next(k for k in parsed if k[0] == name)]
        ), name
        stamps = set(sample_timestamps(text, name))
        assert len(stamps) == 1 and read_at - 1 < stamps.pop() < read_at + DEADLINE + 1, name


def test_values_are_fresh_again_when_the_servers_come_back(sync_config, writer, run_sync):
    fill(writer, models=1, predictions=3)
    run_sync()
    migrate(sync_config)
    collector = SyncCollector(
        dataclasses.replace(
            sync_config, postgres_url=with_address(sync_config.postgres_url, free_port())
        ),
        deadline_seconds=DEADLINE,
    )
    try:
        families = {f.name: f for f in collector.scrape()}
        assert [
            s.value for s in families["rp_pipeline_up"].samples if s.labels["target"] == "postgres"
        ] == [0]
        collector.config = sync_config  # the server is back (here: the right address)
        families = {f.name: f for f in collector.scrape()}
        assert [
            s.value for s in families["rp_pipeline_up"].samples if s.labels["target"] == "postgres"
        ] == [1]
        assert all(s.timestamp is None for s in families["rp_pipeline_rows"].samples)
        assert families["rp_pipeline_rows"].samples
    finally:
        collector.close()


@pytest.mark.parametrize("target", ["redis", "postgres"])
def test_a_server_that_never_answers_is_down_within_the_deadline(
    sync_config, silent_listener, target
):
    migrate(sync_config)
    if target == "redis":
        config = dataclasses.replace(
            sync_config, redis_url=with_address(sync_config.redis_url, silent_listener)
        )
    else:
        config = dataclasses.replace(
            sync_config,
            postgres_url=with_address(sync_config.postgres_url, silent_listener, PASSWORD),
        )
    exporter = serve_metrics(config, port=0, deadline_seconds=DEADLINE)
    try:
        for _ in range(2):
            text, seconds = timed_scrape(exporter.port)
            parsed = samples(text)
            assert value(parsed, "rp_pipeline_up", target=target) == 0
            other = "postgres" if target == "redis" else "redis"
            assert value(parsed, "rp_pipeline_up", target=other) == 1
            # libpq's connect_timeout is at least 2 s; either way far below Prometheus's 10 s scrape timeout.
            assert seconds < max(2.0, DEADLINE) + DEADLINE + 2
            assert PASSWORD not in text
    finally:
        exporter.close()


def test_refused_credentials_are_down_and_the_password_is_never_shown(sync_config, caplog):
    migrate(sync_config)
    config = dataclasses.replace(
        sync_config,
        redis_url=with_address(
            sync_config.redis_url,
            urlsplit(sync_config.redis_url).port or 6379,
            PASSWORD,
            user="no_such_user",
        ),
        postgres_url=with_address(sync_config.postgres_url, 5432, PASSWORD, user="no_such_role"),
    )
    caplog.set_level(logging.INFO, logger="rp_pipeline")
    exporter = serve_metrics(config, port=0, deadline_seconds=DEADLINE)
    try:
        text, _ = timed_scrape(exporter.port)
    finally:
        exporter.close()
    parsed = samples(text)
    assert value(parsed, "rp_pipeline_up", target="redis") == 0
    assert value(parsed, "rp_pipeline_up", target="postgres") == 0
    assert "unreachable" in caplog.text
    assert PASSWORD not in text and PASSWORD not in caplog.text
