"""The sync's own state in Postgres: watermarks, id map, pending and rejected records, history.

Every function runs on the caller's connection inside the caller's transaction,
so bookkeeping commits with the rows it describes: a crash can only replay a
cycle, never skip one.
"""

from __future__ import annotations

from collections.abc import Iterable
import pandas as pd
import psycopg

from .entities import sql_name as q


class Bookkeeping:
    def __init__(self, conn: psycopg.Connection, sync_schema: str, source: str, entity: str, generation: str):
        self.conn, self.source, self.entity, self.generation = conn, source, entity, generation
        self.s = q(sync_schema)
        self._id_cache: dict[tuple[str, int], int] = {}
        self._preloaded: set[str] = set()

    def _params(self, **extra) -> dict:
        return {"source": self.source, "entity": self.entity, "generation": self.generation, **extra}

    # -- watermark (incremental entities) ------------------------------------------------------
    def watermark(self) -> int:
        """Highest Redis id handled in this generation of the Redis; 0 after a flush or restart."""
        row = self.conn.execute(
            f"SELECT last_id, generation FROM {self.s}.watermarks WHERE source = %(source)s AND entity = %(entity)s",
            self._params()).fetchone()
        return int(row[0]) if row and row[1] == self.generation else 0

    def set_watermark(self, last_id: int) -> None:
        self.conn.execute(
            f"INSERT INTO {self.s}.watermarks (source, entity, generation, last_id) "
            "VALUES (%(source)s, %(entity)s, %(generation)s, %(last_id)s) ON CONFLICT (source, entity) "
            "DO UPDATE SET generation = EXCLUDED.generation, last_id = EXCLUDED.last_id, updated_at = now()",
            self._params(last_id=last_id))

    # -- id map ---------------------------------------------------------------------------------
    def preload_ids(self, entities: Iterable[str]) -> None:
        """Load the whole id map of these parent entities, after which `resolve` needs no query."""
        for entity in entities:
            rows = self.conn.execute(
                f"SELECT redis_id, pg_id FROM {self.s}.id_map WHERE source = %(source)s AND entity = %(parent)s "
                "AND generation = %(generation)s", self._params(parent=entity)).fetchall()
            self._id_cache.update({(entity, r): p for r, p in rows})
            self._preloaded.add(entity)

    def resolve(self, entity: str, redis_ids: Iterable[int]) -> dict[int, int]:
        """Postgres ids of parents by their Redis ids, in this generation; unknown ones are absent."""
        redis_ids = list(redis_ids)
        wanted = [] if entity in self._preloaded else [i for i in redis_ids if (entity, i) not in self._id_cache]
        if wanted:
            rows = self.conn.execute(
                f"SELECT redis_id, pg_id FROM {self.s}.id_map WHERE source = %(source)s AND entity = %(parent)s "
                "AND generation = %(generation)s AND redis_id = ANY(%(ids)s)",
                self._params(parent=entity, ids=wanted)).fetchall()
            self._id_cache.update({(entity, r): p for r, p in rows})
        return {i: self._id_cache[(entity, i)] for i in redis_ids if (entity, i) in self._id_cache}

    # -- pending: records waiting for a parent, or ids allocated before their record was written -----
    def pending_keys(self) -> list[str]:
        return [r[0] for r in self.conn.execute(
            f"SELECT redis_key FROM {self.s}.pending WHERE source = %(source)s AND entity = %(entity)s "
            "AND generation = %(generation)s", self._params()).fetchall()]

    def drop_other_generations(self) -> None:
        """After a flush the old generation's pending ids can never appear: forget them."""
        self.conn.execute(
            f"DELETE FROM {self.s}.pending WHERE source = %(source)s AND entity = %(entity)s "
            "AND generation <> %(generation)s", self._params())

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
            self._params(keys=waiting["_key"].tolist(), reasons=waiting["reason"].tolist())).fetchall()
        expired = {key for key, age in rows if float(age) > max_age_seconds}
        if not expired:
            return pd.DataFrame(columns=["_key", "raw", "reason"])
        self.done(expired)
        late = waiting[waiting["_key"].isin(expired)]
        return pd.DataFrame({"_key": late["_key"].to_numpy(), "raw": None,
                             "reason": [f"waited more than {max_age_seconds:g} s: {r}" for r in late["reason"]]})

    def done(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        if keys:
            self.conn.execute(
                f"DELETE FROM {self.s}.pending WHERE source = %(source)s AND entity = %(entity)s "
                "AND redis_key = ANY(%(keys)s)", self._params(keys=keys))

    def forget_unseen(self) -> None:
        """Full re-reads: a pending record not seen this cycle (this transaction) is gone from Redis."""
        self.conn.execute(
            f"DELETE FROM {self.s}.pending WHERE source = %(source)s AND entity = %(entity)s "
            "AND last_seen < now()", self._params())

    def pending_count(self) -> int:
        return self.conn.execute(
            f"SELECT count(*) FROM {self.s}.pending WHERE source = %(source)s AND entity = %(entity)s",
            self._params()).fetchone()[0]

    # -- rejected records ------------------------------------------------------------------------
    def reject(self, rejected: pd.DataFrame) -> int:
        """Keep each bad record once (by key and content); seeing it again bumps times_seen."""
        if rejected.empty:
            return 0
        count = len(rejected)
        rejected = rejected.assign(raw=rejected["raw"].map(lambda r: r if isinstance(r, str) else ""))
        rejected = rejected.drop_duplicates(["_key", "raw"], keep="last")  # one statement cannot touch a row twice
        raw = rejected["raw"].tolist()
        self.conn.execute(
            f"INSERT INTO {self.s}.rejected_records AS r (source, entity, redis_key, raw, raw_md5, reason) "
            "SELECT %(source)s, %(entity)s, k, w, md5(w), why FROM unnest(%(keys)s::text[], %(raw)s::text[], "
            "%(reasons)s::text[]) AS x(k, w, why) ON CONFLICT (source, entity, md5(redis_key), raw_md5) DO UPDATE SET "
            "last_seen = now(), times_seen = r.times_seen + 1, reason = EXCLUDED.reason",
            self._params(keys=rejected["_key"].tolist(), raw=raw, reasons=rejected["reason"].tolist()))
        return count

    # -- small named state (metric series scan) ------------------------------------------------------
    def state(self, name: str) -> str | None:
        row = self.conn.execute(f"SELECT value FROM {self.s}.state WHERE source = %(source)s AND name = %(name)s",
                                self._params(name=name)).fetchone()
        return row[0] if row else None

    def set_state(self, name: str, value: str) -> None:
        self.conn.execute(
            f"INSERT INTO {self.s}.state (source, name, value) VALUES (%(source)s, %(name)s, %(value)s) "
            "ON CONFLICT (source, name) DO UPDATE SET value = EXCLUDED.value", self._params(name=name, value=value))

    def series_cards(self) -> dict[str, int]:
        return dict(self.conn.execute(
            f"SELECT redis_key, card FROM {self.s}.metric_series WHERE source = %(source)s "
            "AND generation = %(generation)s", self._params()).fetchall())

    def set_series_cards(self, cards: dict[str, int]) -> None:
        if cards:
            self.conn.execute(
                f"INSERT INTO {self.s}.metric_series (source, redis_key, generation, card) "
                "SELECT %(source)s, k, %(generation)s, c FROM unnest(%(keys)s::text[], %(cards)s::bigint[]) AS x(k, c) "
                "ON CONFLICT (source, md5(redis_key)) DO UPDATE SET generation = EXCLUDED.generation, card = EXCLUDED.card",
                self._params(keys=list(cards), cards=list(cards.values())))

    # -- history -------------------------------------------------------------------------------------
    def record_run(self, run_id: str, result) -> None:
        self.conn.execute(
            f"INSERT INTO {self.s}.entity_runs (run_id, source, entity, started_at, finished_at, read, inserted, "
            "updated, unchanged, skipped, rejected, pending, deleted, watermark, duration_seconds) VALUES "
            "(%(run_id)s, %(source)s, %(entity)s, %(started_at)s, now(), %(read)s, %(inserted)s, %(updated)s, "
            "%(unchanged)s, %(skipped)s, %(rejected)s, %(pending)s, %(deleted)s, %(watermark)s, %(duration)s)",
            self._params(run_id=run_id, started_at=result.started_at, read=result.read, inserted=result.inserted,
                         updated=result.updated, unchanged=result.unchanged, skipped=result.skipped,
                         rejected=result.rejected, pending=result.pending, deleted=result.deleted,
                         watermark=result.watermark, duration=result.duration_seconds))

    def record_deleted(self, run_id: str, deleted: int) -> None:
        self.conn.execute(
            f"UPDATE {self.s}.entity_runs SET deleted = %(deleted)s WHERE run_id = %(run_id)s "
            "AND source = %(source)s AND entity = %(entity)s", self._params(run_id=run_id, deleted=deleted))

    # -- cache warm (warm.py) ----------------------------------------------------------------------
    def map_ids(self, entity: str, redis_ids: list[int], pg_ids: list[int]) -> None:
        """Record Redis id → Postgres id, as a load does, for records the warm writes or finds."""
        self.conn.execute(
            f"INSERT INTO {self.s}.id_map (source, entity, redis_id, generation, pg_id) "
            "SELECT %(source)s, %(parent)s, r, %(generation)s, p FROM unnest(%(redis)s::bigint[], %(pg)s::bigint[]) "
            "AS u(r, p) ON CONFLICT (source, entity, redis_id) DO UPDATE SET pg_id = EXCLUDED.pg_id, "
            "generation = EXCLUDED.generation",
            self._params(parent=entity, redis=redis_ids, pg=pg_ids))

    def note_warm_range(self, entity: str, first: int, last: int) -> None:
        """A block of ids whose bookkeeping is committed but whose records may not be written yet."""
        self.conn.execute(
            f"INSERT INTO {self.s}.state AS s (source, name, value) VALUES (%(source)s, %(name)s, %(value)s) "
            "ON CONFLICT (source, name) DO UPDATE SET value = s.value || EXCLUDED.value",
            self._params(name=f"warm:{self.generation}", value=f"{entity} {first} {last}\n"))

    def warm_ranges(self) -> list[tuple[str, int, int]]:
        """Blocks an unfinished warm of this data set noted, in the order it wrote them."""
        text = self.state(f"warm:{self.generation}") or ""
        return [(entity, int(first), int(last)) for entity, first, last in
                (line.split(" ") for line in text.splitlines() if line)]

    def clear_warm_ranges(self) -> None:
        self.conn.execute(f"DELETE FROM {self.s}.state WHERE source = %(source)s AND name LIKE 'warm:%%'",
                          self._params())
