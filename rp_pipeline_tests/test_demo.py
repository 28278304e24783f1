"""The guide's demo: populate Redis, sync, verify in Postgres, show the statistics; safe to run twice.

The first run calls `run_demo` directly; the second runs `demo_redis_postgres_sync.py`
as a user does. Both must succeed, the second must write and sync nothing new,
and every table must hold the same rows after both.
"""

from __future__ import annotations

import subprocess
import sys

from .cli_support import REPO, clean_env
from .faults import TABLES


def row_counts(conn) -> dict[str, int]:
    return {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in TABLES}


def test_demo_twice_gives_the_same_rows_and_prints_the_statistics(
    redis_url, postgres_url, key_prefix, pg_schemas, pg_conn, work_dir, monkeypatch
):
    from rp_pipeline.demo import EXPECTED, run_demo

    schema, sync_schema = pg_schemas
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.chdir(work_dir)

    stats = run_demo(redis_url, postgres_url, key_prefix, schema=schema, sync_schema=sync_schema)

    assert stats == {
        "models": 3,
        "versions": 4,
        "datasets": 2,
        "runs": 4,
        "hyperparams": 16,
        "metrics": 51,
        "experiments": 2,
        "predictions": 303,
        "errors": 0,
        "experiment_runs": 4,
    }
    first = row_counts(pg_conn)
    assert first == EXPECTED
    names = {row[0] for row in pg_conn.execute("SELECT name FROM models")}
    assert {"ResNet50-Redis", "BERT-Redis", "مدل-تشخیص-نقشه"} == names
    assert (
        pg_conn.execute("SELECT size_bytes FROM datasets WHERE name = 'ImageNet-Redis'").fetchone()[
            0
        ]
        == 150_000_000_000
    )
    assert (
        pg_conn.execute("SELECT count(*) FROM training_runs WHERE status = 'completed'").fetchone()[
            0
        ]
        == 3
    )

    env = clean_env(
        REDIS_URL=redis_url,
        POSTGRES_URL=postgres_url,
        REDIS_KEY_PREFIX=key_prefix,
        POSTGRES_SCHEMA=schema,
        SYNC_SCHEMA=sync_schema,
    )
    again = subprocess.run(
        [sys.executable, str(REPO / "demo_redis_postgres_sync.py")],
        env=env,
        cwd=work_dir,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert again.returncode == 0, again.stdout + again.stderr
    assert "Traceback" not in again.stdout + again.stderr
    assert "already in Redis" in again.stdout
    assert "=== Sync Complete in" in again.stdout
    assert "  Models: 0" in again.stdout and "  Errors: 0" in again.stdout
    assert "stats = {'models': 0, 'versions': 0" in again.stdout
    assert "each exactly once" in again.stdout
    assert row_counts(pg_conn) == first
