"""The guide's command line, run as a user runs it: `python -m rp_pipeline` in a subprocess.

Covers `--once` against a real sync (guide-style timestamped lines, the counters,
rows in Postgres, exit 0 even with a rejected record, no password printed); the
`.env` file, with the real environment and the options winning over it; a failed
sync exiting 1 without a traceback; and SIGTERM in `--interval` mode: during a
cycle the cycle completes (every entity committed whole) and the exit is 0,
while waiting it stops at once.

Each run works in its own directory (on tmpfs when there is one: Dagster's SQLite
run history fsyncs per event), so runs land in that directory's `.dagster_home`.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from .cli_support import LOG_LINE, PASSWORD, clean_env, run_cli, with_password


@pytest.fixture
def cli_env(redis_url, key_prefix, postgres_url, pg_schemas):
    """Environment pointing the CLI at this test's Redis prefix and Postgres schemas."""
    schema, sync_schema = pg_schemas
    return clean_env(
        REDIS_URL=redis_url,
        REDIS_KEY_PREFIX=key_prefix,
        POSTGRES_URL=with_password(postgres_url),
        POSTGRES_SCHEMA=schema,
        SYNC_SCHEMA=sync_schema,
    )


def count(conn, table: str) -> int:
    return conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]


def write_sample(writer, predictions: int = 25) -> None:
    """Two models (the guide's), a dataset, a version, a finished run with a metric, predictions."""
    resnet = writer.create_model("ResNet50-Redis", framework="pytorch", task_type="classification")
    writer.create_model("BERT-Redis", framework="transformers")
    dataset = writer.create_dataset(
        "ImageNet-Redis", size_bytes=150_000_000_000, num_samples=14_197_122
    )
    version = writer.create_model_version(resnet, "1.0.0")
    run = writer.create_training_run(version, dataset, run_name="baseline")
    writer.log_hyperparameters(run, {"learning_rate": 0.1})
    writer.log_metric(run, "loss", 0.42, epoch=1)
    writer.update_training_run(run, status="completed", final_loss=0.42)
    writer.log_predictions(
        {"model_version_id": version, "input_data": [i], "output_data": {"class": i % 3}}
        for i in range(predictions)
    )


def test_once_syncs_prints_the_guides_log_and_counters(
    writer, redis_client, key_prefix, cli_env, work_dir, pg_conn
):
    write_sample(writer)
    # A model without a name is rejected: reported as an error, not a failed sync.
    redis_client.hset(f"{key_prefix}model:99", mapping={"id": "99", "description": "no name"})
    redis_client.zadd(f"{key_prefix}idx:models", {"99": 99})

    done = run_cli(["--once"], cli_env, work_dir)

    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "Traceback" not in out + done.stderr
    assert PASSWORD not in out + done.stderr
    lines = out.splitlines()
    assert all(LOG_LINE.match(line) for line in lines), [
        line for line in lines if not LOG_LINE.match(line)
    ]
    assert "[INFO] === Starting Redis → PostgreSQL Sync ===" in out
    assert "[INFO] Syncing models..." in out
    assert re.search(r"\[INFO\]   Model synced: ResNet50-Redis \(Redis ID 1 → Pg ID \d+\)", out)
    assert re.search(r"\[INFO\] === Sync Complete in \d+\.\d\ds ===", out)
    counters = dict(re.findall(r"\[INFO\]   (\w[\w ]*): (\d+)$", out, re.M))
    assert counters == {
        "Models": "2",
        "Versions": "1",
        "Datasets": "1",
        "Runs": "1",
        "Hyperparams": "1",
        "Metrics": "1",
        "Experiments": "0",
        "Predictions": "25",
        "Experiment runs": "0",
        "Errors": "1",
    }
    assert "[WARNING]" in out and "model:99" in out
    assert [
        count(pg_conn, t)
        for t in ("models", "datasets", "model_versions", "training_runs", "predictions")
    ] == [2, 1, 1, 1, 25]
    assert list((work_dir / ".dagster_home" / "storage").glob("runs.db")), (
        "the run is recorded in the instance"
    )


