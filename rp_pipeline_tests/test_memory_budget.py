"""The memory budget (SYNC_MEMORY_BUDGET_MB): chunks close on bytes as well as records.

A backlog many times the budget syncs completely; a record bigger than the budget syncs on its
own; a record with a value past what Postgres accepts in one value is rejected with its size
while the rest syncs; the metadata reports the bytes read and the largest record; and a sync in a
process of its own stays within its budget plus a stated allowance (its peak RSS from /proc).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rp_pipeline.entities import JSONB
from rp_pipeline.extract import MAX_VALUE_BYTES

MiB = 1 << 20


def embedding(i: int, floats: int = 1536) -> str:
    """An embedding as an application's json.dumps writes it: about 20 characters per float."""
    return json.dumps(
        {"embedding": [((i * 7919 + k) % 10007) / 10007.0 - 0.123456789 for k in range(floats)]}
    )


def write_wide_predictions(
    client, prefix: str, version_id: int, count: int, floats: int = 1536, first: int = 1
) -> int:
    """`count` predictions with wide inputs, written as the writer lays them out; returns their bytes."""
    total = 0
    pipe = client.pipeline(transaction=False)
    for i in range(first, first + count):
        value = embedding(i, floats)
        total += len(value)
        pipe.hset(
            f"{prefix}prediction:{i}",
            mapping={
                "id": i,
                "model_version_id": version_id,
                "input": value,
                "output": '{"label": "cat"}',
                "confidence": "0.9",
                "inference_time_ms": "3.5",
                "timestamp": "2026-01-02T03:04:05",
                "metadata": "{}",
            },
        )
        if len(pipe) >= 200:
            pipe.execute()
    pipe.execute()
    client.set(f"{prefix}counter:prediction", first + count - 1)
    return total


@pytest.fixture
def version_id(writer):
    return writer.create_model_version(writer.create_model("embedder"), "1.0")


def loaded(pg_conn) -> list[tuple[int, int]]:
    return pg_conn.execute(
        "SELECT origin_redis_id, length(input_data::text) FROM predictions ORDER BY origin_redis_id"
    ).fetchall()


def test_backlog_many_times_the_budget_syncs_completely(
    run_sync, redis_client, key_prefix, version_id, pg_conn
):
    written = write_wide_predictions(redis_client, key_prefix, version_id, 300)  # about 9 MB
    result = run_sync(memory_budget_mb=1)["predictions"]
    assert written > 8 * MiB
    assert (result.read, result.inserted, result.rejected, result.pending) == (300, 300, 0, 0)
    assert [i for i, _ in loaded(pg_conn)] == list(range(1, 301))
    assert result.bytes_read >= written
    assert 30_000 < result.largest_record_bytes < 40_000


def test_the_materialization_reports_bytes_read_and_the_largest_record(
    run_sync, redis_client, key_prefix, version_id, sync_config
):
    from rp_pipeline.assets import materialization_metadata

    written = write_wide_predictions(redis_client, key_prefix, version_id, 20)
    metadata = materialization_metadata(run_sync()["predictions"], sync_config, "db")
    assert (
        written <= metadata["bytes_read"] < written + 20 * 1_000
    )  # the values, plus each reply's framing
    assert 30_000 < metadata["largest_record_bytes"] < 40_000


def test_a_record_larger_than_the_budget_syncs_alone(
    run_sync, redis_client, key_prefix, version_id, pg_conn
):
    write_wide_predictions(redis_client, key_prefix, version_id, 3, floats=1536)
    big = embedding(4, floats=150_000)  # about 3 MB, three times the budget
    write_wide_predictions(redis_client, key_prefix, version_id, 1, first=4)
    redis_client.hset(f"{key_prefix}prediction:4", "input", big)
    write_wide_predictions(redis_client, key_prefix, version_id, 3, first=5)
    result = run_sync(memory_budget_mb=1)["predictions"]
    assert (result.inserted, result.rejected) == (7, 0)
    assert result.largest_record_bytes >= len(big)
    rows = dict(loaded(pg_conn))
    assert sorted(rows) == list(range(1, 8))
    assert rows[4] > 3_000_000


