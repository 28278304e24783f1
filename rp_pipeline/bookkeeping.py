"""The sync's own state in Postgres: watermarks, id map, pending and rejected records, history.

This module is the only code that reads or writes the sync schema (`rp_sync` by default);
checks, metrics, reports, retention and the cache warm ask it (a test holds every other module
to that). Every function runs on the caller's connection inside the caller's transaction,
so bookkeeping commits with the rows it describes: a crash can only replay a
cycle, never skip one.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd
import psycopg
import psycopg.rows

from .entities import sql_name as q

# The counts one entity's sync reports, as both its history row and its running totals take them.
_COUNTS = ("inserted", "updated", "unchanged", "skipped", "rejected", "pending")


def _counts(result) -> dict[str, int]:
    return {name: getattr(result, name) for name in _COUNTS}


class Bookkeeping:
    def __init__(
        self, conn: psycopg.Connection, sync_schema: str, source: str, entity: str, generation: str
    ):
        self.conn, self.source, self.entity, self.generation = conn, source, entity, generation
        self.s = q(sync_schema)
        self._id_cache: dict[tuple[str, int], int] = {}
        self._preloaded: set[str] = set()
        self._holds_rejected: bool | None = (
            None  # whether this entity has rejected records (asked once)
        )

    def _params(self, **extra) -> dict:
        return {
            "source": self.source,
            "entity": self.entity,
            "generation": self.generation,
            **extra,
        }

    # -- watermark (incremental entities) ------------------------------------------------------
    def watermark(self) -> int:
        """Highest Redis id handled in this generation of the Redis; 0 after a flush or restart."""
        row = self.conn.execute(
            f"SELECT last_id, generation FROM {self.s}.watermarks WHERE source = %(source)s AND entity = %(entity)s",
            self._params(),
        ).fetchone()
        return int(row[0]) if row and row[1] == self.generation else 0

    def set_watermark(self, last_id: int) -> None:
        self.conn.execute(
            f"INSERT INTO {self.s}.watermarks (source, entity, generation, last_id) "
            "VALUES (%(source)s, %(entity)s, %(generation)s, %(last_id)s) ON CONFLICT (source, entity) "
            "DO UPDATE SET generation = EXCLUDED.generation, last_id = EXCLUDED.last_id, updated_at = now()",
            self._params(last_id=last_id),
        )

    # -- id map ---------------------------------------------------------------------------------
    def preload_ids(self, entities: Iterable[str]) -> None:
        """Load the whole id map of these parent entities, after which `resolve` needs no query."""
        for entity in entities:
            rows = self.conn.execute(
                f"SELECT redis_id, pg_id FROM {self.s}.id_map WHERE source = %(source)s AND entity = %(parent)s "
                "AND generation = %(generation)s",
                self._params(parent=entity),
            ).fetchall()
            self._id_cache.update({(entity, r): p for r, p in rows})
            self._preloaded.add(entity)

    def resolve(self, entity: str, redis_ids: Iterable[int]) -> dict[int, int]:
        """Postgres ids of parents by their Redis ids, in this generation; unknown ones are absent."""
        redis_ids = list(redis_ids)
        wanted = (
            []
            if entity in self._preloaded
            else [i for i in redis_ids if (entity, i) not in self._id_cache]
        )
        if wanted:
            rows = self.conn.execute(
                f"SELECT redis_id, pg_id FROM {self.s}.id_map WHERE source = %(source)s AND entity = %(parent)s "
                "AND generation = %(generation)s AND redis_id = ANY(%(ids)s)",
                self._params(parent=entity, ids=wanted),
            ).fetchall()
            self._id_cache.update({(entity, r): p for r, p in rows})
        return {i: self._id_cache[(entity, i)] for i in redis_ids if (entity, i) in self._id_cache}

    def map_staged_ids(self, staged: str) -> None:
        """Remember Redis id → Postgres id for every record a load staged, so children can be mapped.

        `staged` is the load's `FROM` item: its staging table as `s` (Redis ids in `_id`) joined to
        the rows it loaded as `t`."""
        self.conn.execute(
            f"INSERT INTO {self.s}.id_map (source, entity, redis_id, generation, pg_id) "
            f"SELECT DISTINCT ON (s._id) %(source)s, %(entity)s, s._id, %(generation)s, t.id "
            f"FROM {staged} ORDER BY s._id "
            "ON CONFLICT (source, entity, redis_id) DO UPDATE SET pg_id = EXCLUDED.pg_id, "
            "generation = EXCLUDED.generation WHERE (id_map.pg_id, id_map.generation) "
            "IS DISTINCT FROM (EXCLUDED.pg_id, EXCLUDED.generation)",
            self._params(),
        )

    # -- pending: records waiting for a parent, or ids allocated before their record was written -----
    def pending_keys(self) -> list[str]:
        return [
            r[0]
            for r in self.conn.execute(
                f"SELECT redis_key FROM {self.s}.pending WHERE source = %(source)s AND entity = %(entity)s "
                "AND generation = %(generation)s",
                self._params(),
            ).fetchall()
        ]

    def drop_other_generations(self) -> None:
        """After a flush the old generation's pending ids can never appear: forget them."""
        self.conn.execute(
            f"DELETE FROM {self.s}.pending WHERE source = %(source)s AND entity = %(entity)s "
            "AND generation <> %(generation)s",
            self._params(),
        )

    def wait(self, waiting: pd.DataFrame, max_age_seconds: float) -> pd.DataFrame:
        """Record waiting records; return those that waited too long (now rejected), as _key/raw/reason."""
        if waiting.empty:
            return waiting.assign(raw=pd.Series(dtype=object))
        waiting = waiting.drop_duplicates("_key", keep="last")
        rows = self.conn.execute(
            f"INSERT INTO {self.s}.pending AS p (source, entity, redis_key, generation, reason) "
            "SELECT %(source)s, %(entity)s, k, %(generation)s, r FROM unnest(%(keys)s::text[], %(reasons)s::text[]) "
            "AS w(k, r) ON CONFLICT (source, entity, md5(redis_key)) DO UPDATE SET reason = EXCLUDED.reason, "
            "last_seen = now(), generation = EXCLUDED.generation, "
            "first_seen = CASE WHEN p.generation = EXCLUDED.generation THEN p.first_seen ELSE now() END "
            "RETURNING redis_key, extract(epoch FROM now() - first_seen)",
            self._params(keys=waiting["_key"].tolist(), reasons=waiting["reason"].tolist()),
        ).fetchall()
        expired = {key for key, age in rows if float(age) > max_age_seconds}
        if not expired:
            return pd.DataFrame(columns=["_key", "raw", "reason"])
        self.done(expired)
        late = waiting[waiting["_key"].isin(expired)]
        return pd.DataFrame(
            {
                "_key": late["_key"].to_numpy(),
                "raw": None,
                "reason": [f"waited more than {max_age_seconds:g} s: {r}" for r in late["reason"]],
            }
        )

    def done(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        if keys:
            self.conn.execute(
                f"DELETE FROM {self.s}.pending WHERE source = %(source)s AND entity = %(entity)s "
                "AND redis_key = ANY(%(keys)s)",
                self._params(keys=keys),
            )

    def forget_unseen(self) -> None:
        """Full re-reads: a pending record not seen this cycle (this transaction) is gone from Redis."""
        self.conn.execute(
            f"DELETE FROM {self.s}.pending WHERE source = %(source)s AND entity = %(entity)s "
            "AND last_seen < now()",
            self._params(),
        )

    def pending_count(self) -> int:
        return self.conn.execute(
            f"SELECT count(*) FROM {self.s}.pending WHERE source = %(source)s AND entity = %(entity)s",
            self._params(),
        ).fetchone()[0]

    def pending_among(self, keys: list[str]) -> set[str]:
        """Which of these Redis keys wait as pending (any generation), for the reconciliation."""
        return self._keys_in("pending", keys)

    # -- rejected records ------------------------------------------------------------------------
    def reject(self, rejected: pd.DataFrame) -> int:
        """Keep each bad record once (by key and content); seeing it again bumps times_seen.

        Returns how many were not held yet: a record re-read every cycle is one error, in the cycle
        that first rejects it, not one per cycle.
        """
        if rejected.empty:
            return 0
        rejected = rejected.assign(
            raw=rejected["raw"].map(lambda r: r if isinstance(r, str) else "")
        )
        rejected = rejected.drop_duplicates(
            ["_key", "raw"], keep="last"
        )  # one statement cannot touch a row twice
        raw = rejected["raw"].tolist()
        rows = self.conn.execute(
            f"INSERT INTO {self.s}.rejected_records AS r (source, entity, redis_key, raw, raw_md5, reason) "
            "SELECT %(source)s, %(entity)s, k, w, md5(w), why FROM unnest(%(keys)s::text[], %(raw)s::text[], "
            "%(reasons)s::text[]) AS x(k, w, why) ON CONFLICT (source, entity, md5(redis_key), raw_md5) DO UPDATE SET "
            "last_seen = now(), times_seen = r.times_seen + 1, reason = EXCLUDED.reason RETURNING (r.xmax = 0)",
            self._params(
                keys=rejected["_key"].tolist(), raw=raw, reasons=rejected["reason"].tolist()
            ),
        ).fetchall()
        self._holds_rejected = True
        return sum(1 for (new,) in rows if new)

    def forget_rejected(self, loaded_keys: list[str], still_rejected: Iterable[str] = ()) -> None:
        """Records whose key has loaded (a later, valid version) leave the rejected-records table.

        Keys rejected in the same breath stay: a metric series key covers many points, some of which
        may still be bad. Costs one query per cycle when the entity holds no rejected record at all.
        """
        if not loaded_keys:
            return
        if self._holds_rejected is None:
            self._holds_rejected = self.conn.execute(
                f"SELECT EXISTS (SELECT 1 FROM {self.s}.rejected_records WHERE source = %(source)s "
                "AND entity = %(entity)s)",
                self._params(),
            ).fetchone()[0]
        if not self._holds_rejected:
            return
        keep = set(still_rejected)
        keys = [k for k in dict.fromkeys(loaded_keys) if k not in keep]
        if keys:
            self.conn.execute(
                f"DELETE FROM {self.s}.rejected_records WHERE source = %(source)s AND entity = %(entity)s "
                "AND redis_key = ANY(%(keys)s)",
                self._params(keys=keys),
            )

    def rejected_among(self, keys: list[str]) -> set[str]:
        """Which of these Redis keys are held as rejected records, for the reconciliation."""
        return self._keys_in("rejected_records", keys)

    def _keys_in(self, table: str, keys: list[str]) -> set[str]:
        """Which of these Redis keys this entity has rows for in one of the sync's tables."""
        return {
            r[0]
            for r in self.conn.execute(
                f"SELECT DISTINCT redis_key FROM {self.s}.{table} WHERE source = %(source)s "
                "AND entity = %(entity)s AND redis_key = ANY(%(keys)s)",
                self._params(keys=keys),
            ).fetchall()
        }

    def rejections_met_last_sync(self) -> list[tuple[str, str, int, int]]:
        """(redis_key, reason, times_seen, how many in all) of the rejected records this entity's last
        sync met, new or still bad: the first 10 by key."""
        # A rejection that sync met has last_seen = its finished_at: both are now() of its transaction.
        return self.conn.execute(
            f"SELECT r.redis_key, r.reason, r.times_seen, count(*) OVER () FROM {self.s}.rejected_records r "
            "WHERE r.source = %(source)s AND r.entity = %(entity)s AND r.last_seen = (SELECT finished_at FROM "
            f"{self.s}.entity_runs WHERE source = %(source)s AND entity = %(entity)s ORDER BY id DESC LIMIT 1) "
            "ORDER BY r.redis_key LIMIT 10",
            self._params(),
        ).fetchall()

    # -- small named state (metric series scan) ------------------------------------------------------
    def state(self, name: str) -> str | None:
        row = self.conn.execute(
            f"SELECT value FROM {self.s}.state WHERE source = %(source)s AND name = %(name)s",
            self._params(name=name),
        ).fetchone()
        return row[0] if row else None

    def set_state(self, name: str, value: str) -> None:
        self.conn.execute(
            f"INSERT INTO {self.s}.state (source, name, value) VALUES (%(source)s, %(name)s, %(value)s) "
            "ON CONFLICT (source, name) DO UPDATE SET value = EXCLUDED.value",
            self._params(name=name, value=value),
        )

    def series_cards(self) -> dict[str, int]:
        return dict(
            self.conn.execute(
                f"SELECT redis_key, card FROM {self.s}.metric_series WHERE source = %(source)s "
                "AND generation = %(generation)s",
                self._params(),
            ).fetchall()
        )

    def set_series_cards(self, cards: dict[str, int]) -> None:
        if cards:
            self.conn.execute(
                f"INSERT INTO {self.s}.metric_series (source, redis_key, generation, card) "
                "SELECT %(source)s, k, %(generation)s, c FROM unnest(%(keys)s::text[], %(cards)s::bigint[]) AS x(k, c) "
                "ON CONFLICT (source, md5(redis_key)) DO UPDATE SET generation = EXCLUDED.generation, card = EXCLUDED.card",
                self._params(keys=list(cards), cards=list(cards.values())),
            )

    # -- what a run wrote: row counts and the rows checks look at ------------------------------------
    def largest_id(self, table: str) -> int:
        """The table's largest id (a backwards step on the primary key): rows inserted later lie above it."""
        return self.conn.execute(f"SELECT COALESCE(max(id), 0) FROM {table}").fetchone()[0]

    def add_rows(self, schema: str, table: str, inserted: int) -> int:
        """The table's exact row count after this transaction's `inserted` rows, kept in `table_rows`.

        Counted once with count(*) when the table has no entry yet (that count already includes this
        transaction's rows); added to ever after, in the transaction that inserts the rows.
        """
        row = self.conn.execute(
            f"UPDATE {self.s}.table_rows SET row_count = row_count + %(n)s, updated_at = now() "
            "WHERE schema_name = %(schema)s AND table_name = %(table)s RETURNING row_count",
            {"n": inserted, "schema": schema, "table": table},
        ).fetchone()
        if row is None:
            row = self.conn.execute(
                f"INSERT INTO {self.s}.table_rows AS r (schema_name, table_name, row_count) "
                f"SELECT %(schema)s, %(table)s, count(*) FROM {q(schema)}.{q(table)} "
                "ON CONFLICT (schema_name, table_name) DO UPDATE SET row_count = r.row_count + %(n)s, "
                "updated_at = now() RETURNING row_count",
                {"n": inserted, "schema": schema, "table": table},
            ).fetchone()
        return int(row[0])

    def row_count(self, schema: str, table: str) -> int | None:
        row = self.conn.execute(
            f"SELECT row_count FROM {self.s}.table_rows WHERE schema_name = %s AND table_name = %s",
            (schema, table),
        ).fetchone()
        return int(row[0]) if row else None

    def last_run(self) -> dict | None:
        """This entity's latest history row (what its last sync wrote), or None before the first."""
        with self.conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
            return cur.execute(
                f"SELECT run_id, inserted, updated, rejected, inserted_after_id, inserted_up_to_id, updated_ids "
                f"FROM {self.s}.entity_runs WHERE source = %(source)s AND entity = %(entity)s ORDER BY id DESC LIMIT 1",
                self._params(),
            ).fetchone()

    # -- history -------------------------------------------------------------------------------------
    def record_run(self, run_id: str, result) -> None:
        self.conn.execute(
            f"INSERT INTO {self.s}.entity_runs (run_id, source, entity, started_at, finished_at, read, inserted, "
            "updated, unchanged, skipped, rejected, pending, deleted, watermark, duration_seconds, "
            "inserted_after_id, inserted_up_to_id, updated_ids) VALUES "
            "(%(run_id)s, %(source)s, %(entity)s, %(started_at)s, now(), %(read)s, %(inserted)s, %(updated)s, "
            "%(unchanged)s, %(skipped)s, %(rejected)s, %(pending)s, %(deleted)s, %(watermark)s, %(duration)s, "
            "%(after_id)s, %(up_to_id)s, %(updated_ids)s)",
            self._params(
                **_counts(result),
                run_id=run_id,
                started_at=result.started_at,
                read=result.read,
                deleted=result.deleted,
                watermark=result.watermark,
                duration=result.duration_seconds,
                after_id=result.inserted_after_id,
                up_to_id=result.inserted_up_to_id,
                updated_ids=result.updated_ids,
            ),
        )

    def record_success(self, run_id: str, result) -> None:
        """Fold this sync into sync_status (the exporter's one table): last success, running totals,
        and what is held now. Runs last in the entity's transaction, so the row is locked only for the commit."""
        self.conn.execute(
            f"INSERT INTO {self.s}.sync_status AS s (source, entity, last_attempt_at, last_success_at, last_run_id, "
            "last_duration_seconds, successes, inserted_total, updated_total, unchanged_total, skipped_total, "
            "rejected_total, pending, rejected_held) VALUES (%(source)s, %(entity)s, now(), clock_timestamp(), "
            "%(run_id)s, %(duration)s, 1, %(inserted)s, %(updated)s, %(unchanged)s, %(skipped)s, %(rejected)s, "
            f"%(pending)s, (SELECT count(*) FROM {self.s}.rejected_records WHERE source = %(source)s "
            "AND entity = %(entity)s)) ON CONFLICT (source, entity) DO UPDATE SET "
            "last_success_at = EXCLUDED.last_success_at, last_run_id = EXCLUDED.last_run_id, "
            "last_duration_seconds = EXCLUDED.last_duration_seconds, successes = s.successes + 1, "
            "inserted_total = s.inserted_total + EXCLUDED.inserted_total, "
            "updated_total = s.updated_total + EXCLUDED.updated_total, "
            "unchanged_total = s.unchanged_total + EXCLUDED.unchanged_total, "
            "skipped_total = s.skipped_total + EXCLUDED.skipped_total, "
            "rejected_total = s.rejected_total + EXCLUDED.rejected_total, "
            "pending = EXCLUDED.pending, rejected_held = EXCLUDED.rejected_held",
            self._params(**_counts(result), run_id=run_id, duration=result.duration_seconds),
        )

    def record_deleted(self, run_id: str, deleted: int) -> None:
        self.conn.execute(
            f"UPDATE {self.s}.entity_runs SET deleted = %(deleted)s WHERE run_id = %(run_id)s "
            "AND source = %(source)s AND entity = %(entity)s",
            self._params(run_id=run_id, deleted=deleted),
        )

    # -- cache warm (warm.py) ----------------------------------------------------------------------
    def map_ids(self, entity: str, redis_ids: list[int], pg_ids: list[int]) -> None:
        """Record Redis id → Postgres id, as a load does, for records the warm writes or finds."""
        self.conn.execute(
            f"INSERT INTO {self.s}.id_map (source, entity, redis_id, generation, pg_id) "
            "SELECT %(source)s, %(parent)s, r, %(generation)s, p FROM unnest(%(redis)s::bigint[], %(pg)s::bigint[]) "
            "AS u(r, p) ON CONFLICT (source, entity, redis_id) DO UPDATE SET pg_id = EXCLUDED.pg_id, "
            "generation = EXCLUDED.generation",
            self._params(parent=entity, redis=redis_ids, pg=pg_ids),
        )

    def note_warm_range(self, entity: str, first: int, last: int) -> None:
        """A block of ids whose bookkeeping is committed but whose records may not be written yet."""
        self.conn.execute(
            f"INSERT INTO {self.s}.state AS s (source, name, value) VALUES (%(source)s, %(name)s, %(value)s) "
            "ON CONFLICT (source, name) DO UPDATE SET value = s.value || EXCLUDED.value",
            self._params(name=f"warm:{self.generation}", value=f"{entity} {first} {last}\n"),
        )

    def warm_ranges(self) -> list[tuple[str, int, int]]:
        """Blocks an unfinished warm of this data set noted, in the order it wrote them."""
        text = self.state(f"warm:{self.generation}") or ""
        return [
            (entity, int(first), int(last))
            for entity, first, last in (line.split(" ") for line in text.splitlines() if line)
        ]

    def clear_warm_ranges(self) -> None:
        self.conn.execute(
            f"DELETE FROM {self.s}.state WHERE source = %(source)s AND name LIKE 'warm:%%'",
            self._params(),
        )


def record_attempt(conn: psycopg.Connection, sync_schema: str, source: str, entity: str) -> None:
    """Note that a sync of this entity starts, committed at once: a failed sync rolls back its
    own writes, so this is the only trace an attempt leaves."""
    with conn.transaction():
        conn.execute(
            f"INSERT INTO {q(sync_schema)}.sync_status AS s (source, entity, last_attempt_at, attempts) "
            "VALUES (%s, %s, now(), 1) ON CONFLICT (source, entity) DO UPDATE SET "
            "last_attempt_at = EXCLUDED.last_attempt_at, attempts = s.attempts + 1",
            (source, entity),
        )


def sync_status(conn: psycopg.Connection, sync_schema: str) -> list[dict]:
    """Every source's and entity's status, watermark and oldest waiting record, in one statement.

    Cost: one row per source and entity; the watermark is a primary-key lookup and the
    oldest pending record one probe of ix_pending_first_seen, whatever the tables hold."""
    s = q(sync_schema)
    cursor = conn.execute(
        "SELECT s.source, s.entity, extract(epoch FROM s.last_attempt_at)::float8 AS last_attempt, "
        "extract(epoch FROM s.last_success_at)::float8 AS last_success, s.last_duration_seconds, s.attempts, "
        "s.successes, s.inserted_total, s.updated_total, s.unchanged_total, s.skipped_total, s.rejected_total, "
        "s.pending, s.rejected_held, w.generation, w.last_id, "
        f"extract(epoch FROM now() - (SELECT min(p.first_seen) FROM {s}.pending p WHERE p.source = s.source "
        "AND p.entity = s.entity))::float8 AS oldest_pending_age "
        f"FROM {s}.sync_status s LEFT JOIN {s}.watermarks w ON w.source = s.source AND w.entity = s.entity "
        "ORDER BY s.source, s.entity"
    )
    names = [c.name for c in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def source_labels(
    conn: psycopg.Connection, sync_schema: str, generation: str | None
) -> tuple[dict[str, str | None], str | None]:
    """({origin: SYNC_SOURCE label or None}, the origin of `generation`) from the sources table;
    ({}, None) in a database not migrated yet."""
    if conn.execute("SELECT to_regclass(%s)", (f"{q(sync_schema)}.sources",)).fetchone()[0] is None:
        return {}, None
    rows = conn.execute(
        f"SELECT DISTINCT ON (origin) origin, label, origin IN (SELECT origin FROM "
        f"{q(sync_schema)}.sources WHERE generation = %s) FROM {q(sync_schema)}.sources "
        "ORDER BY origin, last_seen DESC NULLS LAST",
        (generation,),
    ).fetchall()
    return {origin: label for origin, label, _ in rows}, next(
        (origin for origin, _, cur in rows if cur), None
    )


def run_history(conn: psycopg.Connection, sync_schema: str, run_id: str) -> list[tuple]:
    """(entity, inserted, updated, rejected, the run's seconds) for each entity one run synced.
    The seconds run from the first table's start to the last one's end (started_at plus its
    duration: finished_at is its transaction's now(), which may have begun long before the end)."""
    return conn.execute(
        "SELECT entity, inserted, updated, rejected, extract(epoch FROM max(started_at "
        "+ make_interval(secs => coalesce(duration_seconds, 0))) OVER () - min(started_at) OVER ()) "
        f"FROM {q(sync_schema)}.entity_runs WHERE run_id = %s",
        (run_id,),
    ).fetchall()


class Sources:
    """The `sources` table: each Redis data set (its marker, `generation`) and the origin name its
    rows and bookkeeping carry (sources.py decides; this reads and writes)."""

    def __init__(self, conn: psycopg.Connection, sync_schema: str):
        self.conn, self.s = conn, q(sync_schema)
        self.table = f"{self.s}.sources"

    def origin_of(
        self, generation: str, label: str | None, address: str, refresh_seconds: float
    ) -> tuple[str, bool] | None:
        """(origin, whether label and address are as given and last_seen is recent), or None when the
        data set is not recorded yet."""
        return self.conn.execute(
            "SELECT origin, (%(label)s::text IS NULL OR label = %(label)s::text) "
            "AND last_address = %(address)s AND last_seen > now() - make_interval(secs => %(refresh)s::float8) "
            f"FROM {self.table} WHERE generation = %(generation)s",
            {
                "generation": generation,
                "label": label,
                "address": address,
                "refresh": refresh_seconds,
            },
        ).fetchone()

    def add(self, generation: str, origin: str, label: str | None, address: str) -> None:
        """Record a data set's origin, unless a concurrent sync recorded one first."""
        self.conn.execute(
            f"INSERT INTO {self.table} (generation, origin, label, last_address) "
            "VALUES (%(generation)s, %(origin)s, %(label)s, %(address)s) ON CONFLICT DO NOTHING",
            {"generation": generation, "origin": origin, "label": label, "address": address},
        )

    def refresh(self, generation: str, label: str | None, address: str) -> None:
        """Note the label (if any) and address a data set was just reached with."""
        self.conn.execute(
            f"UPDATE {self.table} SET label = COALESCE(%(label)s, label), last_address = %(address)s, "
            "last_seen = now() WHERE generation = %(generation)s",
            {"generation": generation, "label": label, "address": address},
        )

    def legacy_names(self, generation: str) -> list[str]:
        """Source names an earlier version (naming sources by address) gave this data set in its
        bookkeeping and no origin holds, the most used first."""
        s = self.s
        return [
            r[0]
            for r in self.conn.execute(
                f"""WITH legacy AS (
              SELECT source, count(*) AS ids, NULL::timestamptz AS latest FROM {s}.id_map
              WHERE generation = %(g)s GROUP BY source
              UNION ALL
              SELECT source, 0, max(updated_at) FROM {s}.watermarks WHERE generation = %(g)s GROUP BY source)
            SELECT source FROM legacy l
            WHERE NOT EXISTS (SELECT 1 FROM {s}.sources o WHERE o.origin = l.source)
            GROUP BY source ORDER BY sum(ids) DESC, max(latest) DESC NULLS LAST, source""",
                {"g": generation},
            ).fetchall()
        ]


class IdMapSql:
    """SQL fragments over the id map for statements that join it to the analytics tables (the cache
    warm's). Their parameters: %(source)s, %(generation)s, and %(lo)s/%(hi)s for a block of ids; the
    analytics row is `t`."""

    def __init__(self, sync_schema: str):
        self.id_map = f"{q(sync_schema)}.id_map"

    def unmapped(self) -> str:
        """Rows of entity %(entity)s with no Redis id in this data set."""
        return (
            f"NOT EXISTS (SELECT 1 FROM {self.id_map} m WHERE m.source = %(source)s AND m.entity = "
            f"%(entity)s AND m.generation = %(generation)s AND m.pg_id = t.id)"
        )

    def mapped_in_block(self, entity: str) -> str:
        """Rows mapped from a Redis id between %(lo)s and %(hi)s."""
        return (
            f"EXISTS (SELECT 1 FROM {self.id_map} m WHERE m.source = %(source)s AND m.entity = '{entity}' "
            "AND m.generation = %(generation)s AND m.pg_id = t.id AND m.redis_id BETWEEN %(lo)s AND %(hi)s)"
        )

    def redis_id(self, entity: str) -> str:
        """The row's largest Redis id in this data set (within %(lo)s..%(hi)s unless they are NULL)."""
        return (
            f"(SELECT max(m.redis_id) FROM {self.id_map} m WHERE m.source = %(source)s AND m.entity = "
            f"'{entity}' AND m.generation = %(generation)s AND m.pg_id = t.id "
            "AND (%(lo)s::bigint IS NULL OR m.redis_id BETWEEN %(lo)s AND %(hi)s))"
        )

    def redis_ids(self, entity: str) -> str:
        """A relation (pg_id, redis_id): each row's largest Redis id in this data set."""
        return (
            f"(SELECT pg_id, max(redis_id) AS redis_id FROM {self.id_map} WHERE source = %(source)s "
            f"AND entity = '{entity}' AND generation = %(generation)s GROUP BY pg_id)"
        )
