"""Many sources under a real `dagster-daemon`, with the repository's dagster.yaml (the queued run
coordinator, at most one run per source).

Covers (issue 12): three sources (two key prefixes in one Redis database, and a second database)
synced by runs the daemon launches in parallel processes: exact rows per source, a model name
held by two sources converging on one row that both sources' versions attach to, each run's
materializations on its own partition and its checks on those materializations, runs of
different sources overlapping in time while two runs of the same source (one queued as the
schedule does, one as the UI does) never do, and a source that is down failing its own run only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg
import psycopg
import pytest
import redis

from rp_pipeline.entities import ENTITIES
from rp_pipeline.schedules import JOB_NAME
from rp_pipeline.writer import RedisWriter

from .cli_support import REPO, clean_env

pytestmark = pytest.mark.timeout(600)

SOURCE_TAG = "rp_pipeline/source"
PARTITION_TAG = "dagster/partition"
BATCH_TAG = "rp_pipeline_test/batch"
TERMINAL = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}

# Creates and queues runs through the workspace, as `dagster job launch` does, in one process
# (a launch per source would load the code location once each).
SUBMIT = """
import json, sys
import dagster as dg
from dagster import __version__
from dagster._cli.job import _create_run
from dagster._cli.workspace.cli_target import (
    WorkspaceOpts, get_code_location_from_workspace, get_remote_job_from_remote_repo,
    get_remote_repository_from_code_location, get_workspace_from_cli_opts)

job_name, tag_sets = sys.argv[1], json.loads(sys.argv[2])
instance = dg.DagsterInstance.get()
opts = WorkspaceOpts(workspace=["workspace.yaml"])
with get_workspace_from_cli_opts(instance, version=__version__, workspace_opts=opts) as workspace:
    location = get_code_location_from_workspace(workspace, "rp_pipeline")
    repo = get_remote_repository_from_code_location(location, None)
    job = get_remote_job_from_remote_repo(repo, job_name)
    for tags in tag_sets:
        run = _create_run(instance=instance, code_location=location, remote_repo=repo,
                          remote_job=job, run_config={}, tags=tags, op_selection=None, run_id=None)
        instance.submit_run(run.run_id, workspace)
"""

WORKSPACE = """load_from:
  - python_module:
      module_name: rp_pipeline
      location_name: rp_pipeline
