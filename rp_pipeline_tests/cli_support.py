"""Helpers for tests that run the command line as a user does, in a subprocess."""

import os
import re
import subprocess
import sys
from pathlib import Path

from rp_pipeline.settings import ENVIRONMENT_VARIABLES

REPO = Path(__file__).resolve().parents[1]
# Variables that would point a subprocess at the developer's own servers or instance: every
# setting the sync reads, Dagster's instance, and the path the package is imported from.
INHERITED = (
    *ENVIRONMENT_VARIABLES,
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
