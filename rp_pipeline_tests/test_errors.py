"""The guide's troubleshooting cases, as the CLI reports them: one paragraph, no traceback, exit 2.

POSTGRES_URL not set; a client package missing; connection refused by Redis or by
Postgres (host:port named, how to start it, the password never shown); a wrong
password, for Redis and for Postgres (a throwaway password-authenticated cluster,
since the shared test server trusts every login); a database that does not
exist; a Dagster instance whose storage cannot be reached; a bad SYNC_INTERVAL.
Every error meant for the user is a `UserFacingError`, and each kind is printed as one line
(exit 2; 1 for a failed sync), and shown by the API without its class name.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from .cli_support import PASSWORD, REPO, clean_env, run_cli, with_password


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_clear_problem(done: subprocess.CompletedProcess, *phrases: str) -> str:
    """Exit 2, the phrases in one 'Error: ...' paragraph on stderr, no traceback, no password."""
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "Traceback" not in output
    assert PASSWORD not in output
    message = done.stderr.strip()
    assert message.startswith("Error: ") and "\n" not in message, message
    for phrase in phrases:
        assert phrase in message, message
    return message


def test_postgres_url_not_set(redis_url, work_dir):
    done = run_cli(["--once"], clean_env(REDIS_URL=redis_url), work_dir)
    assert_clear_problem(
        done, "POSTGRES_URL is not set", "export POSTGRES_URL=", ".env", "--postgres-url"
    )


def test_redis_connection_refused_names_host_port_and_how_to_start_it(postgres_url, work_dir):
    port = free_port()
    env = clean_env(REDIS_URL=f"redis://:{PASSWORD}@127.0.0.1:{port}/0", POSTGRES_URL=postgres_url)
    message = assert_clear_problem(
        run_cli(["--once"], env, work_dir),
        f"cannot connect to Redis at 127.0.0.1:{port}",
        "redis-server",
    )
    assert "Connection refused" in message or "connecting to" in message


def test_postgres_connection_refused_names_host_port_and_how_to_start_it(redis_url, work_dir):
    port = free_port()
    env = clean_env(
        REDIS_URL=redis_url,
        POSTGRES_URL=f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/ai_models",
    )
    assert_clear_problem(
        run_cli(["--once"], env, work_dir),
        f"cannot connect to Postgres at 127.0.0.1:{port}",
        "systemctl start postgresql",
        "postgresql://postgres:***@",
    )


def test_database_that_does_not_exist(redis_url, postgres_url, work_dir):
    url = with_password(postgres_url.rpartition("/")[0] + "/rp_no_such_database")
    assert_clear_problem(
        run_cli(["--once"], clean_env(REDIS_URL=redis_url, POSTGRES_URL=url), work_dir),
        "has no database 'rp_no_such_database'",
        "createdb",
    )


@pytest.fixture
def redis_with_password():
    """A Redis of its own on a free port, requiring a password (redis-server from PATH)."""
    server = shutil.which("redis-server")
    if not server:
        pytest.skip("redis-server not installed")
    port = free_port()
    proc = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--requirepass",
            "the-right-one",
        ],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(50):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    yield port
    proc.terminate()
    proc.wait(timeout=10)


def test_redis_wrong_password(redis_with_password, postgres_url, work_dir):
    env = clean_env(
        REDIS_URL=f"redis://:{PASSWORD}@127.0.0.1:{redis_with_password}/0",
        POSTGRES_URL=postgres_url,
    )
    assert_clear_problem(
        run_cli(["--once"], env, work_dir),
        f"Redis at 127.0.0.1:{redis_with_password} rejected the password",
    )


@pytest.fixture(scope="module")
def postgres_with_password():
    """A throwaway Postgres cluster with scram-sha-256 logins (password 'the-right-one'); its port."""
    initdb = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or [shutil.which("initdb")]
    if not initdb[-1]:
        pytest.skip("initdb not installed")
    bindir = Path(initdb[-1]).parent
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres and not shutil.which("runuser"):
        pytest.skip("running as root without runuser: initdb refuses root")
    home = Path(tempfile.mkdtemp(prefix="rp_pgpw_"))
    (home / "pw").write_text("the-right-one\n")
    if as_postgres:
        shutil.chown(home, "postgres")
        shutil.chown(home / "pw", "postgres")
    port = free_port()
    try:
        subprocess.run(
            [
                *as_postgres,
                str(bindir / "initdb"),
                "-D",
                str(home / "data"),
                "-U",
                "postgres",
                "-N",
                "--auth=scram-sha-256",
                f"--pwfile={home / 'pw'}",
            ],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [
                *as_postgres,
                str(bindir / "pg_ctl"),
                "-D",
                str(home / "data"),
                "-l",
                str(home / "log"),
                "-w",
                "-o",
                f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off",
                "start",
            ],
            check=True,
            capture_output=True,
        )
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(home, ignore_errors=True)
        pytest.skip(
            f"could not start a password-authenticated Postgres: {exc.stderr.decode()[:200]}"
        )
    yield port
    subprocess.run(
        [*as_postgres, str(bindir / "pg_ctl"), "-D", str(home / "data"), "-m", "immediate", "stop"],
        capture_output=True,
    )
    shutil.rmtree(home, ignore_errors=True)


def test_postgres_wrong_password(postgres_with_password, redis_url, work_dir):
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{postgres_with_password}/postgres"
    assert_clear_problem(
        run_cli(["--once"], clean_env(REDIS_URL=redis_url, POSTGRES_URL=url), work_dir),
        f"Postgres at 127.0.0.1:{postgres_with_password} rejected the credentials for user 'postgres'",
        "POSTGRES_URL",
    )


@pytest.fixture
def without_redis_package(tmp_path):
    """A PYTHONPATH entry that makes `import redis` fail as if the package were not installed."""
    shadow = tmp_path / "shadow" / "redis"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        'raise ModuleNotFoundError("No module named \'redis\'", name="redis")\n'
    )
    return str(shadow.parent)


def test_missing_client_package_says_which_and_how_to_install(
    without_redis_package, postgres_url, work_dir
):
    env = clean_env(PYTHONPATH=without_redis_package, POSTGRES_URL=postgres_url)
    assert_clear_problem(
        run_cli(["--once"], env, work_dir), "'redis' is not installed", "pip install -e ."
    )


def test_missing_package_in_the_demo_script(without_redis_package, postgres_url, work_dir):
    env = clean_env(PYTHONPATH=without_redis_package, POSTGRES_URL=postgres_url)
    done = subprocess.run(
        [sys.executable, str(REPO / "demo_redis_postgres_sync.py")],
        env=env,
        cwd=work_dir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_clear_problem(done, "No module named 'redis'", "pip install -e .")


def test_missing_package_message_names_the_pip_package():
    from rp_pipeline.cli import missing_package_message

    message = missing_package_message(
        ModuleNotFoundError("No module named 'psycopg'", name="psycopg")
    )
    assert "'psycopg[binary]' is not installed" in message and "pip install -e ." in message
    assert missing_package_message(ModuleNotFoundError("x", name="rp_pipeline.nope")) is None


def test_unreachable_dagster_instance_storage(redis_url, postgres_url, work_dir):
    port = free_port()
    env = clean_env(
        REDIS_URL=redis_url,
        POSTGRES_URL=postgres_url,
        DAGSTER_POSTGRES_URL=f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/dagster",
    )
    shutil.copy(
        REPO / "dagster.yaml", work_dir / "dagster.yaml"
    )  # the repository's instance settings
    assert_clear_problem(
        run_cli(["--once"], env, work_dir),
        "cannot open the Dagster instance",
        f"127.0.0.1:{port}",
        "DAGSTER_POSTGRES_URL",
    )


def test_sync_interval_that_is_not_a_number(redis_url, postgres_url, work_dir):
    env = clean_env(REDIS_URL=redis_url, POSTGRES_URL=postgres_url, SYNC_INTERVAL="five minutes")
    assert_clear_problem(run_cli([], env, work_dir), "SYNC_INTERVAL must be a number")


def user_facing_kinds():
    from rp_pipeline.errors import ConnectionProblem, PermissionProblem, SyncFailed
    from rp_pipeline.instance_storage import InstanceProblem
    from rp_pipeline.report import SyncOutcome, SyncRunFailed
    from rp_pipeline.settings import ConfigError

    failed_run = SyncOutcome(
        "run-1", False, {}, 0.1, ["models: Redis failed; the next cycle retries"]
    )
    return {
        ConfigError: ConfigError("SYNC_INTERVAL must be a number of seconds, got 'x'"),
        ConnectionProblem: ConnectionProblem(
            "cannot connect to Redis at 127.0.0.1:1: is it running?"
        ),
        PermissionProblem: PermissionProblem(
            "Redis refused user 'rp_sync' SET: ACL SETUSER rp_sync +set"
        ),
        InstanceProblem: InstanceProblem(
            "cannot open the Dagster instance (DAGSTER_HOME=/x): gone"
        ),
        SyncFailed: SyncFailed("models: lost the Postgres connection; the next cycle retries"),
        SyncRunFailed: SyncRunFailed(failed_run),
    }


def test_every_error_meant_for_the_user_is_a_user_facing_error():
    from rp_pipeline.errors import UserFacingError, user_facing_class

    for kind in user_facing_kinds():
        assert issubclass(kind, UserFacingError), kind
        assert user_facing_class(kind.__name__) is kind
    assert user_facing_class("ValueError") is None and user_facing_class(None) is None


@pytest.mark.parametrize("kind", list(user_facing_kinds()), ids=lambda k: k.__name__)
def test_the_cli_prints_each_kind_of_user_facing_error_as_one_line(
    kind, capsys, work_dir, monkeypatch
):
    from rp_pipeline.cli import run_guarded
    from rp_pipeline.errors import SyncFailed

    monkeypatch.chdir(work_dir)
    error = user_facing_kinds()[kind]

    def body():
        raise error

    code = run_guarded(body)

    printed = capsys.readouterr()
    assert code == (1 if isinstance(error, SyncFailed) else 2)
    assert printed.err == f"Error: {error}\n" and printed.out == ""
    assert kind.__name__ not in printed.err and "Traceback" not in printed.err


@pytest.mark.parametrize("kind", list(user_facing_kinds()), ids=lambda k: k.__name__)
def test_the_api_shows_a_failed_steps_user_facing_error_without_its_class_name(kind):
    from dagster._utils.error import serializable_error_info_from_exc_info

    from rp_pipeline.api import RedisPgSync

    sync = RedisPgSync(redis_url="redis://127.0.0.1:6379/0", postgres_url="postgresql://x@h/db")
    error = user_facing_kinds()[kind]
    try:
        raise error
    except Exception:
        info = serializable_error_info_from_exc_info(sys.exc_info())
    assert sync._error_lines("redis_to_postgres", info) == [str(error)]
    try:
        raise ValueError("a bug")
    except ValueError:
        bug = serializable_error_info_from_exc_info(sys.exc_info())
    assert sync._error_lines("redis_to_postgres", bug) == ["redis_to_postgres: ValueError: a bug"]
