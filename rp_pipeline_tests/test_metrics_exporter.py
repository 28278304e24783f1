"""The Prometheus exporter against a known sync: `/metrics` parsed with prometheus_client's parser.

Covers: backlog before and after a sync (ids past the watermark plus pending records),
rows by outcome accumulating over syncs, records held as rejected and as pending, the
lag (age of the oldest record still waiting), last success/attempt and duration per
entity and source, a failed attempt moving the last attempt but not the last success,
a flushed Redis (old watermarks do not hide the new records), the `metrics` command
(one clear line when the port is taken, no password anywhere), continuous mode's
`--metrics-port`, the history of a deployment synced before revision 0005 folded into
sync_status, the `source` label taken from the sources table where it exists, and one exporter
serving several sources (two prefixes and one that is down), each series under its label.
"""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import time
import urllib.request

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rp_pipeline.connections import connect_postgres, connect_redis
from rp_pipeline.engine import lock_key, sync_entity
from rp_pipeline.entities import BY_NAME
from rp_pipeline.errors import SyncFailed
from rp_pipeline.exporter import serve_metrics
from rp_pipeline.schema import migrate
from rp_pipeline.sources import current_origin

from .cli_support import PASSWORD, clean_env, run_cli, with_password
from .faults import fill, free_port, log_predictions, write_prediction_by_hand


def scrape_text(port: int, timeout: float = 30) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as response:
        return response.read().decode()


