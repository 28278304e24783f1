"""The checks read what the cycle wrote, not the table, also right after a bulk load.

A cycle's checks must cost what it changed: with 40,000 predictions synced and 10 new ones, the
content-duplicate search and the foreign-key lookup each read fewer Postgres pages than the
identity index alone holds. The table has no statistics (autovacuum off, never analyzed), as right
after a first load: the state where a planner that was handed the origin as an index condition read
the identity index's entry for every row ever synced from that origin.
"""

import psycopg

from rp_pipeline.checks import WrittenRows, content_duplicates, dangling_foreign_keys
from rp_pipeline.entities import BY_NAME
from rp_pipeline.schema import identity_index_name

PREDICTIONS = BY_NAME["predictions"]


class Recorder:
    """The connection, recording the statements run on it (to EXPLAIN them after)."""

    def __init__(self, conn: psycopg.Connection):
        self.conn, self.statements = conn, []

    def transaction(self):
        return self.conn.transaction()

    def execute(self, query, params=None):
        self.statements.append((query, params))
        return self.conn.execute(query, params)


def pages_read(conn: psycopg.Connection, statements: list) -> int:
    """Shared buffers the last statement touched (hit or read, every plan node included), run as
    the check ran it: after the statements before it (its settings), in one transaction."""
    *before, (query, params) = statements
    with conn.transaction():
        for statement in before:
            conn.execute(*statement)
        (plan,) = conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + query, params
        ).fetchone()[0]
    return plan["Plan"]["Shared Hit Blocks"] + plan["Plan"]["Shared Read Blocks"]


def log(writer, version: int, first: int, count: int) -> None:
    writer.log_predictions(
        {"model_version_id": version, "input_data": {"x": i}, "output_data": [i % 7]}
        for i in range(first, first + count)
    )


def test_a_small_cycle_checks_read_only_what_it_wrote(writer, run_sync, sync_config):
    schema = sync_config.schema
    version = writer.create_model_version(writer.create_model("m"), "v1")
    log(writer, version, 0, 40_000)
    run_sync()
    with psycopg.connect(sync_config.postgres_url, autocommit=True) as conn:
        table = f'"{schema}".predictions'
        conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
        # Without the constraint, the foreign-key check looks the written rows' parents up.
        conn.execute(f"ALTER TABLE {table} DROP CONSTRAINT fk_predictions_model_version_id")
        log(writer, version, 40_000, 10)
        result = run_sync()["predictions"]
        assert result.inserted == 10
        written = WrittenRows.of(result)
        (index_pages,) = conn.execute(
            "SELECT pg_relation_size(%s) / current_setting('block_size')::int",
            (f'"{schema}".{identity_index_name(PREDICTIONS)}',),
        ).fetchone()
        assert index_pages > 200  # big enough that reading it is told apart from probing 10 rows

        search, lookup = Recorder(conn), Recorder(conn)
        assert content_duplicates(search, sync_config, PREDICTIONS, written) == []
        assert dangling_foreign_keys(lookup, sync_config, PREDICTIONS, written) == {
            "model_version_id": 0
        }
        assert pages_read(conn, search.statements) < index_pages / 4
        assert pages_read(conn, lookup.statements) < index_pages / 4
