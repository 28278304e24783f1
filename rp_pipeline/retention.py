"""Retention: delete old records from Redis once Postgres durably holds them (off by default).

Runs after the entity's sync transaction has committed. A record is deleted only when
(1) it is older than the entity's retention, (2) a committed Postgres row has its identity
*and every one of its values* (so a record changed since its sync is kept for the next
cycle), and (3) at the moment of deletion it is still exactly what was checked: a Lua
script compares every field before it deletes the hash and its index entry together, so
no index member is left without its hash and no concurrent write is ever lost (on a Redis
Cluster, where the two are in different slots, in two steps: `_DELETE_HASH_IF_UNCHANGED`).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pandas as pd
import psycopg
import redis
from redis.cluster import RedisCluster

from .bookkeeping import Bookkeeping
from .entities import METRICS, MODEL_VERSIONS, PREDICTIONS, EntitySpec
from .extract import (
    RedisSource,
    chunks,
    pipelined,
    raise_refusal,
    read_hash_chunks,
    read_metric_series,
)
from .load import find_in_postgres
from .mapping import parse_timestamp
from .settings import SyncConfig
from .sources import Origin, resolve_origin

# KEYS: hash, index. ARGV: member id, then field/value pairs the hash must still hold.
_DELETE_IF_UNCHANGED = """
for i = 2, #ARGV, 2 do
  local value = redis.call('HGET', KEYS[1], ARGV[i])
  if value == false then value = '' end
  if value ~= ARGV[i + 1] then return 0 end
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

# On a Redis Cluster the hash and its index are in different slots, which one script cannot touch: the hash is
# deleted (if unchanged) by a one-key script first, then its index entry. Hash first, so a concurrent write is
# never lost; a failure in between leaves an index member without its hash, which readers already meet (an id
# allocated whose record is not written yet) and which the next retention pass removes (old, synced, no hash).
_DELETE_HASH_IF_UNCHANGED = _DELETE_IF_UNCHANGED.replace(
    "redis.call('ZREM', KEYS[2], ARGV[1])\n", ""
)

BATCH = 5_000


def apply_retention(
    spec: EntitySpec, client: redis.Redis, conn: psycopg.Connection, config: SyncConfig
) -> int:
    """Delete this entity's synced records older than its retention; returns how many were deleted."""
    hours = config.retention_hours.get(spec.name)
    if hours is None:
        return 0
    cutoff = time.time() - hours * 3600
    src = RedisSource(client, config.key_prefix)
    if spec is PREDICTIONS:
        return _expire_predictions(src, conn, config, cutoff)
    if spec is METRICS:
        return _expire_metric_points(src, conn, config, cutoff)
    raise ValueError(f"retention is not supported for {spec.name}")


def _confirmed(
    spec: EntitySpec,
    frame: pd.DataFrame,
    conn: psycopg.Connection,
    config: SyncConfig,
    origin: Origin,
) -> pd.DataFrame:
    """The records of `frame` that Postgres holds with exactly these values."""
    with conn.transaction():
        mapped, found, _, _ = find_in_postgres(
            conn,
            spec,
            frame,
            schema=config.schema,
            sync_schema=config.sync_schema,
            source=origin.name,
            generation=origin.generation,
            exact=True,
        )
    return mapped[pd.Series(found, dtype=bool)] if len(mapped) else mapped


