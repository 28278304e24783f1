"""Asset checks on every synced table, made from the entity specs by one factory.

Each check costs what the cycle changed, never what the table holds:

- `identity_is_unique`: the unique index on the identity exists and is valid (so Postgres itself
  refuses a duplicate identity), and no row this sync inserted repeats another row's content
  under a different origin or identity (the same data synced twice from two sources);
- `foreign_keys_resolve` (tables with parents): each foreign-key constraint exists, is validated
  and enforced (so Postgres itself refused a row whose parent is missing); for a column without
  one, every parent id of the rows this sync inserted or updated is looked up in the parent table;
- `reconciles_with_redis`: a sample of the records the last sync covered is in Postgres
  (or was kept as rejected or pending): nothing lost;
- `no_rejected_records` (WARN): the last sync met no record it could not load (new, or still bad since
  an earlier sync); when it did, examples and reasons.

They run in the sync's own step, right after each table's sync, on the rows it wrote; run alone
(only checks selected) they look at the rows the table's last sync wrote (`rp_sync.entity_runs`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import dagster as dg
import pandas as pd
import psycopg
import redis

from .bookkeeping import Bookkeeping
from .engine import EntityResult
from .entities import ENTITIES, EntitySpec
from .entities import sql_name as q
from .reconcile import reconcile, reconciliation_table
from .schema import identity_index_name
from .settings import SyncConfig

IDENTITY_IS_UNIQUE, FOREIGN_KEYS_RESOLVE = "identity_is_unique", "foreign_keys_resolve"
RECONCILES_WITH_REDIS, NO_REJECTED_RECORDS = "reconciles_with_redis", "no_rejected_records"


def check_specs(spec: EntitySpec) -> list[dg.AssetCheckSpec]:
    """The checks of one table (no foreign-key check for a table without parents)."""
    specs = [
        dg.AssetCheckSpec(
            IDENTITY_IS_UNIQUE,
            asset=spec.name,
            description=(
                f"The unique index on ({', '.join(spec.natural_key)}) is valid, and no row the sync inserted repeats "
                "another row's content under a different origin or identity."
            ),
        ),
        dg.AssetCheckSpec(
            FOREIGN_KEYS_RESOLVE,
            asset=spec.name,
            description=(
                f"The foreign keys of `{spec.name}` are enforced, and every parent id of the rows the sync inserted "
                "or updated points at an existing row."
            ),
        ),
        dg.AssetCheckSpec(
            RECONCILES_WITH_REDIS,
            asset=spec.name,
            description=(
                "A sample of the Redis records the last sync covered is in Postgres (or kept as rejected or pending)."
            ),
        ),
        dg.AssetCheckSpec(
            NO_REJECTED_RECORDS,
            asset=spec.name,
            description=(
                "The last sync of this table rejected no record (WARN: the sync still succeeds)."
            ),
        ),
    ]
    return [s for s in specs if s.name != FOREIGN_KEYS_RESOLVE or spec.parents]


ALL_CHECK_SPECS = [s for spec in ENTITIES for s in check_specs(spec)]


@dataclass(frozen=True)
class WrittenRows:
    """The rows one sync of a table wrote: inserted ids in (after_id, up_to_id], and the ids it updated."""

    after_id: int = 0
    up_to_id: int = 0
    updated_ids: list[int] = field(default_factory=list)
    rejected: int = 0
    source: str = (
        ""  # the origin of the rows: what `origin_source` and the bookkeeping's `source` hold
    )
    table_rows: int | None = None  # the table's rows, if known: picks the duplicate search's plan

    @classmethod
    def of(cls, result: EntityResult) -> WrittenRows:
        return cls(
            result.inserted_after_id or 0,
            result.inserted_up_to_id or 0,
            result.updated_ids,
            result.rejected,
            result.origin,
            result.row_count,
        )

    @classmethod
    def last_sync(cls, book: Bookkeeping, schema: str, table: str) -> WrittenRows:
        """What the table's last sync from this origin wrote (nothing before the first)."""
        row = book.last_run()
        if not row:
            return cls(source=book.source)
        return cls(
            row["inserted_after_id"] or 0,
            row["inserted_up_to_id"] or 0,
            row["updated_ids"] or [],
            row["rejected"],
            book.source,
            book.row_count(schema, table),
        )

    def inserted(self, table: str) -> str:
        """SQL for the CTE `inserted`: the rows this sync inserted (parameters: after, up_to, source).

        They are found by primary-key range alone, then by origin. Given the origin as an index
        condition too, a planner without fresh statistics (right after a load) reads the identity
        index's entry for every row ever synced from that origin: the whole table, usually.
        """
        return (
            f"inserted_range AS MATERIALIZED (SELECT * FROM {table} "
            "WHERE id > %(after)s AND id <= %(up_to)s), "
            "inserted AS (SELECT * FROM inserted_range WHERE origin_source = %(source)s)"
        )

    def params(self) -> dict:
        return {
            "after": self.after_id,
            "up_to": self.up_to_id,
            "updated": self.updated_ids,
            "source": self.source,
        }