def test_a_value_past_the_jsonb_limit_is_rejected_with_its_size(
    run_sync, redis_client, key_prefix, version_id, pg_conn, sync_config
):
    write_wide_predictions(redis_client, key_prefix, version_id, 3)
    size = (
        MAX_VALUE_BYTES[JSONB] + 2
    )  # 256 MB: one HSET sent in pieces, so Redis serves others meanwhile
    value = b"[" + b"1," * ((size - 3) // 2) + b"1]"
    redis_client.hset(f"{key_prefix}prediction:2", "input", value)
    del value
    assert redis_client.hstrlen(f"{key_prefix}prediction:2", "input") == size
    result = run_sync(memory_budget_mb=8)["predictions"]
    assert (result.inserted, result.rejected, result.pending) == (2, 1, 0)
    assert [i for i, _ in loaded(pg_conn)] == [1, 3]
    reason, raw = pg_conn.execute(
        f'SELECT reason, raw FROM "{sync_config.sync_schema}".rejected_records '
        "WHERE redis_key = %s",
        (f"{key_prefix}prediction:2",),
    ).fetchone()
    assert reason.startswith(f"field 'input' is {size:,} bytes")
    assert f"{MAX_VALUE_BYTES[JSONB]:,} bytes" in reason
    assert len(raw) < 10_000  # the value itself is not kept


# Runs in a process of its own, so its peak RSS (VmHWM) is the sync's alone.
_SYNC_IN_A_PROCESS = textwrap.dedent("""
    import json, sys
    from rp_pipeline.connections import connect_postgres, connect_redis
    from rp_pipeline.engine import sync_entity
    from rp_pipeline.entities import MODELS, MODEL_VERSIONS, PREDICTIONS
    from rp_pipeline.schema import migrate
    from rp_pipeline.settings import SyncConfig

    def status(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))

    config = SyncConfig(**json.loads(sys.argv[1]))
    migrate(config)
    client, conn = connect_redis(config), connect_postgres(config)
    for spec in (MODELS, MODEL_VERSIONS):
        sync_entity(spec, client, conn, config)
    baseline = status("VmHWM")  # imports, connections, the small entities: everything but the backlog
    result = sync_entity(PREDICTIONS, client, conn, config)
    print(json.dumps({"baseline": baseline, "peak": status("VmHWM"), "inserted": result.inserted,
                      "bytes_read": result.bytes_read}))
""")


def test_a_sync_stays_within_its_budget(redis_client, key_prefix, version_id, sync_config):
    budget_mb = 2
    written = write_wide_predictions(
        redis_client, key_prefix, version_id, 1_000
    )  # about 31 MB: 15 budgets
    config = {
        k: getattr(sync_config, k)
        for k in ("postgres_url", "redis_url", "key_prefix", "schema", "sync_schema")
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _SYNC_IN_A_PROCESS,
            json.dumps({**config, "memory_budget_mb": budget_mb}),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["inserted"] == 1_000 and figures["bytes_read"] >= written
    # The allowance: costs that do not grow with the backlog or the budget. The extract thread's
    # malloc arena and stack, the 1 MB socket reads and hiredis's buffer, psycopg's COPY buffer,
    # pandas' per-frame overhead, and the overshoot of each chunk in flight (a chunk closes after
    # the record that crosses its limit: three records of about 31 KB). The whole growth measured
    # here is about 5 MiB; the old record-counted chunks (20,000) would hold the whole 31 MB backlog
    # several times over.
    allowance = 12 * MiB
    grew = figures["peak"] - figures["baseline"]
    assert grew <= budget_mb * MiB + allowance, (
        f"peak RSS grew {grew / MiB:.1f} MiB during the sync of {written / MiB:.0f} MiB with a {budget_mb} MiB budget"
    )


def test_long_loads_log_records_and_bytes_so_far(
    run_sync, redis_client, key_prefix, version_id, monkeypatch, caplog
):
    import logging

    from rp_pipeline import engine

    write_wide_predictions(redis_client, key_prefix, version_id, 100)
    monkeypatch.setattr(engine, "PROGRESS_EVERY_SECONDS", 0.0)  # every chunk counts as a long wait
    with caplog.at_level(logging.INFO, logger="rp_pipeline"):
        run_sync(memory_budget_mb=1)
    progress = [r.getMessage() for r in caplog.records if "read so far" in r.getMessage()]
    assert len(progress) > 2
    assert progress[-1].startswith("  predictions: 100 records, 3.")  # about 3.1 MB
    assert " MB read so far" in progress[-1]


def test_the_budget_is_set_like_every_other_setting():
    from rp_pipeline.resources import resources_for
    from rp_pipeline.settings import ConfigError, SyncConfig

    config = SyncConfig.from_env(
        {"SYNC_MEMORY_BUDGET_MB": "96", "POSTGRES_URL": "postgresql://u@h/db"}
    )
    assert config.memory_budget_mb == 96 and config.memory_budget_bytes == 96 * MiB
    assert SyncConfig.from_env({}).memory_budget_mb == 256
    resources = resources_for(config)
    assert resources["sync"].sync_config() == config
    for bad in ("0", "-5", "lots"):
        with pytest.raises(ConfigError, match=r"SYNC_MEMORY_BUDGET_MB|memory budget"):
            SyncConfig.from_env({"SYNC_MEMORY_BUDGET_MB": bad})