def _expire_predictions(
    src: RedisSource, conn: psycopg.Connection, config: SyncConfig, cutoff: float
) -> int:
    origin = resolve_origin(src, conn, config)
    book = Bookkeeping(conn, config.sync_schema, origin.name, PREDICTIONS.name, origin.generation)
    with conn.transaction():
        synced_up_to = book.watermark()
        waiting = set(book.pending_keys())
    candidates: list[tuple[int, str]] = []  # (id, index key)
    version_ids = src.all_ids(MODEL_VERSIONS)
    index_keys = [src.key("idx:predictions:{id}", id=v) for v in version_ids]
    # Index scores are minus the logging time: old records have scores above -cutoff.
    for index_key, members in zip(
        index_keys,
        pipelined(src.client, (("ZRANGEBYSCORE", k, f"({-cutoff}", "+inf") for k in index_keys)),
    ):
        if isinstance(members, Exception):
            continue
        candidates += [
            (int(m), index_key) for m in members if m.isdigit() and int(m) <= synced_up_to
        ]
    deleted = 0
    on_cluster = isinstance(src.client, RedisCluster)
    delete = (
        _delete_hash_if_unchanged(src.client) if on_cluster else _delete_if_unchanged(src.client)
    )
    fields = [p.field for p in PREDICTIONS.parents] + [c.redis_field for c in PREDICTIONS.columns]
    index_of = dict(candidates)
    # One chunk at a time, closing on records or bytes: the records, their values again as the
    # script's arguments and the confirmed frame are alive together, so about a quarter of the budget.
    for read in read_hash_chunks(
        src, PREDICTIONS, [i for i, _ in candidates], BATCH, max(1, config.memory_budget_bytes // 8)
    ):
        if (
            on_cluster and read.missing
        ):  # old, synced, hash already deleted: a pass interrupted between its steps
            pipe = src.client.pipeline(transaction=False)
            for key in read.missing:
                record_id = int(key.rsplit(":", 1)[1])
                pipe.zrem(index_of[record_id], record_id)
            raise_refusal(pipe.execute(raise_on_error=False))
        frame = read.frame[~read.frame["_key"].isin(waiting) & read.frame["_error"].isna()]
        if frame.empty:
            continue
        raw = {
            row[0]: row[1:]
            for row in frame[["_id", *_raw_columns(PREDICTIONS)]].itertuples(index=False)
        }
        confirmed = _confirmed(PREDICTIONS, frame, conn, config, origin)
        pipe = src.client.pipeline(transaction=False)
        for record_id, key in zip(confirmed["_id"].tolist(), confirmed["_key"].tolist()):
            args = [record_id]
            for name, value in zip(fields, raw[record_id]):
                args += [name, "" if value is None else value]
            delete(pipe, key, index_of[record_id], args)
        done = [
            i
            for i, r in zip(
                confirmed["_id"].tolist(), raise_refusal(pipe.execute(raise_on_error=False))
            )
            if r == 1
        ]
        if on_cluster and done:
            pipe = src.client.pipeline(transaction=False)
            for record_id in done:
                pipe.zrem(index_of[record_id], record_id)
            raise_refusal(pipe.execute(raise_on_error=False))
        deleted += len(done)
    return deleted


def _delete_if_unchanged(client: redis.Redis):
    """Queue the one-step script (hash and index entry together) on a pipeline."""
    script = client.register_script(_DELETE_IF_UNCHANGED)
    return lambda pipe, key, index, args: script(keys=[key, index], args=args, client=pipe)


def _delete_hash_if_unchanged(client: RedisCluster):
    """Queue the cluster's first step (the hash only) on a cluster pipeline. SCRIPT LOAD on a cluster goes to
    every primary, so EVALSHA runs on whichever serves the key (a cluster pipeline refuses `.evalsha()`)."""
    sha = client.script_load(_DELETE_HASH_IF_UNCHANGED)
    return lambda pipe, key, index, args: pipe.execute_command("EVALSHA", sha, 1, key, *args)


def _raw_columns(spec: EntitySpec) -> list[str]:
    return [p.column for p in spec.parents] + spec.column_names


def _expire_metric_points(
    src: RedisSource, conn: psycopg.Connection, config: SyncConfig, cutoff: float
) -> int:
    origin = resolve_origin(src, conn, config)
    book = Bookkeeping(conn, config.sync_schema, origin.name, METRICS.name, origin.generation)
    with conn.transaction():
        series = sorted(book.series_cards())
    deleted = 0
    cutoff_moment = datetime.fromtimestamp(cutoff, timezone.utc)
    for keys in chunks(series, 200):
        frame = read_metric_series(src, METRICS, keys)
        old = frame[frame["_error"].isna() & frame["timestamp"].notna()]
        old = old[old["timestamp"].map(_before(cutoff_moment))]
        if old.empty:
            continue
        confirmed = _confirmed(METRICS, old, conn, config, origin)
        pipe = src.client.pipeline(transaction=False)
        for key, member in zip(confirmed["_key"], confirmed["_member"]):
            pipe.zrem(
                key, member
            )  # the member is the point itself: removing it cannot lose a newer write
        deleted += sum(
            r for r in raise_refusal(pipe.execute(raise_on_error=False)) if isinstance(r, int)
        )
        cards = [
            c if isinstance(c, int) else -1
            for c in pipelined(src.client, (("ZCARD", k) for k in keys))
        ]
        with conn.transaction():
            book.set_series_cards(dict(zip(keys, cards)))
    return deleted


def _before(cutoff: datetime):
    """Whether a point's ISO-8601 timestamp (any form; naive is UTC) is older than the cutoff."""

    def before(value: str) -> bool:
        moment = parse_timestamp(value)
        return moment is not None and moment < cutoff

    return before
