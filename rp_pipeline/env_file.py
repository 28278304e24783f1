"""The `./.env` the quick start leaves, so that the README's next commands work in a new shell.

The CLI, the demo and Dagster's own CLI (`dagster dev`, `dagster job execute`) all read
`./.env` in the directory they start from. The quick start records there the Redis and
Postgres it used and `DAGSTER_HOME`, so every later command records its runs in the
same persistent instance (`./.dagster_home`, configured by the repository's
`dagster.yaml`) instead of a temporary one.

    python -m rp_pipeline.env_file REDIS_URL=redis://127.0.0.1:6379/0 POSTGRES_URL=postgresql://...

A value already in `.env` is the user's and is never replaced; only missing keys are added,
and each addition or kept difference is reported (passwords hidden).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ENV_FILE = ".env"
INSTANCE_DIR = ".dagster_home"


def add_missing(path: Path, values: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """Append each of `values` that `path` does not set yet; the file ends up readable by its owner only.

    Returns (keys added, {key: value already in the file} for keys whose value differs from `values`).
    """
    from dotenv import dotenv_values

    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)  # it holds database passwords
    present = dotenv_values(path)
    missing = [key for key in values if key not in present]
    if missing:
        text = path.read_text()
        lines = "".join(f"{key}={_quoted(values[key])}\n" for key in missing)
        path.write_text(text + ("\n" if text and not text.endswith("\n") else "") + lines)
    kept = {
        key: present[key] or "" for key in values if key in present and present[key] != values[key]
    }
    return missing, kept


def _quoted(value: str) -> str:
    """Single quotes: python-dotenv, Dagster and the quick start's shell read the value literally."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def ensure_instance_dir(root: Path) -> Path:
    """`root/.dagster_home`, holding a link to the repository's `dagster.yaml` (its storage settings).

    Dagster reads `$DAGSTER_HOME/dagster.yaml`; a relative link keeps the one file in the
    repository the source of truth. A `dagster.yaml` already there is left as it is.
    """
    home = (root / INSTANCE_DIR).resolve()
    home.mkdir(exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists() and not config.is_symlink() and (root / "dagster.yaml").exists():
        config.symlink_to(os.path.relpath(root.resolve() / "dagster.yaml", home))
    return home


def main(argv: list[str] | None = None) -> int:
    """Record the KEY=VALUE arguments and DAGSTER_HOME in ./.env (run from the repository root)."""
    from .settings import redact_url

    pairs = dict(arg.split("=", 1) for arg in (sys.argv[1:] if argv is None else argv))
    root = Path.cwd()
    # An exported DAGSTER_HOME is the instance this run used; else the repository's own.
    values = {
        **pairs,
        "DAGSTER_HOME": os.environ.get("DAGSTER_HOME") or str(ensure_instance_dir(root)),
    }
    added, kept = add_missing(root / ENV_FILE, values)
    if added:
        print(f"   .env: added {', '.join(added)} (mode 600)")
    for key, value in kept.items():
        print(
            f"   .env: kept its {key}={redact_url(value)} (this run used {redact_url(values[key])}); "
            f"the commands that read .env will use the kept value",
            file=sys.stderr,
        )
    if not added and not kept:
        print("   .env: already holds these settings")
    return 0


if __name__ == "__main__":
    sys.exit(main())
