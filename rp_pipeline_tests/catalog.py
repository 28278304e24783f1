"""What Postgres's catalog says about a pair of schemas, with their names replaced by `A` and `S`,
so that two databases built by different code can be compared (and stored as a snapshot)."""

from __future__ import annotations


def read_catalog(conn, schema: str, sync_schema: str) -> dict[str, list[list]]:
    """Columns (type, nullability, default, identity), indexes and constraints of both schemas."""
    names = {schema: "A", sync_schema: "S"}

    def rows(sql: str) -> list[list]:
        found = conn.execute(sql, (list(names),)).fetchall()
        return sorted([_rename(value, names) for value in row] for row in found)

    # Definitions name tables the way the search path would: with none, every name comes qualified.
    search_path = conn.execute("SELECT current_setting('search_path')").fetchone()[0]
    conn.execute("SELECT set_config('search_path', 'pg_catalog', false)")
    try:
        return _read(rows)
    finally:
        conn.execute("SELECT set_config('search_path', %s, false)", (search_path,))


def _read(rows) -> dict[str, list[list]]:
    return {
        "columns": rows(
            "SELECT table_schema, table_name, column_name, ordinal_position, data_type, is_nullable, "
            "column_default, is_identity, identity_generation FROM information_schema.columns "
            "WHERE table_schema = ANY(%s)"
        ),
        "indexes": rows(
            "SELECT schemaname, tablename, indexname, indexdef FROM pg_indexes "
            "WHERE schemaname = ANY(%s)"
        ),
        "constraints": rows(
            "SELECT n.nspname, t.relname, c.conname, c.contype::text, pg_get_constraintdef(c.oid) "
            "FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace JOIN pg_class t ON t.oid = c.conrelid "
            "WHERE n.nspname = ANY(%s)"
        ),
    }


def _rename(value, names: dict[str, str]):
    if not isinstance(value, str):
        return value
    for name, placeholder in names.items():
        value = value.replace(name, placeholder)
    return value
