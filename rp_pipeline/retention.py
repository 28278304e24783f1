"""Retention's safe deletion: what lets a record leave Redis once Postgres durably holds it.

Retention is off by default and runs after the entity's sync transaction has committed; which
records each layout expires is its read strategy's (`strategies.py`, `apply_retention`). A
record is deleted only when (1) it is older than the entity's retention, (2) a committed
Postgres row has its identity *and every one of its values* (`confirmed`: a record changed since
its sync is kept for the next cycle), and (3) at the moment of deletion it is still exactly what
was checked: a Lua script compares every field before it deletes the hash and its index entry
together, so no index member is left without its hash and no concurrent write is ever lost (on
a Redis Cluster, where the two are in different slots, in two steps: `_DELETE_HASH_IF_UNCHANGED`).
"""

from __future__ import annotations

import pandas as pd
import psycopg
import redis
from redis.cluster import RedisCluster

from .entities import EntitySpec
from .load import find_in_postgres
from .settings import SyncConfig
from .sources import Origin

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


def confirmed(
    spec: EntitySpec,
    frame: pd.DataFrame,
    conn: psycopg.Connection,
    config: SyncConfig,
    origin: Origin,
) -> pd.DataFrame:
    """The records of `frame` that Postgres holds with exactly these values (committed rows)."""
    with conn.transaction():
        mapped, found, _, _ = find_in_postgres(conn, spec, frame, config, origin, exact=True)
    return mapped[pd.Series(found, dtype=bool)] if len(mapped) else mapped


def hash_deleter(client: redis.Redis):
    """A function queueing "delete this hash and its index entry if unchanged" on a pipeline:
    `delete(pipe, key, index, [id, field, value, ...])`; its reply is 1 when it deleted. On a
    cluster it deletes the hash only: the caller then removes the index entries it reports."""
    if isinstance(client, RedisCluster):
        return _delete_hash_if_unchanged(client)
    return _delete_if_unchanged(client)


def _delete_if_unchanged(client: redis.Redis):
    """Queue the one-step script (hash and index entry together) on a pipeline."""
    script = client.register_script(_DELETE_IF_UNCHANGED)
    return lambda pipe, key, index, args: script(keys=[key, index], args=args, client=pipe)


def _delete_hash_if_unchanged(client: RedisCluster):
    """Queue the cluster's first step (the hash only) on a cluster pipeline. SCRIPT LOAD on a cluster goes to
    every primary, so EVALSHA runs on whichever serves the key (a cluster pipeline refuses `.evalsha()`)."""
    sha = client.script_load(_DELETE_HASH_IF_UNCHANGED)
    return lambda pipe, key, index, args: pipe.execute_command("EVALSHA", sha, 1, key, *args)