def test_env_file_is_read_but_the_environment_and_options_win(
    writer, key_prefix, cli_env, work_dir, pg_conn
):
    writer.create_model("from-env-file")
    (work_dir / ".env").write_text(
        f"POSTGRES_URL={cli_env['POSTGRES_URL']}\nPOSTGRES_SCHEMA={cli_env['POSTGRES_SCHEMA']}\n"
        f"SYNC_SCHEMA={cli_env['SYNC_SCHEMA']}\n"
        "REDIS_URL=redis://127.0.0.1:1/0\n"  # overridden by the real environment
        "REDIS_KEY_PREFIX=nothing-here:\n"
    )  # overridden by --key-prefix
    env = clean_env(REDIS_URL=cli_env["REDIS_URL"])

    done = run_cli(["--once", "--key-prefix", key_prefix], env, work_dir)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "Models: 1" in done.stdout
    assert [r[0] for r in pg_conn.execute("SELECT name FROM models")] == ["from-env-file"]


def test_a_failed_sync_exits_non_zero_without_a_traceback(
    writer, cli_env, work_dir, sync_config, postgres_url
):
    from rp_pipeline.engine import lock_key
    from rp_pipeline.schema import migrate
    from rp_pipeline.sources import current_origin

    writer.create_model("locked-out")
    migrate(sync_config)
    locked = lock_key(sync_config, current_origin(sync_config), "models")
    with psycopg.connect(postgres_url, autocommit=True) as other_sync:
        other_sync.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (locked,))
        done = run_cli(["--once"], {**cli_env, "SYNC_LOCK_TIMEOUT_MS": "200"}, work_dir)

    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert "[ERROR] === Sync Failed after" in done.stdout
    assert re.search(r"\[ERROR\]   models: .*lock", done.stdout)
    assert PASSWORD not in done.stdout + done.stderr


def start_interval_mode(env: dict[str, str], cwd: Path, seconds: int = 60) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "rp_pipeline", "--interval", str(seconds)],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )


def read_until(proc: subprocess.Popen, marker: str, timeout: float = 60) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout
    for line in proc.stdout:
        lines.append(line)
        if marker in line or time.monotonic() > deadline:
            break
    assert any(marker in line for line in lines), "".join(lines)
    return lines


def test_sigterm_during_a_cycle_finishes_it_and_exits_0(
    writer, cli_env, work_dir, pg_conn, pg_schemas
):
    _, sync_schema = pg_schemas
    write_sample(writer, predictions=20_000)
    proc = start_interval_mode(cli_env, work_dir)
    try:
        before = read_until(proc, "Syncing")  # the first entity is being synced
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=90)
    finally:
        proc.kill()
    out = "".join(before) + rest

    assert proc.returncode == 0, out
    assert "Traceback" not in out
    assert "Received SIGTERM: stopping after the current cycle" in out
    assert out.index("Received SIGTERM") < out.index("=== Sync Complete")
    assert "Predictions: 20000" in out
    assert "Stopped after 1 cycle(s) (SIGTERM)." in out
    # Nothing half-written: every entity of the cycle committed, each completely.
    assert count(pg_conn, "predictions") == 20_000
    assert count(pg_conn, "models") == 2 and count(pg_conn, "metrics") == 1
    entities = pg_conn.execute(
        f'SELECT count(DISTINCT entity), count(DISTINCT run_id) FROM "{sync_schema}".entity_runs'
    )
    assert entities.fetchone() == (9, 1)


def test_sigterm_while_waiting_for_the_next_cycle_stops_at_once(writer, cli_env, work_dir):
    writer.create_model("one")
    proc = start_interval_mode(cli_env, work_dir, seconds=3600)
    try:
        read_until(proc, "Next sync in")
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
        waited = time.monotonic() - sent
    finally:
        proc.kill()

    assert proc.returncode == 0, rest
    assert waited < 5
    assert "Stopped after 1 cycle(s) (SIGTERM)." in rest


def test_console_script_runs_the_same_main(capsys):
    from rp_pipeline.cli import main

    script = Path(sys.executable).with_name("rp-pipeline")
    if script.exists():
        assert "rp_pipeline.cli" in script.read_text()
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    usage = capsys.readouterr().out
    for option in (
        "--once",
        "--interval",
        "--redis-url",
        "--postgres-url",
        "--key-prefix",
        "SYNC_INTERVAL",
        ".env",
    ):
        assert option in usage