def samples(text: str) -> dict[tuple, float]:
    """{(name, (label, value), ...): value} of every sample, parsed as Prometheus would."""
    return {
        (s.name, *sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(parsed: dict, name: str, **labels) -> float | None:
    return parsed.get((name, *sorted(labels.items())))


@pytest.fixture
def exporter(sync_config):
    migrate(sync_config)
    running = serve_metrics(sync_config, port=0, sync_interval_seconds=300)
    yield running
    running.close()


def test_metrics_follow_a_known_sync(
    exporter, sync_config, writer, redis_client, key_prefix, run_sync
):
    ids = fill(writer, predictions=200)
    # One bad model (no name: rejected) and one prediction whose version does not exist (pending).
    bad = redis_client.incr(f"{key_prefix}counter:model")
    redis_client.hset(f"{key_prefix}model:{bad}", mapping={"id": bad, "description": "no name"})
    write_prediction_by_hand(redis_client, key_prefix, version_id=9999)
    src = sync_config.redis_address

    before = samples(scrape_text(exporter.port))
    assert value(before, "rp_pipeline_up", target="redis") == 1
    assert value(before, "rp_pipeline_up", target="postgres") == 1
    assert value(before, "rp_pipeline_backlog_records", entity="predictions", source=src) == 201
    assert value(before, "rp_pipeline_backlog_records", entity="models", source=src) == 4
    assert (
        value(
            before, "rp_pipeline_last_success_timestamp_seconds", entity="predictions", source=src
        )
        is None
    )
    assert value(before, "rp_pipeline_sync_interval_seconds") == 300

    started = time.time()
    results = run_sync()
    after = samples(scrape_text(exporter.port))
    for entity, result in results.items():
        for outcome in ("inserted", "updated", "unchanged", "skipped", "rejected"):
            assert value(
                after, "rp_pipeline_rows_total", entity=entity, source=src, outcome=outcome
            ) == getattr(result, outcome), (entity, outcome)
        last = value(after, "rp_pipeline_last_success_timestamp_seconds", entity=entity, source=src)
        attempt = value(
            after, "rp_pipeline_last_attempt_timestamp_seconds", entity=entity, source=src
        )
        assert started - 1 <= attempt <= last <= time.time() + 1, entity
        assert value(
            after, "rp_pipeline_sync_duration_seconds", entity=entity, source=src
        ) == pytest.approx(result.duration_seconds)
    assert (
        value(after, "rp_pipeline_rows_total", entity="predictions", source=src, outcome="inserted")
        == 200
    )
    assert value(after, "rp_pipeline_rejected_records", entity="models", source=src) == 1
    assert value(after, "rp_pipeline_pending_records", entity="predictions", source=src) == 1
    # Synced, except the waiting prediction: backlog is the pending one; its age is the lag.
    assert value(after, "rp_pipeline_backlog_records", entity="predictions", source=src) == 1
    assert value(after, "rp_pipeline_backlog_records", entity="models", source=src) == 0
    assert (
        0
        <= value(after, "rp_pipeline_lag_seconds", entity="predictions", source=src)
        < time.time() - started + 1
    )
    assert value(after, "rp_pipeline_lag_seconds", entity="models", source=src) == 0

    # 30 predictions logged two minutes ago wait: backlog 31, lag about 120 s.
    for _ in range(30):
        write_prediction_by_hand(
            redis_client, key_prefix, ids["versions"][0], logged_at=time.time() - 120
        )
    waiting = samples(scrape_text(exporter.port))
    assert value(waiting, "rp_pipeline_backlog_records", entity="predictions", source=src) == 31
    assert 119 <= value(waiting, "rp_pipeline_lag_seconds", entity="predictions", source=src) < 160

    second = run_sync()
    again = samples(scrape_text(exporter.port))
    assert (
        value(again, "rp_pipeline_rows_total", entity="predictions", source=src, outcome="inserted")
        == 230
    )
    assert value(
        again, "rp_pipeline_rows_total", entity="models", source=src, outcome="unchanged"
    ) == (second["models"].unchanged)
    assert value(again, "rp_pipeline_sync_attempts_total", entity="predictions", source=src) == 2
    assert value(again, "rp_pipeline_sync_successes_total", entity="predictions", source=src) == 2
    assert value(again, "rp_pipeline_backlog_records", entity="predictions", source=src) == 1
    # The same bad model is seen again: counted as a rejection each time, held once.
    assert value(again, "rp_pipeline_rejected_records", entity="models", source=src) == 1


def test_a_failed_attempt_moves_last_attempt_not_last_success(
    exporter, sync_config, writer, postgres_url, run_sync
):
    fill(writer, predictions=10)
    run_sync()
    src = sync_config.redis_address
    first = samples(scrape_text(exporter.port))
    success = value(
        first, "rp_pipeline_last_success_timestamp_seconds", entity="predictions", source=src
    )
    # Another session holds the entity's sync lock: this sync gives up after its lock timeout, nothing committed.
    config = dataclasses.replace(sync_config, lock_timeout_ms=200)
    with (
        psycopg.connect(postgres_url, autocommit=True) as holder,
        connect_redis(config) as client,
        connect_postgres(config) as conn,
    ):
        holder.execute(
            "SELECT pg_advisory_lock(hashtextextended(%s, 0))",
            (lock_key(config, current_origin(config), "predictions"),),
        )
        with pytest.raises(SyncFailed, match="lock"):
            sync_entity(BY_NAME["predictions"], client, conn, config)
    later = samples(scrape_text(exporter.port))
    assert value(later, "rp_pipeline_sync_attempts_total", entity="predictions", source=src) == 2
    assert value(later, "rp_pipeline_sync_successes_total", entity="predictions", source=src) == 1
    assert (
        value(later, "rp_pipeline_last_attempt_timestamp_seconds", entity="predictions", source=src)
        > success
    )
    assert (
        value(later, "rp_pipeline_last_success_timestamp_seconds", entity="predictions", source=src)
        == success
    )


def test_after_a_flush_old_watermarks_do_not_hide_new_records(
    exporter, sync_config, writer, redis_client, key_prefix, run_sync
):
    ids = fill(writer, models=1, predictions=50)
    run_sync()
    src = sync_config.redis_address
    assert (
        value(
            samples(scrape_text(exporter.port)),
            "rp_pipeline_backlog_records",
            entity="predictions",
            source=src,
        )
        == 0
    )
    # A flush removes the counters and the generation marker; the writer starts again at id 1.
    for key in redis_client.scan_iter(match=f"{key_prefix}*"):
        redis_client.delete(key)
    log_predictions(writer, ids["versions"], 20)
    assert (
        value(
            samples(scrape_text(exporter.port)),
            "rp_pipeline_backlog_records",
            entity="predictions",
            source=src,
        )
        == 20
    )


def test_metrics_command_serves_and_a_second_one_on_the_same_port_fails_in_one_line(
    sync_config, redis_url, key_prefix, postgres_url, pg_schemas, work_dir, writer, run_sync
):
    fill(writer, models=1, predictions=5)
    run_sync()
    port = free_port()
    env = clean_env(
        REDIS_URL=redis_url,
        REDIS_KEY_PREFIX=key_prefix,
        POSTGRES_URL=with_password(postgres_url),
        POSTGRES_SCHEMA=pg_schemas[0],
        SYNC_SCHEMA=pg_schemas[1],
    )
    first = subprocess.Popen(
        [sys.executable, "-m", "rp_pipeline", "metrics", "--port", str(port)],
        env=env,
        cwd=work_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        text = None
        for _ in range(100):
            try:
                text = scrape_text(port, timeout=10)
                break
            except OSError:
                time.sleep(0.1)
        assert text is not None, "the exporter answers"
        parsed = samples(text)
        assert (
            value(
                parsed,
                "rp_pipeline_rows_total",
                entity="predictions",
                source=sync_config.redis_address,
                outcome="inserted",
            )
            == 5
        )
        assert PASSWORD not in text

        second = run_cli(["metrics", "--port", str(port)], env, work_dir, timeout=60)
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert (
            len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "already in use" in lines[0]
        ), second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=30)
    assert first.returncode == 0, err
    assert PASSWORD not in out + err


def test_continuous_mode_serves_metrics_on_metrics_port(
    redis_url, key_prefix, postgres_url, pg_schemas, work_dir, writer, sync_config
):
    fill(writer, models=1, predictions=7)
    port = free_port()
    env = clean_env(
        REDIS_URL=redis_url,
        REDIS_KEY_PREFIX=key_prefix,
        POSTGRES_URL=with_password(postgres_url),
        POSTGRES_SCHEMA=pg_schemas[0],
        SYNC_SCHEMA=pg_schemas[1],
    )
    sync = subprocess.Popen(
        [sys.executable, "-m", "rp_pipeline", "--interval", "300", "--metrics-port", str(port)],
        env=env,
        cwd=work_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        inserted = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and inserted != 7:  # 0 until the first cycle commits
            try:
                parsed = samples(scrape_text(port, timeout=10))
                inserted = value(
                    parsed,
                    "rp_pipeline_rows_total",
                    entity="predictions",
                    source=sync_config.redis_address,
                    outcome="inserted",
                )
            except OSError:
                pass
            time.sleep(0.5)
        assert inserted == 7
        assert value(parsed, "rp_pipeline_sync_interval_seconds") == 300
        assert (
            value(
                parsed,
                "rp_pipeline_backlog_records",
                entity="predictions",
                source=sync_config.redis_address,
            )
            == 0
        )
    finally:
        sync.send_signal(signal.SIGTERM)
        out, err = sync.communicate(timeout=60)
    assert sync.returncode == 0, err
    assert f"Prometheus metrics on http://127.0.0.1:{port}/metrics" in out


def test_an_upgraded_deployment_starts_with_its_history_folded_in(
    sync_config, writer, postgres_url, run_sync
):
    """Revision 0005 on a database synced before it existed: totals and last success come from entity_runs."""
    fill(writer, models=2, predictions=30)
    run_sync()
    run_sync()
    s = f'"{sync_config.sync_schema}"'
    # (last_success_at is the commit time; entity_runs keeps the transaction's start: not compared.)
    columns = (
        "successes, inserted_total, updated_total, unchanged_total, skipped_total, rejected_total, pending, "
        "rejected_held, last_run_id, last_duration_seconds"
    )
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        before = conn.execute(
            f"SELECT entity, {columns} FROM {s}.sync_status ORDER BY entity"
        ).fetchall()
        conn.execute(f"DROP TABLE {s}.sync_status")
        conn.execute(f"UPDATE {s}.alembic_version SET version_num = %s", (revision_before("0005"),))
    migrate(sync_config)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        after = conn.execute(
            f"SELECT entity, {columns} FROM {s}.sync_status ORDER BY entity"
        ).fetchall()
        attempts = conn.execute(f"SELECT DISTINCT attempts FROM {s}.sync_status").fetchall()
    assert len(before) == 9 and after == before
    assert attempts == [(2,)]


def test_source_label_is_sync_source_else_the_address(exporter, sync_config, writer, run_sync):
    """The `source` label is SYNC_SOURCE as the sync recorded it in {sync_schema}.sources, else the
    address the exporter reads (it survives a flush, unlike the data set's origin); one series either way."""
    fill(writer, models=1, predictions=10)
    run_sync()
    log_predictions(writer, [1], 4)
    unlabelled = samples(scrape_text(exporter.port))
    run_sync(source="redis-main")
    labelled = samples(scrape_text(exporter.port))
    assert (
        value(
            unlabelled,
            "rp_pipeline_backlog_records",
            entity="predictions",
            source=sync_config.redis_address,
        )
        == 4
    )
    assert (
        value(labelled, "rp_pipeline_backlog_records", entity="predictions", source="redis-main")
        == 0
    )
    assert (
        value(
            labelled,
            "rp_pipeline_rows_total",
            entity="predictions",
            source="redis-main",
            outcome="inserted",
        )
        == 14
    )
    assert not [k for k in labelled if ("source", sync_config.redis_address) in k]


def revision_before(revision: str) -> str:
    """The revision a migration follows (so the test survives revisions added before or after it)."""
    from alembic.script import ScriptDirectory

    from rp_pipeline.schema import MIGRATIONS_DIR

    return ScriptDirectory(str(MIGRATIONS_DIR)).get_revision(revision).down_revision


def test_one_exporter_serves_every_source_each_series_labelled_with_its_source(
    redis_url, key_prefix, postgres_url, pg_schemas, writer
):
    """REDIS_URL naming several sources (here two prefixes in one Redis, and one that is down): one
    `/metrics` with each source's series under source=<label>, and each source's Redis in
    `rp_pipeline_up`; a source that is down leaves the others' figures whole."""
    import uuid

    from rp_pipeline.engine import sync_all
    from rp_pipeline.settings import SyncConfig
    from rp_pipeline.writer import RedisWriter

    second = f"{key_prefix}b:"  # removed with the test's prefix
    schema, sync_schema = pg_schemas
    config = SyncConfig(
        redis_url=f"{redis_url}?key_prefix={key_prefix}&label=tenant-a,"
        f"{redis_url}?key_prefix={second}&label=tenant-b,"
        f"redis://127.0.0.1:{free_port()}/0?label=down",
        postgres_url=postgres_url,
        schema=schema,
        sync_schema=sync_schema,
    )
    other = RedisWriter.from_url(redis_url, key_prefix=second)
    versions = {
        "tenant-a": fill(writer, models=1, predictions=10)["versions"],
        "tenant-b": fill(other, models=2, predictions=3, tag="b")["versions"],
    }
    for label in versions:
        one = config.for_source(label)
        migrate(one)
        with connect_redis(one) as client, connect_postgres(one) as conn:
            sync_all(client, conn, one, run_id=uuid.uuid4().hex)
    log_predictions(other, versions["tenant-b"], 4)
    other.close()

    running = serve_metrics(config, port=0, deadline_seconds=1, sync_interval_seconds=300)
    try:
        text = scrape_text(running.port)
    finally:
        running.close()
    parsed = samples(text)

    def rows(source: str) -> float | None:
        return value(
            parsed,
            "rp_pipeline_rows_total",
            entity="predictions",
            source=source,
            outcome="inserted",
        )

    assert (rows("tenant-a"), rows("tenant-b")) == (10, 3)
    backlog = {
        source: value(parsed, "rp_pipeline_backlog_records", entity="predictions", source=source)
        for source in ("tenant-a", "tenant-b")
    }
    assert backlog == {"tenant-a": 0, "tenant-b": 4}
    assert (
        value(
            parsed, "rp_pipeline_rows_total", entity="models", source="tenant-b", outcome="inserted"
        )
        == 2
    )
    up = {k: v for k, v in parsed.items() if k[0] == "rp_pipeline_up"}
    assert up == {
        ("rp_pipeline_up", ("source", source), ("target", target)): ok
        for source, ok in (("tenant-a", 1), ("tenant-b", 1), ("down", 0))
        for target, ok in (("redis", ok), ("postgres", 1))
    }
    # Every other series names a source of REDIS_URL, and the build and interval appear once.
    unsourced = {"rp_pipeline_build_info", "rp_pipeline_sync_interval_seconds"}
    assert {dict(k[1:]).get("source") for k in parsed if k[0] not in unsourced} == {
        "tenant-a",
        "tenant-b",
        "down",
    }
    lines = text.splitlines()
    for once in ("rp_pipeline_build_info{", "rp_pipeline_sync_interval_seconds "):
        assert len([line for line in lines if line.startswith(once)]) == 1, once