"""


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _second_db_url(redis_url: str) -> str:
    """Another database of the same test Redis (1..15, never the user's 0)."""
    base, _, db = redis_url.rpartition("/")
    return f"{base}/{1 + int(db) % 15}"


def _drop_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{prefix}*", count=5000))
    if keys:
        client.delete(*keys)
    client.close()


def _fill(url: str, prefix: str, models: dict[str, str], predictions: int) -> None:
    """Models (name → version), and `predictions` predictions on the first model's version."""
    writer = RedisWriter.from_url(url, key_prefix=prefix)
    versions = [
        writer.create_model_version(writer.create_model(name), version)
        for name, version in models.items()
    ]
    writer.log_predictions(
        [
            {"model_version_id": versions[0], "input_data": {"x": i}, "output_data": [i]}
            for i in range(predictions)
        ]
    )
    writer.close()


@pytest.fixture
def sources(redis_url):
    """label → (Redis URL, key prefix): two prefixes in one database, one in a second database."""
    tag = uuid.uuid4().hex[:8]
    chosen = {
        "a": (redis_url, f"ta{tag}:"),
        "b": (redis_url, f"tb{tag}:"),
        "c": (_second_db_url(redis_url), f"tc{tag}:"),
    }
    yield chosen
    for url, prefix in chosen.values():
        _drop_prefix(url, prefix)


@pytest.fixture
def daemon_home(work_dir):
    """A Dagster instance directory holding the repository's dagster.yaml, and a workspace."""
    home = work_dir / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    (work_dir / "workspace.yaml").write_text(WORKSPACE)
    return home


def _wait_for_runs(instance, batch: str, count: int, daemon_log: Path, timeout: float = 420):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = instance.get_run_records(dg.RunsFilter(tags={BATCH_TAG: batch}))
        if len(records) == count and all(r.dagster_run.status in TERMINAL for r in records):
            return records
        time.sleep(2)
    states = [(r.dagster_run.tags.get(PARTITION_TAG), r.dagster_run.status.value) for r in records]
    pytest.fail(
        f"runs not finished after {timeout:.0f} s: {states}\n{daemon_log.read_text()[-4000:]}"
    )


def _overlap(x, y) -> bool:
    return x.start_time < y.end_time and y.start_time < x.end_time


def test_three_sources_sync_in_parallel_runs_under_the_daemon_and_a_down_source_fails_alone(
    sources, daemon_home, work_dir, postgres_url, pg_schemas, monkeypatch
):
    _fill(*sources["a"], {"shared-model": "v1", "only-a": "v1"}, predictions=400)
    _fill(*sources["b"], {"only-b": "v1"}, predictions=300)
    _fill(*sources["c"], {"shared-model": "v2"}, predictions=200)
    urls = [f"{url}?key_prefix={prefix}&label={label}" for label, (url, prefix) in sources.items()]
    urls.append(f"redis://127.0.0.1:{_closed_port()}/0?key_prefix=x:&label=down")
    schema, sync_schema = pg_schemas
    env = clean_env(
        REDIS_URL=",".join(urls),
        POSTGRES_URL=postgres_url,
        POSTGRES_SCHEMA=schema,
        SYNC_SCHEMA=sync_schema,
        SYNC_INTERVAL="3600",  # the schedule stays out of the way (its runs would not carry the batch tag)
        DAGSTER_HOME=str(daemon_home),
    )

    # Queue everything first, then start the daemon: its first pass finds all the runs waiting.
    # Source "a" gets two runs, which the per-source limits must run one after the other: one as
    # the schedule requests it (partition and source tag), one as the UI launches a partition
    # (only the partition tag while it waits in the queue).
    batch = uuid.uuid4().hex
    labels = ["a", "a", "b", "c", "down"]
    schedule_like = {label: {PARTITION_TAG: label, SOURCE_TAG: label} for label in set(labels)}
    tag_sets = [
        {**schedule_like["a"], BATCH_TAG: batch},
        {PARTITION_TAG: "a", BATCH_TAG: batch},  # queued before b, c and down: must wait anyway
        *({**schedule_like[label], BATCH_TAG: batch} for label in ("b", "c", "down")),
    ]
    submitted = subprocess.run(
        [sys.executable, "-c", SUBMIT, JOB_NAME, json.dumps(tag_sets)],
        cwd=work_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert submitted.returncode == 0, submitted.stderr[-3000:]

    daemon_log = work_dir / "daemon.log"
    with daemon_log.open("w") as log:
        daemon = subprocess.Popen(
            [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w", "workspace.yaml"],
            cwd=work_dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its code server and run workers stop with it
        )
    try:
        monkeypatch.setenv("DAGSTER_HOME", str(daemon_home))
        monkeypatch.delenv("DAGSTER_POSTGRES_URL", raising=False)
        with dg.DagsterInstance.from_config(str(daemon_home)) as instance:
            records = _wait_for_runs(instance, batch, len(labels), daemon_log)
            runs = {}
            for record in records:
                runs.setdefault(record.dagster_run.tags[PARTITION_TAG], []).append(record)
            statuses = {label: [r.dagster_run.status for r in rs] for label, rs in runs.items()}
            success, failure = dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE
            assert statuses == {
                "a": [success, success],
                "b": [success],
                "c": [success],
                "down": [failure],
            }, daemon_log.read_text()[-4000:]

            # One run per source at a time; different sources side by side.
            first, second = sorted(runs["a"], key=lambda r: r.start_time)
            assert first.end_time <= second.start_time
            parallel = [
                (x, y)
                for x in runs["a"] + runs["b"]
                for y in runs["b"] + runs["c"] + runs["down"]
                if x.dagster_run.tags[PARTITION_TAG] != y.dagster_run.tags[PARTITION_TAG]
                and _overlap(x, y)
            ]
            assert parallel, {
                label: [(r.start_time, r.end_time) for r in rs] for label, rs in runs.items()
            }

            # Each source's first run materialized the nine tables and checked what it wrote, all
            # on its own partition (a's second run found nothing new: no check results).
            for label in ("a", "b", "c"):
                run_id = min(runs[label], key=lambda r: r.start_time).dagster_run.run_id
                materialized = instance.all_logs(
                    run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
                )
                assert sorted(e.dagster_event.asset_key.to_user_string() for e in materialized) == (
                    sorted(spec.name for spec in ENTITIES)
                )
                assert {e.dagster_event.partition for e in materialized} == {label}
                evaluations = [
                    e.dagster_event.event_specific_data
                    for e in instance.all_logs(
                        run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
                    )
                ]
                checked = {ev.asset_key.to_user_string() for ev in evaluations}
                assert {"models", "model_versions", "predictions"} <= checked, label
                # Each check evaluated this partition's materialization, written by this run.
                assert {ev.target_materialization_data.run_id for ev in evaluations} == {run_id}
                assert [ev.check_name for ev in evaluations if not ev.passed] == [], label
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()

    with psycopg.connect(postgres_url) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        models = conn.execute("SELECT name FROM models ORDER BY name").fetchall()
        assert models == [("only-a",), ("only-b",), ("shared-model",)]
        versions = conn.execute(
            "SELECT m.name, v.version, count(p.id) FROM model_versions v "
            "JOIN models m ON m.id = v.model_id LEFT JOIN predictions p ON p.model_version_id = v.id "
            "GROUP BY m.name, v.version ORDER BY m.name, v.version"
        ).fetchall()
        # a's and c's versions hang on the one shared model row.
        assert versions == [
            ("only-a", "v1", 0),
            ("only-b", "v1", 300),
            ("shared-model", "v1", 400),
            ("shared-model", "v2", 200),
        ]
        per_source = dict(
            conn.execute(
                f'SELECT s.label, count(*) FROM predictions p JOIN "{sync_schema}".sources s '
                "ON s.origin = p.origin_source GROUP BY s.label"
            ).fetchall()
        )
        assert per_source == {"a": 400, "b": 300, "c": 200}
