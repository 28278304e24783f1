"""Passwords holding URL delimiters (`# / ? @ : %` and spaces) never reach what users see.

Every URL is split by the project's one parser (`settings.split_url`, `redact_url`): the error of
a failed connection (Redis and Postgres, the password written raw or percent-encoded),
`SyncConfig.describe()`, the CLI's one line on a bad URL, and the failure lines the Python API
shows for a failed step (`RedisPgSync._redact`).
"""

from __future__ import annotations

import re
from urllib.parse import quote

import pytest

from rp_pipeline.api import RedisPgSync
from rp_pipeline.connections import connect_postgres, connect_redis
from rp_pipeline.errors import ConnectionProblem
from rp_pipeline.settings import SyncConfig

from .cli_support import clean_env, run_cli
from .faults import free_port, traceback_text

# Each piece between delimiters occurs nowhere else, so finding any piece means a leak.
PASSWORD = "Zq1#Xw2/Vk3?Ab4@Cd5:Ef6%Gh7 Ij8"
PIECES = re.split(r"[#/?@:% ]", PASSWORD)
FORMS = {"raw": PASSWORD, "percent-encoded": quote(PASSWORD, safe="")}


def assert_hidden(text: str) -> None:
    leaked = [piece for piece in PIECES if piece in text]
    assert not leaked, f"password pieces {leaked} in: {text}"


def redis_url(password: str, port: int = 6379, tail: str = "/0") -> str:
    return f"redis://default:{password}@127.0.0.1:{port}{tail}"


def postgres_url(password: str, port: int = 5432, tail: str = "/ai_models") -> str:
    return f"postgresql://postgres:{password}@127.0.0.1:{port}{tail}"


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("server", ["redis", "postgres"])
def test_a_failed_connection_names_the_server_and_hides_the_password(server, form):
    port = free_port()
    if server == "redis":
        config = SyncConfig(redis_url=redis_url(FORMS[form], port))
        connect = connect_redis
    else:
        config = SyncConfig(postgres_url=postgres_url(FORMS[form], port))
        connect = connect_postgres
    with pytest.raises(ConnectionProblem) as failure:
        connect(config)
    message = str(failure.value)
    assert_hidden(traceback_text(failure.value))
    assert ":***@127.0.0.1" in message or f"127.0.0.1:{port}" in message, message


@pytest.mark.parametrize("form", FORMS)
def test_describe_shows_both_servers_without_their_passwords(form):
    config = SyncConfig(
        redis_url=redis_url(FORMS[form]),
        postgres_url=postgres_url(FORMS[form], tail="/ai_models?sslmode=prefer"),
    )
    shown = config.describe()
    assert_hidden(shown)
    assert "redis://default:***@127.0.0.1:6379/0" in shown
    assert "postgresql://postgres:***@127.0.0.1:5432/ai_models?sslmode=prefer" in shown


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(
    "variable, url, phrase",
    [
        ("REDIS_URL", lambda pw: redis_url(pw, tail="/not-a-db"), "is not a number"),
        (
            "POSTGRES_URL",
            lambda pw: postgres_url(pw, port=free_port()),
            "postgresql://postgres:***@127.0.0.1",
        ),
    ],
)
def test_the_cli_reports_a_bad_url_in_one_line_without_the_password(
    variable, url, phrase, form, work_dir
):
    env = clean_env(
        REDIS_URL="redis://127.0.0.1:6379/0",
        POSTGRES_URL="postgresql://postgres@127.0.0.1:5432/postgres",
    )
    env[variable] = url(FORMS[form])
    done = run_cli(["--once"], env, work_dir, timeout=60)
    message = done.stderr.strip()
    assert done.returncode == 2, done.stdout + done.stderr
    assert message.startswith("Error: ") and "\n" not in message, message
    assert phrase in message, message
    assert_hidden(done.stdout + done.stderr)


@pytest.mark.parametrize("form", FORMS)
def test_failure_lines_of_the_api_mask_the_password_and_keep_the_rest(form):
    sync = RedisPgSync(
        redis_url=redis_url(FORMS[form]), postgres_url=postgres_url(FORMS["percent-encoded"])
    )
    line = f"models: driver said: password {FORMS[form]} / decoded {PASSWORD} refused; Zq nearby"
    shown = sync._redact(line)
    assert_hidden(shown)
    assert shown.startswith("models: driver said: password ***") and shown.endswith("; Zq nearby")