def identity_index_is_valid(conn: psycopg.Connection, config: SyncConfig, spec: EntitySpec) -> bool:
    """The identity's unique index exists, is unique and valid (a failed CREATE INDEX CONCURRENTLY is not)."""
    row = conn.execute(
        "SELECT i.indisunique AND i.indisvalid AND i.indisready FROM pg_index i "
        "JOIN pg_class x ON x.oid = i.indexrelid JOIN pg_namespace n ON n.oid = x.relnamespace "
        "WHERE n.nspname = %s AND x.relname = %s",
        (config.schema, identity_index_name(spec)),
    ).fetchone()
    return bool(row and row[0])


def content_columns(spec: EntitySpec) -> list[str]:
    """Every column but the row id and the origin: what makes two rows the same data."""
    return [p.column for p in spec.parents] + spec.column_names


def content_duplicates(
    conn: psycopg.Connection, config: SyncConfig, spec: EntitySpec, written: WrittenRows
) -> list[tuple]:
    """Groups of rows holding the same content, one of them inserted by this sync (first 10):
    (their ids, their origins).

    Only origin-identified tables can have them: elsewhere the identity is part of the content and
    the unique index already rules them out. Candidates are the rows sharing the new rows' NOT NULL
    columns (e.g. predictions by model version and timestamp), grouped by a hash of their whole
    content, so hashing happens only where another row shares those columns. The candidates cost
    one index probe per new row; when the new rows are half the table or more (a first load),
    one pass grouping the whole table is cheaper, and costs at most twice as many rows.
    """
    if not spec.by_origin or written.up_to_id <= written.after_id:
        return []
    content = content_columns(spec)
    not_null = [
        c
        for c in content
        if c
        in {p.column for p in spec.parents if not p.optional}
        | {c.name for c in spec.columns if c.required}
    ]
    table = f"{q(config.schema)}.{q(spec.name)}"
    new = "c.id > %(after)s AND c.id <= %(up_to)s AND c.origin_source = %(source)s"
    keys = ", ".join(map(q, not_null))
    inserted = written.up_to_id - written.after_id
    with conn.transaction():
        if written.table_rows is not None and 2 * inserted >= written.table_rows:
            candidates = (
                f"k AS (SELECT {keys} FROM {table} c GROUP BY {keys} "
                f"HAVING count(*) > 1 AND bool_or({new})), "
            )
        else:
            # Right after a bulk load the table has no statistics yet, and the planner may scan it
            # once per new row; the lookups must go through the indexes whatever the statistics say.
            conn.execute("SET LOCAL enable_seqscan = off")
            # The new rows that share their NOT NULL columns with any other row (one index probe
            # each, nothing hashed: almost always none).
            match = " AND ".join(f"o.{q(c)} = n.{q(c)}" for c in not_null)
            candidates = (
                f"{written.inserted(table)}, "
                f"n AS MATERIALIZED (SELECT n.* FROM inserted n WHERE "
                f"EXISTS (SELECT 1 FROM {table} o WHERE {match} AND o.id <> n.id)), "
                f"k AS (SELECT DISTINCT {', '.join(f'n.{q(c)}' for c in not_null)} FROM n), "
            )
        # Only those candidates are compared by whole content.
        return conn.execute(
            f"WITH {candidates}"
            f"c AS MATERIALIZED (SELECT t.id, t.origin_source, md5(ROW({', '.join(f't.{q(c)}' for c in content)})::text) "
            f"AS h FROM k JOIN {table} t ON "
            + " AND ".join(f"t.{q(c)} = k.{q(c)}" for c in not_null)
            + ") "
            "SELECT array_agg(c.id ORDER BY c.id), array_agg(DISTINCT c.origin_source) FROM c GROUP BY c.h "
            f"HAVING count(*) > 1 AND bool_or({new}) ORDER BY min(c.id) LIMIT 10",
            written.params(),
        ).fetchall()


