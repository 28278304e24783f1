"""Load: a DataFrame chunk → COPY into a staging table → one upsert statement.

Postgres converts the raw strings (JSON, timestamps, numbers) as it inserts. If a
value is refused, the chunk is split in halves under savepoints until the single
bad record is found; it is rejected with the field and Postgres's reason, and
every other record loads. No value is ever put into SQL text: rows travel by COPY.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd
import psycopg

from .bookkeeping import Bookkeeping
from .copy_encoding import as_text, copy_text
from .entities import PARENT_ENTITIES, TEXT, EntitySpec
from .entities import sql_name as q
from .errors import first_line
from .mapping import (
    NON_FINITE_COLUMN,
    cast_sql,
    map_parent_ids,
    null_non_finite_json,
    raw_record,
    validate,
)
from .schema import has_redis_id

if TYPE_CHECKING:
    from .settings import SyncConfig
    from .sources import Origin

log = logging.getLogger(__name__)

# What Postgres says about a record's own values (a value it cannot convert, a missing required one,
# an identity too long for its index): the record is isolated and rejected, the rest loads.
REFUSED = (
    psycopg.errors.DataError,
    psycopg.errors.IntegrityError,
    psycopg.errors.ProgramLimitExceeded,
)


@dataclass
class LoadResult:
    inserted: int = 0
    updated: int = 0
    skipped: int = 0
    unchanged: int = 0
    rejected: list[pd.DataFrame] = field(default_factory=list)
    loaded_keys: list[str] = field(default_factory=list)
    non_finite: int = 0  # NaN/Infinity in JSON stored as null, in the records written
    updated_ids: list[int] = field(
        default_factory=list
    )  # rows an upsert changed (checks look at them)


@dataclass
class _Chunk:
    start: int  # ordinal of its first record
    keys: list[str]
    raw: pd.DataFrame  # the records as read from Redis, for rejections
    frame: pd.DataFrame  # the mapped records
    payload: (
        bytes  # COPY text: for the staging table, or for the table itself when loading directly
    )
    non_finite: list[int] | None = (
        None  # per record: JSON NaN/Infinity stored as null (None: none at all)
    )


class Loader:
    """Loads one entity's chunks inside the caller's transaction."""

    def __init__(
        self,
        conn: psycopg.Connection,
        spec: EntitySpec,
        config: SyncConfig,
        origin: Origin,
        logger: logging.Logger | None = None,
    ):
        source, generation = origin.name, origin.generation
        schema, sync_schema = config.schema, config.sync_schema
        self.conn, self.spec, self.source, self.generation = conn, spec, source, generation
        self.log = logger or log
        self.table = f"{q(schema)}.{q(spec.name)}"
        self.book = Bookkeeping(conn, sync_schema, source, spec.name, generation)
        self.stage_table = q(f"rp_stage_{spec.name}")
        self.casts = {p.column: f"NULLIF(s.{q(p.column)}, '')::bigint" for p in spec.parents}
        self.casts.update(
            {c.name: cast_sql(c.type, f"s.{q(c.name)}", c.unset) for c in spec.columns}
        )
        self.casts["origin_source"] = "s.origin_source"
        if has_redis_id(spec):
            self.casts["origin_redis_id"] = "s._id"
        self.columns = list(self.casts)
        self.stage_columns = ["_ord", "_id"] + [c for c in self.columns if c != "origin_redis_id"]
        self.policy = config.policy(spec.name)
        self.upsert_sql = self._upsert_sql()
        self._next_ord = 0  # ordinals number staged records across the whole cycle
        self._chunks: list[_Chunk] = []
        # Append-only rows are COPYed straight into the table: one pass in Postgres instead of two.
        # A chunk that fails that way (a refused value, or a row already there) goes through the
        # staging upsert instead, which isolates bad records and skips existing ones.
        self.direct = not spec.mutable
        # The casts and COPY read a naive timestamp in TimeZone: UTC for this transaction, as the layout says.
        conn.execute(
            "SELECT set_config('TimeZone', 'UTC', true); "
            f"CREATE TEMP TABLE IF NOT EXISTS {self.stage_table} (_ord bigint, _id bigint, "
            + ", ".join(f"{q(c)} text" for c in self.stage_columns[2:])
            + ") ON COMMIT DROP"
        )

    # -- SQL -----------------------------------------------------------------------------------
    def _upsert_sql(self) -> str:
        spec, cols = self.spec, self.columns
        select = (
            f"SELECT {', '.join(f'{cast} AS {q(c)}' for c, cast in self.casts.items())}, s._ord "
            f"FROM {self.stage_table} s WHERE s._ord BETWEEN %(lo)s AND %(hi)s"
        )
        key = ", ".join(spec.identity_sql)
        if (
            spec.mutable
        ):  # one row per identity, the latest record winning, or ON CONFLICT cannot update
            select = (
                f"SELECT * FROM (SELECT DISTINCT ON ({key}) * FROM ({select}) c ORDER BY {key}, c._ord DESC) d "
                "ORDER BY d._ord"
            )  # new rows get Postgres ids in Redis id order
        sql = (
            f"INSERT INTO {self.table} AS t ({', '.join(map(q, cols))}) "
            f"SELECT {', '.join(map(q, cols))} FROM ({select}) v ON CONFLICT ({key})"
        )
        if spec.key_where:
            sql += f" WHERE {spec.key_where}"
        # Append-only rows need only a count (rowcount); returning ids costs a round of 100k tuples.
        returning = " RETURNING t.id, true AS inserted" if spec.log_each else ""
        if not spec.mutable:
            return sql + " DO NOTHING" + returning
        keycols = set(spec.natural_key)
        updatable = [c for c in cols if c not in keycols and not c.startswith("origin_")]
        if not updatable:
            return sql + " DO NOTHING" + returning
        # Rows any sync created (they carry an origin) follow Redis, also after a flush, when the
        # application re-creates its models under the same names in a new data set; rows it did not
        # create (origin NULL: the old adapter's, hand-written) are the conflict policy's.
        ours = "t.origin_source IS NOT NULL"
        if self.policy == "merge":
            new = {
                c: f"CASE WHEN {ours} THEN EXCLUDED.{q(c)} ELSE {self._fill(c)} END"
                for c in updatable
            }
        else:
            new = {c: f"EXCLUDED.{q(c)}" for c in updatable}
        changed = (
            f"ROW({', '.join(f't.{q(c)}' for c in updatable)}) IS DISTINCT FROM "
            f"ROW({', '.join(new.values())})"
        )
        where = f"{ours} AND {changed}" if self.policy == "skip" else changed
        return (
            sql
            + f" DO UPDATE SET {', '.join(f'{q(c)} = {e}' for c, e in new.items())} WHERE {where}"
            " RETURNING t.id, (t.xmax = 0) AS inserted"
        )

    def _fill(self, column: str) -> str:
        """Merge: the row's value, or Redis's where the row's is empty. The old sync wrote '' for NULL
        in text columns, so '' is empty too (and stays when Redis has nothing either)."""
        if self._type(column) == TEXT:
            return f"COALESCE(NULLIF(t.{q(column)}, ''), EXCLUDED.{q(column)}, t.{q(column)})"
        return f"COALESCE(t.{q(column)}, EXCLUDED.{q(column)})"

    def _type(self, column: str) -> str | None:
        return next((c.type for c in self.spec.columns if c.name == column), None)

    def _match(self) -> str:
        """Join condition: a staged record ↔ the table row with its identity."""
        return " AND ".join(
            f"t.{q(k)} {'IS NOT DISTINCT FROM' if self.spec.key_is_nullable(k) else '='} {self.casts[k]}"
            for k in self.spec.natural_key
        )

    # -- loading -------------------------------------------------------------------------------
    def copy_payload(self, frame: pd.DataFrame, start: int = 0) -> bytes:
        """The chunk's COPY text (pure Python, so it can run in another thread)."""
        return self._direct_payload(frame) if self.direct else self._stage_payload(frame, start)

    def _direct_payload(self, frame: pd.DataFrame) -> bytes:
        """Rows as the table's own columns, converted as `cast_sql` would: '' and 'not set' values → NULL."""
        columns = []
        for name in self.columns:
            if name == "origin_source":
                columns.append([self.source] * len(frame))
                continue
            values = as_text(frame["_id" if name == "origin_redis_id" else name])
            unset = next((c.unset for c in self.spec.columns if c.name == name), None)
            if unset is not None:
                zero = (pd.to_numeric(frame[name], errors="coerce") == float(unset)).tolist()
                values = [None if z else v for v, z in zip(values, zero)] if any(zero) else values
            if "" in values:
                values = [None if v == "" else v for v in values]
            columns.append(values)
        return copy_text(columns)

    def _stage_payload(self, frame: pd.DataFrame, start: int) -> bytes:
        """The staging rows as COPY text of raw strings, numbered from `start`."""
        columns = [list(map(str, range(start, start + len(frame)))), as_text(frame["_id"])]
        for c in self.stage_columns[2:]:
            columns.append(
                [self.source] * len(frame) if c == "origin_source" else as_text(frame[c])
            )
        return copy_text(columns)

    def _copy(self, cur, payload: bytes) -> None:
        with cur.copy(
            f"COPY {self.stage_table} ({', '.join(map(q, self.stage_columns))}) FROM STDIN"
        ) as copy:
            copy.write(payload)

    def find_existing(self, frame: pd.DataFrame, exact: bool = False) -> list[bool]:
        """For each record, whether Postgres holds a row with its identity (and, if `exact`, all its values)."""
        if frame.empty:
            return []
        same = ""
        if exact:
            columns = [c for c in self.columns if not c.startswith("origin_")]
            same = (
                f" AND ROW({', '.join(f't.{q(c)}' for c in columns)}) IS NOT DISTINCT FROM "
                f"ROW({', '.join(self.casts[c] for c in columns)})"
            )
        with self.conn.cursor() as cur:
            cur.execute(f"TRUNCATE {self.stage_table}")
            self._copy(cur, self._stage_payload(frame, 0))
            cur.execute(
                f"SELECT DISTINCT s._ord FROM {self.stage_table} s JOIN {self.table} t ON {self._match()}{same}",
                {"source": self.source},
            )
            found = {row[0] for row in cur.fetchall()}
            cur.execute(f"TRUNCATE {self.stage_table}")
        return [i in found for i in range(len(frame))]

    def stage(
        self,
        frame: pd.DataFrame,
        raw: pd.DataFrame,
        payload: bytes | None = None,
        start: int | None = None,
    ):
        """Add a mapped chunk to the staging table; `raw` holds the same records as read (for rejections)."""
        if frame.empty:
            return
        if start is not None and start != self._next_ord:
            raise RuntimeError(f"chunk numbered from {start}, expected {self._next_ord}")
        payload = self.copy_payload(frame, self._next_ord) if payload is None else payload
        keys, index, count = frame["_key"].tolist(), frame.index, len(frame)
        non_finite = frame[NON_FINITE_COLUMN].tolist() if NON_FINITE_COLUMN in frame else None
        if not self.direct:
            with self.conn.cursor() as cur:
                self._copy(cur, payload)
            frame, payload = (
                frame.iloc[:0],
                b"",
            )  # in the staging table now: keep only what rejections need
        self._chunks.append(
            _Chunk(self._next_ord, keys, raw.loc[index], frame, payload, non_finite)
        )
        self._next_ord += count

    def flush(self) -> LoadResult:
        """Upsert everything staged since the last flush in one statement (halving around refused records).

        Mutable entities flush once per cycle, so a name that appears in several chunks is written
        once, with its latest record; append-only ones flush every chunk to keep the stage small.
        """
        result = LoadResult()
        if not self._chunks:
            return result
        lo, hi = self._chunks[0].start, self._next_ord - 1
        with self.conn.cursor() as cur:
            if self.direct:
                try:
                    with self.conn.transaction():
                        for chunk in self._chunks:
                            with cur.copy(
                                f"COPY {self.table} ({', '.join(map(q, self.columns))}) FROM STDIN"
                            ) as cp:
                                cp.write(chunk.payload)
                            result.inserted += max(cur.rowcount, 0)
                    result.loaded_keys = [key for chunk in self._chunks for key in chunk.keys]
                    result.non_finite = sum(sum(chunk.non_finite or ()) for chunk in self._chunks)
                    self._chunks = []
                    return result
                except REFUSED:
                    result.inserted = 0
                    for chunk in self._chunks:
                        self._copy(cur, self._stage_payload(chunk.frame, chunk.start))
            if self.spec.mutable and self.policy == "skip" and not self.spec.by_origin:
                cur.execute(
                    f"SELECT count(DISTINCT t.id) FROM {self.stage_table} s JOIN {self.table} t ON {self._match()} "
                    "WHERE t.origin_source IS NULL"
                )
                result.skipped = cur.fetchone()[0]
            returned: list[tuple[int, bool]] = []
            bad: list[tuple[int, str]] = []
            inserted_count = self._insert_range(cur, lo, hi, returned, bad)
            if bad:
                result.rejected.append(self._rejected(bad))
                cur.execute(
                    f"DELETE FROM {self.stage_table} WHERE _ord = ANY(%s)", ([o for o, _ in bad],)
                )
            if self.returns_rows:
                result.inserted = sum(1 for _, ins in returned if ins)
                result.updated = len(returned) - result.inserted
                result.updated_ids = [pg_id for pg_id, ins in returned if not ins]
            else:
                result.inserted = inserted_count
            result.unchanged = max(
                0, hi - lo + 1 - len(bad) - result.inserted - result.updated - result.skipped
            )
            bad_ords = {o for o, _ in bad}
            result.loaded_keys = [
                key
                for chunk in self._chunks
                for i, key in enumerate(chunk.keys, chunk.start)
                if i not in bad_ords
            ]
            result.non_finite = self._non_finite_written(cur, returned, bad_ords)
            if self.spec.name in PARENT_ENTITIES:
                self.book.map_staged_ids(
                    f"{self.stage_table} s JOIN {self.table} t ON {self._match()}"
                )
            if self.spec.log_each and returned:
                self._log_synced(cur, [pg_id for pg_id, _ in returned])
            cur.execute(f"TRUNCATE {self.stage_table}")
        self._chunks = []
        return result

    def _rejected(self, bad: list[tuple[int, str]]) -> pd.DataFrame:
        """Rejected-records rows for staged ordinals, with the records as read from Redis."""
        keys, raws = [], []
        for ordinal, _ in bad:
            chunk = next(c for c in self._chunks if c.start <= ordinal < c.start + len(c.keys))
            keys.append(chunk.keys[ordinal - chunk.start])
            raws.append(raw_record(chunk.raw.iloc[ordinal - chunk.start], self.spec))
        return pd.DataFrame({"_key": keys, "raw": raws, "reason": [reason for _, reason in bad]})

    @property
    def returns_rows(self) -> bool:
        return " RETURNING " in self.upsert_sql

    def _insert_range(self, cur, lo: int, hi: int, returned: list, bad: list) -> int:
        """Upsert staged records lo..hi; on a refused value, halve until the bad record is alone. Returns rowcount."""
        params = {"lo": lo, "hi": hi, "source": self.source}
        try:
            with self.conn.transaction():
                cur.execute(self.upsert_sql, params)
                if self.returns_rows:
                    returned.extend(cur.fetchall())
                return max(cur.rowcount, 0)
        except REFUSED as exc:
            if lo == hi:
                bad.append((lo, self._reason(cur, lo, exc)))
                return 0
            mid = (lo + hi) // 2
            return self._insert_range(cur, lo, mid, returned, bad) + self._insert_range(
                cur, mid + 1, hi, returned, bad
            )

    def _reason(self, cur, ordinal: int, exc: Exception) -> str:
        """Name the field Postgres refused, by converting each field of the record on its own."""
        for spec_column in self.spec.columns:
            if spec_column.type == TEXT:
                continue
            try:
                with self.conn.transaction():
                    cur.execute(
                        f"SELECT {self.casts[spec_column.name]} FROM {self.stage_table} s WHERE s._ord = %s",
                        (ordinal,),
                    )
            except psycopg.errors.DataError as field_exc:
                return f"field {spec_column.redis_field!r}: {first_line(field_exc)}"
        return first_line(exc)

    def _non_finite_written(self, cur, returned: list[tuple[int, bool]], bad_ords: set[int]) -> int:
        """JSON values nulled in the staged records that were written (costs a query only when there are some)."""
        counts = {
            chunk.start + i: n
            for chunk in self._chunks
            if chunk.non_finite
            for i, n in enumerate(chunk.non_finite)
            if n and chunk.start + i not in bad_ords
        }
        if not counts or not self.returns_rows:
            return sum(counts.values())  # append-only: every record not refused is new
        if not returned:
            return 0
        # The rows inserted or updated, each by the latest staged record of its identity.
        cur.execute(
            f"SELECT max(s._ord) FROM {self.stage_table} s JOIN {self.table} t ON {self._match()} "
            "WHERE t.id = ANY(%(ids)s) GROUP BY t.id",
            {"ids": [pg_id for pg_id, _ in returned]},
        )
        return sum(counts.get(row[0], 0) for row in cur.fetchall())

    def _log_synced(self, cur, pg_ids: list[int]) -> None:
        cur.execute(
            f"SELECT s._id, t.id, t.{q(self.spec.display)} FROM {self.stage_table} s JOIN {self.table} t "
            f"ON {self._match()} WHERE t.id = ANY(%(ids)s) ORDER BY s._id",
            {"ids": pg_ids, "source": self.source},
        )
        for redis_id, pg_id, display in cur.fetchall():
            self.log.info(
                "  %s synced: %s (Redis ID %s → Pg ID %s)",
                self.spec.label,
                display,
                redis_id,
                pg_id,
            )


def find_in_postgres(
    conn: psycopg.Connection,
    spec: EntitySpec,
    frame: pd.DataFrame,
    config: SyncConfig,
    origin: Origin,
    exact: bool = False,
):
    """Validate and map records as the sync would, then say which ones Postgres holds (by identity, or
    with every value when `exact`). Returns (mapped records, found flags, invalid frames, waiting frame).
    Used by the reconciliation check and by retention; runs in the caller's transaction."""
    ok, invalid = validate(spec, frame)
    book = Bookkeeping(conn, config.sync_schema, origin.name, spec.name, origin.generation)
    mapped, waiting = map_parent_ids(spec, ok, book.resolve)
    mapped = null_non_finite_json(spec, mapped).reset_index(drop=True)
    loader = Loader(conn, spec, config, origin)
    return mapped, loader.find_existing(mapped, exact=exact), invalid, waiting
