"""Where rows come from: the Redis data set, identified by its data, never by the address that reached it.

A data set is named by its marker `{prefix}` + `layout.GENERATION_KEY` (a uuid the sync sets once
with SET NX; a flush, or a restart without persistence, removes it, and the next sync starts a
new data set). `localhost`, `127.0.0.1`, a DNS alias, a port-forward and a replica all show the
same marker, so they resolve to one origin. `{sync_schema}.sources` maps each marker to its
origin: the text that rows' `origin_source` and every bookkeeping row's `source` hold.
`SYNC_SOURCE` is only a label kept beside it, as is the address last used.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg

from .bookkeeping import Sources
from .connections import connect_postgres, connect_redis
from .extract import RedisSource
from .settings import SyncConfig

log = logging.getLogger("rp_pipeline")

# label, last_address and last_seen are for people: rewritten when they change, else at most this often.
SEEN_REFRESH_SECONDS = 60


@dataclass(frozen=True)
class Origin:
    """One Redis data set as this database knows it."""

    generation: str  # the data set's marker
    name: str  # what `origin_source` and the bookkeeping's `source` hold for it
    label: str | None  # SYNC_SOURCE, never part of any identity


def resolve_origin(
    src: RedisSource,
    conn: psycopg.Connection,
    config: SyncConfig,
    logger: logging.Logger | None = None,
) -> Origin:
    """The origin of the data set `src` reads, recorded on first sight; commits at once when `conn`
    is outside a transaction, so concurrent syncs never wait on each other's `sources` row."""
    generation = src.generation()
    sources = Sources(conn, config.sync_schema)
    seen = (config.source, config.redis_address)
    with conn.transaction():
        for _ in range(2):  # a second round only if a concurrent sync took the legacy name we chose
            row = sources.origin_of(generation, *seen, SEEN_REFRESH_SECONDS)
            if row is not None:
                break
            sources.add(generation, _first_origin(sources, generation, logger or log), *seen)
        else:
            raise RuntimeError(
                f"could not record the origin of Redis data set {generation} in {sources.table}"
            )
        origin, fresh = row
        if not fresh:
            sources.refresh(generation, *seen)
    return Origin(generation, origin, config.source)


def _first_origin(sources: Sources, generation: str, logger: logging.Logger) -> str:
    """The origin of a data set seen for the first time: the generation itself, unless a version that
    named sources by address already synced it (its bookkeeping rows carry this generation); then
    that name, so upgrading adds no duplicate of the rows it wrote."""
    names = sources.legacy_names(generation)
    if len(names) > 1:
        logger.warning(
            "Redis data set %s was synced under several names by an earlier version (%s), so Postgres may "
            "already hold its rows twice; continuing under %r. The others' rows are left as they are.",
            generation,
            ", ".join(map(repr, names)),
            names[0],
        )
    return names[0] if names else generation


def current_origin(config: SyncConfig) -> Origin:
    """The origin of the data set `config` points at, on connections of its own (for checks)."""
    client = connect_redis(config)
    try:
        with connect_postgres(config) as conn:
            return resolve_origin(RedisSource(client, config.key_prefix), conn, config)
    finally:
        client.close()