def enforcing_constraints(
    conn: psycopg.Connection, config: SyncConfig, spec: EntitySpec
) -> dict[str, str]:
    """Per parent column, the foreign-key constraint that vouches for every row's parent id: one on
    that column alone, onto the parent table, validated, its check triggers enabled (so Postgres
    itself refused any row whose parent does not exist). Columns missing here have none."""
    rows = conn.execute(
        "SELECT a.attname, p.relname, c.conname FROM pg_constraint c "
        "JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
        "JOIN pg_class p ON p.oid = c.confrelid AND p.relnamespace = n.oid "
        "JOIN pg_attribute a ON a.attrelid = c.conrelid AND c.conkey = ARRAY[a.attnum] "
        "WHERE c.contype = 'f' AND c.convalidated AND n.nspname = %s AND t.relname = %s "
        "AND NOT EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgconstraint = c.oid "
        "AND g.tgrelid = c.conrelid AND g.tgenabled = 'D')",
        (config.schema, spec.name),
    ).fetchall()
    parents = {p.column: p.entity for p in spec.parents}
    return {column: name for column, parent, name in rows if parents.get(column) == parent}


def dangling_foreign_keys(
    conn: psycopg.Connection,
    config: SyncConfig,
    spec: EntitySpec,
    written: WrittenRows,
    columns: list[str] | None = None,
) -> dict[str, int]:
    """Per foreign-key column (`columns`, default all), rows this sync wrote whose parent id points
    at no row."""
    parents = [p for p in spec.parents if columns is None or p.column in columns]
    if not parents:
        return {}
    if written.up_to_id <= written.after_id and not written.updated_ids:
        return {p.column: 0 for p in parents}
    s = q(config.schema)
    joins = " ".join(
        f"LEFT JOIN {s}.{q(p.entity)} p{i} ON p{i}.id = c.{q(p.column)}"
        for i, p in enumerate(parents)
    )
    counts = ", ".join(
        f"count(*) FILTER (WHERE c.{q(p.column)} IS NOT NULL AND p{i}.id IS NULL)"
        for i, p in enumerate(parents)
    )
    table = f"{s}.{q(spec.name)}"
    row = conn.execute(
        f"WITH {written.inserted(table)}, "
        "written AS (SELECT id FROM inserted UNION SELECT unnest(%(updated)s::bigint[])) "
        f"SELECT {counts} FROM written w JOIN {table} c ON c.id = w.id {joins}",
        written.params(),
    ).fetchone()
    return {p.column: int(n) for p, n in zip(parents, row)}


def check_identity(conn, config, spec: EntitySpec, written: WrittenRows) -> dg.AssetCheckResult:
    index_ok = identity_index_is_valid(conn, config, spec)
    duplicates = content_duplicates(conn, config, spec, written)
    metadata = {
        "unique_index": identity_index_name(spec)
        if index_ok
        else f"{identity_index_name(spec)} "
        "missing or invalid: Postgres no longer refuses duplicate identities",
        "content_duplicates": len(duplicates),
    }
    if duplicates:
        metadata["examples"] = dg.MetadataValue.md(
            pd.DataFrame(duplicates, columns=["ids with the same content", "their origins"])
            .astype(str)
            .to_markdown(index=False)
        )
    return dg.AssetCheckResult(
        asset_key=spec.name,
        check_name=IDENTITY_IS_UNIQUE,
        passed=index_ok and not duplicates,
        metadata=metadata,
    )


