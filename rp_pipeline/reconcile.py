"""Reconciliation: are the Redis records the last sync covered really in Postgres?

Reads a sample of the records in the last sync's range straight from Redis (the
same extract and map code the sync uses) and looks each one up in Postgres by its
identity. A record is accounted for when Postgres has its row, or when the sync
kept it as rejected or pending; anything else is missing, i.e. lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import psycopg
import redis

from .bookkeeping import Bookkeeping
from .entities import EntitySpec
from .extract import RedisSource
from .load import find_in_postgres
from .settings import SyncConfig
from .sources import Origin, resolve_origin
from .strategies import strategy_of


@dataclass
class Reconciliation:
    entity: str
    checked: int = 0
    in_postgres: int = 0
    rejected: int = 0
    pending: int = 0
    missing_keys: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.missing_keys


def _book(conn: psycopg.Connection, config: SyncConfig, entity: str, origin: Origin) -> Bookkeeping:
    return Bookkeeping(conn, config.sync_schema, origin.name, entity, origin.generation)


def reconcile(
    spec: EntitySpec,
    client: redis.Redis,
    conn: psycopg.Connection,
    config: SyncConfig,
    sample_size: int = 2_000,
) -> Reconciliation:
    """Sample up to `sample_size` source records (or parents, for per-run entities) and account for each."""
    src = RedisSource(client, config.key_prefix)
    result = Reconciliation(spec.name)
    origin = resolve_origin(src, conn, config)
    with conn.transaction():
        frames = strategy_of(spec).sample(
            spec,
            src,
            lambda entity: _book(conn, config, entity, origin),
            sample_size,
            max(1, config.memory_budget_bytes // 8),
        )
        for frame in frames:
            if not frame.empty:
                _account(spec, frame, conn, config, origin, result)
    result.missing_keys = sorted(set(result.missing_keys))
    return result


def _account(
    spec: EntitySpec,
    frame: pd.DataFrame,
    conn: psycopg.Connection,
    config: SyncConfig,
    origin: Origin,
    result: Reconciliation,
) -> None:
    """Add the sampled records of `frame` to `result`: in Postgres, rejected, pending, or missing."""
    result.checked += len(frame)
    book = _book(conn, config, spec.name, origin)
    rejected = book.rejected_among(frame["_key"].tolist())
    pending = book.pending_among(frame["_key"].tolist())
    accounted = frame["_key"].isin(rejected | pending)
    result.rejected += int(frame["_key"].isin(rejected).sum())
    result.pending += int((frame["_key"].isin(pending) & ~frame["_key"].isin(rejected)).sum())
    frame = frame[~accounted]
    mapped, found, invalid, waiting = find_in_postgres(conn, spec, frame, config, origin)
    result.in_postgres += sum(found)
    lost = [k for k, hit in zip(mapped["_key"], found) if not hit]
    lost += [k for r in invalid for k in r["_key"]] + waiting["_key"].tolist()
    result.missing_keys += lost


def reconciliation_table(result: Reconciliation) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "checked": result.checked,
                "in_postgres": result.in_postgres,
                "rejected": result.rejected,
                "pending": result.pending,
                "missing": len(result.missing_keys),
            }
        ]
    )
