"""The README's newcomer path: after the quick start, its next commands work in a new shell.

Covers the `.env` the quick start leaves (`python -m rp_pipeline.env_file`, as
scripts/quickstart.sh calls it): REDIS_URL, POSTGRES_URL and DAGSTER_HOME recorded,
mode 600, a user's values kept and reported, passwords never printed. With only
that `.env` and no settings in the environment, `python -m rp_pipeline --once` and
`dagster job execute` both sync, into one persistent instance (no temporary Dagster
home). Without POSTGRES_URL a Dagster step fails with one line naming it and no
ConfigError traceback chained to it. (The CLI's one-line exit 2 for the same case is
test_errors.py::test_postgres_url_not_set.)
"""

from __future__ import annotations

import logging
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import dagster as dg
import psycopg
from dotenv import dotenv_values

from rp_pipeline.definitions import defs
from rp_pipeline.resources import SyncResource
from rp_pipeline.schedules import JOB_NAME

from .cli_support import PASSWORD, REPO, clean_env, run_cli, with_password

DAGSTER = str(Path(sys.executable).with_name("dagster"))


def write_quick_start_env(directory: Path, **values: str) -> subprocess.CompletedProcess:
    """What step 3 of scripts/quickstart.sh runs, in `directory` (a copy of the repository's dagster.yaml there)."""
    if not (directory / "dagster.yaml").exists():
        shutil.copy(REPO / "dagster.yaml", directory / "dagster.yaml")
    done = subprocess.run(
        [sys.executable, "-m", "rp_pipeline.env_file", *(f"{k}={v}" for k, v in values.items())],
        cwd=directory,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_quick_start_env_records_the_servers_it_used_and_a_persistent_dagster_home(tmp_path):
    postgres = with_password("postgresql://rp_pipeline@127.0.0.1:5432/rp_pipeline")
    done = write_quick_start_env(
        tmp_path, REDIS_URL="redis://127.0.0.1:6379/0", POSTGRES_URL=postgres
    )

    env_file = tmp_path / ".env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert dotenv_values(env_file) == {
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "POSTGRES_URL": postgres,
        "DAGSTER_HOME": str(tmp_path.resolve() / ".dagster_home"),
    }
    # Dagster reads $DAGSTER_HOME/dagster.yaml: it is the repository's file, not a copy that can drift.
    assert (tmp_path / ".dagster_home" / "dagster.yaml").resolve() == (
        tmp_path / "dagster.yaml"
    ).resolve()
    assert "added REDIS_URL, POSTGRES_URL, DAGSTER_HOME" in done.stdout
    assert PASSWORD not in done.stdout + done.stderr


def test_values_already_in_env_are_kept_missing_ones_added_and_the_difference_reported(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# mine\nREDIS_URL=redis://cache.internal:6379/2\nSYNC_INTERVAL=600"
    )  # no final newline
    env_file.chmod(0o644)

    done = write_quick_start_env(
        tmp_path,
        REDIS_URL="redis://127.0.0.1:6379/0",
        POSTGRES_URL=with_password("postgresql://app@127.0.0.1:5432/app"),
    )

    values = dotenv_values(env_file)
    assert (
        values["REDIS_URL"] == "redis://cache.internal:6379/2" and values["SYNC_INTERVAL"] == "600"
    )
    assert values["POSTGRES_URL"] == with_password("postgresql://app@127.0.0.1:5432/app")
    assert env_file.read_text().startswith("# mine\n")
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert "added POSTGRES_URL, DAGSTER_HOME" in done.stdout
    assert (
        "kept its REDIS_URL=redis://cache.internal:6379/2 (this run used redis://127.0.0.1:6379/0)"
        in done.stderr
    )
    assert PASSWORD not in done.stdout + done.stderr

    again = write_quick_start_env(
        tmp_path,
        REDIS_URL="redis://cache.internal:6379/2",
        POSTGRES_URL=with_password("postgresql://app@127.0.0.1:5432/app"),
    )
    assert "already holds these settings" in again.stdout and again.stderr == ""
    assert env_file.read_text().count("POSTGRES_URL") == 1