def check_foreign_keys(conn, config, spec: EntitySpec, written: WrittenRows) -> dg.AssetCheckResult:
    """A validated, enforced constraint vouches for every row of its column, so only the columns
    without one have their written rows looked up in the parent table."""
    enforced = enforcing_constraints(conn, config, spec)
    unenforced = [p.column for p in spec.parents if p.column not in enforced]
    dangling = {p.column: 0 for p in spec.parents}
    dangling.update(dangling_foreign_keys(conn, config, spec, written, unenforced))
    written_count = max(written.up_to_id - written.after_id, 0) + len(written.updated_ids)
    metadata = {f"dangling_{column}": n for column, n in dangling.items()}
    metadata["rows_checked"] = written_count
    metadata["rows_looked_up"] = written_count if unenforced else 0
    if enforced:
        metadata["enforced_by"] = ", ".join(f"{c}: {name}" for c, name in enforced.items())
    if unenforced:
        metadata["not_enforced"] = ", ".join(unenforced)
    return dg.AssetCheckResult(
        asset_key=spec.name,
        check_name=FOREIGN_KEYS_RESOLVE,
        passed=not unenforced and not any(dangling.values()),
        metadata=metadata,
    )


def check_reconciliation(
    conn, client: redis.Redis, config, spec: EntitySpec
) -> dg.AssetCheckResult:
    result = reconcile(spec, client, conn, config)
    metadata = {
        "counts": dg.MetadataValue.md(reconciliation_table(result).to_markdown(index=False)),
        "checked": result.checked,
        "missing": len(result.missing_keys),
    }
    if result.missing_keys:
        metadata["missing_examples"] = dg.MetadataValue.json(result.missing_keys[:20])
    return dg.AssetCheckResult(
        asset_key=spec.name,
        check_name=RECONCILES_WITH_REDIS,
        passed=result.passed,
        metadata=metadata,
    )


def check_rejections(conn, config, spec: EntitySpec, written: WrittenRows) -> dg.AssetCheckResult:
    """WARN while the table's last sync met records it could not load, new ones or ones still bad."""
    met = Bookkeeping(
        conn, config.sync_schema, written.source, spec.name, ""
    ).rejections_met_last_sync()
    metadata = {
        "rejected_last_sync": written.rejected,
        "rejected_seen_last_sync": met[0][3] if met else 0,
    }
    if met:
        metadata["examples"] = dg.MetadataValue.md(
            pd.DataFrame(
                [r[:3] for r in met], columns=["redis_key", "reason", "times_seen"]
            ).to_markdown(index=False)
        )
    return dg.AssetCheckResult(
        asset_key=spec.name,
        check_name=NO_REJECTED_RECORDS,
        passed=not met,
        severity=dg.AssetCheckSeverity.WARN,
        metadata=metadata,
    )


def table_checks(
    spec: EntitySpec,
    names: set[str],
    written: WrittenRows | None,
    conn: psycopg.Connection,
    client: redis.Redis,
    config: SyncConfig,
    source: str,
) -> Iterator[dg.AssetCheckResult]:
    """The results of the checks `names` of one table, on the rows `written` (None: its last sync's)."""
    if not names:
        return
    if written is None:
        written = WrittenRows.last_sync(
            Bookkeeping(conn, config.sync_schema, source, spec.name, ""), config.schema, spec.name
        )
    if IDENTITY_IS_UNIQUE in names:
        yield check_identity(conn, config, spec, written)
    if FOREIGN_KEYS_RESOLVE in names:
        yield check_foreign_keys(conn, config, spec, written)
    if RECONCILES_WITH_REDIS in names:
        yield check_reconciliation(conn, client, config, spec)
    if NO_REJECTED_RECORDS in names:
        yield check_rejections(conn, config, spec, written)
