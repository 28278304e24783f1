"""The sync schema has one owner: outside the migrations, only `rp_pipeline/bookkeeping.py` names
its tables in SQL. Checks, metrics, reports, retention and the cache warm ask `Bookkeeping`."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import psycopg

import rp_pipeline
from rp_pipeline.schema import migrate

PACKAGE = Path(rp_pipeline.__file__).parent
OWNERS = {PACKAGE / "bookkeeping.py"}  # and everything under migrations/


def sync_tables(sync_config) -> list[str]:
    """The tables the migrations create in the sync schema (so a new table is covered at once)."""
    migrate(sync_config)
    with psycopg.connect(sync_config.postgres_url) as conn:
        return [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1",
                (sync_config.sync_schema,),
            ).fetchall()
        ]


def _strings(path: Path):
    """(line, text) of every string literal; an f-string's replacement fields read `{}`."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.JoinedStr):
            text = "".join(
                part.value if isinstance(part, ast.Constant) else "{}" for part in node.values
            )
            yield node.lineno, text
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value


def sql_on_sync_tables(path: Path, tables: list[str]) -> list[str]:
    """Where `path` names a sync table schema-qualified: `{schema}.table` in an f-string, or
    `rp_sync.table` after a SQL keyword (the default schema written out)."""
    names = "|".join(map(re.escape, tables))
    qualified = re.compile(rf'\{{\}}\."?(?:{names})\b')
    literal = re.compile(
        rf'\b(?:FROM|INTO|UPDATE|JOIN|TABLE)\s+"?rp_sync"?\."?(?:{names})\b', re.IGNORECASE
    )
    return [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {text[:80]!r}"
        for line, text in _strings(path)
        if qualified.search(text) or literal.search(text)
    ]


def test_only_bookkeeping_writes_sql_on_the_sync_schema(sync_config):
    tables = sync_tables(sync_config)
    assert {"watermarks", "id_map", "pending", "rejected_records", "entity_runs"} <= set(tables)
    # The detector sees the real thing: bookkeeping.py's own statements.
    own = sql_on_sync_tables(PACKAGE / "bookkeeping.py", tables)
    assert len(own) >= 20, own
    elsewhere = [
        hit
        for path in sorted(PACKAGE.rglob("*.py"))
        if path not in OWNERS and "migrations" not in path.relative_to(PACKAGE).parts
        for hit in sql_on_sync_tables(path, tables)
    ]
    assert elsewhere == [], "SQL on the sync schema outside bookkeeping.py:\n" + "\n".join(
        elsewhere
    )