def test_readme_commands_work_in_a_new_shell_with_only_the_quick_starts_env(
    writer, redis_url, key_prefix, postgres_url, pg_schemas, work_dir, monkeypatch
):
    writer.create_model("ResNet50-Redis", framework="pytorch")
    writer.create_model("BERT-Redis", framework="transformers")
    write_quick_start_env(work_dir, REDIS_URL=redis_url, POSTGRES_URL=postgres_url)
    schema, sync_schema = pg_schemas
    with open(work_dir / ".env", "a") as env_file:  # this test's isolated prefix and schemas
        env_file.write(
            f"REDIS_KEY_PREFIX={key_prefix}\nPOSTGRES_SCHEMA={schema}\nSYNC_SCHEMA={sync_schema}\n"
        )
    new_shell = clean_env()  # nothing about Redis, Postgres or Dagster in the environment

    once = run_cli(["--once"], new_shell, work_dir)
    assert once.returncode == 0, once.stdout + once.stderr
    writer.create_model("Third-Redis")
    executed = subprocess.run(
        [DAGSTER, "job", "execute", "-m", "rp_pipeline", "-j", JOB_NAME],
        cwd=work_dir,
        env=new_shell,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert executed.returncode == 0, executed.stdout[-3000:] + executed.stderr[-3000:]
    assert "temporary" not in (executed.stdout + executed.stderr).lower()

    with psycopg.connect(postgres_url) as conn:
        names = conn.execute(f'SELECT name FROM "{schema}".models ORDER BY name').fetchall()
    assert names == [("BERT-Redis",), ("ResNet50-Redis",), ("Third-Redis",)]
    # Both runs are in the one persistent instance the UI shows, with their step logs kept.
    home = work_dir / ".dagster_home"
    monkeypatch.setenv("DAGSTER_HOME", dotenv_values(work_dir / ".env")["DAGSTER_HOME"])
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs()
    assert [run.status for run in runs] == [dg.DagsterRunStatus.SUCCESS] * 2
    assert (home / "storage" / runs[0].run_id / "compute_logs").is_dir()


def test_dagster_cli_uses_the_env_files_dagster_home_not_a_temporary_one(
    tmp_path, monkeypatch, caplog
):
    """What `dagster dev` and `dagster job execute` call to pick their instance, after loading ./.env."""
    from dagster._cli.utils import get_possibly_temporary_instance_for_cli

    write_quick_start_env(
        tmp_path, REDIS_URL="redis://127.0.0.1:6379/0", POSTGRES_URL="postgresql://x@h/db"
    )
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.delenv("DAGSTER_POSTGRES_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    with (
        caplog.at_level(logging.INFO, logger="dagster"),
        get_possibly_temporary_instance_for_cli(
            "dagster dev", logger=logging.getLogger("dagster")
        ) as instance,
    ):
        root = Path(instance.root_directory)
        storage = instance.get_ref().run_storage_data.module_name
    assert root == tmp_path.resolve() / ".dagster_home"
    assert (
        storage == "rp_pipeline.instance_storage"
    )  # the repository's dagster.yaml, through the link
    assert "Loaded environment variables from .env file" in caplog.text  # the log is captured
    assert "temporary" not in caplog.text.lower()
    assert not list(tmp_path.glob(".tmp_dagster_home_*"))


def _resources_without_postgres_url() -> dict:
    return {"sync": SyncResource()}


def test_a_dagster_run_without_postgres_url_fails_each_step_with_one_line_naming_it():
    result = defs.resolve_job_def(JOB_NAME).execute_in_process(
        resources=_resources_without_postgres_url(), raise_on_error=False
    )

    assert not result.success
    failures = [event.step_failure_data for event in result.all_events if event.is_step_failure]
    assert failures
    for failure in failures:
        description = failure.user_failure_data.description  # what the UI shows as the step's error
        assert (
            description.startswith("POSTGRES_URL is not set: set POSTGRES_URL=postgresql://")
            and ".env" in description
        )
        assert "\n" not in description
        assert failure.error.cause is None  # no ConfigError traceback chained behind it


def test_dagster_job_execute_without_postgres_url_says_so_in_one_line(redis_url, work_dir):
    done = subprocess.run(
        [DAGSTER, "job", "execute", "-m", "rp_pipeline", "-j", JOB_NAME],
        cwd=work_dir,
        env=clean_env(REDIS_URL=redis_url),
        capture_output=True,
        text=True,
        timeout=300,
    )

    output = done.stdout + done.stderr
    assert done.returncode != 0
    clear = [
        line for line in output.splitlines() if "POSTGRES_URL is not set: set POSTGRES_URL=" in line
    ]
    assert clear and all(line.endswith("(scripts/quickstart.sh writes one)") for line in clear), (
        output[-3000:]
    )
    assert "ConfigError" not in output and "Traceback (most recent call last)" not in output
    assert "The above exception was caused by" not in output
