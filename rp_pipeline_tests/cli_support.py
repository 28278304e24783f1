"""Helpers for tests that run the command line as a user does, in a subprocess."""

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Variables that would point a subprocess at the developer's own servers or instance.
INHERITED = (
    "REDIS_URL",
    "POSTGRES_URL",
    "REDIS_KEY_PREFIX",
    "POSTGRES_SCHEMA",
    "SYNC_SCHEMA",
    "SYNC_INTERVAL",
    "SYNC_SOURCE",
    "SYNC_CONFLICT_POLICY",
    "SYNC_RETENTION_HOURS",
    "SYNC_LOCK_TIMEOUT_MS",
    "SYNC_STATEMENT_TIMEOUT_MS",
    "SYNC_CHUNK_SIZE",
    "SYNC_PENDING_MAX_AGE",
    "SYNC_METRIC_RESCAN_SECONDS",
    "DAGSTER_HOME",
    "DAGSTER_POSTGRES_URL",
    "DAGSTER_POSTGRES_SCHEMA",
    "PYTHONPATH",
)
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[(INFO|WARNING|ERROR)\] ", re.M)
PASSWORD = "s3cr3tpw"


def clean_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in INHERITED}
    env.update(values)
    return env


def run_cli(
    args: list[str],
    env: dict[str, str],
    cwd: Path,
    timeout: float = 120,
    module: str = "rp_pipeline",
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def with_password(url: str, password: str = PASSWORD) -> str:
    """The URL with a password added (trust authentication ignores it; it must never be printed)."""
    return re.sub(r"^(\w+://)([^:@/]+)@", rf"\1\2:{password}@", url)
