"""Asset checks on every synced table, made from the entity specs by one factory.

- `identity_is_unique`: no two rows share a natural key (or origin, for runs, metrics, predictions);
- `foreign_keys_resolve`: every parent id points at an existing row;
- `reconciles_with_redis`: a sample of the records the last sync covered is in Postgres
  (or was kept as rejected or pending): nothing lost;
- `no_rejected_records` (WARN): the last sync met no record it could not load (new, or still bad since
  an earlier sync); when it did, examples and reasons.
"""


import dagster as dg
import pandas as pd

from .connections import connect_postgres
from .entities import ENTITIES, EntitySpec, sql_name as q
from .reconcile import reconcile, reconciliation_table
from .resources import PostgresResource, RedisResource, SyncSettingsResource, open_connections, sync_config
from .sources import current_origin


def duplicate_identities(conn, config, spec: EntitySpec) -> list[tuple]:
    """Natural keys held by more than one row (first 10)."""
    where = f"WHERE {spec.key_where}" if spec.key_where else ""
    keys = ", ".join(spec.identity_sql)
    return conn.execute(
        f"SELECT {keys}, count(*) FROM {q(config.schema)}.{q(spec.name)} {where} "
        f"GROUP BY {keys} HAVING count(*) > 1 LIMIT 10").fetchall()


def dangling_foreign_keys(conn, config, spec: EntitySpec) -> dict[str, int]:
    """Per foreign-key column, rows whose parent id points at no row."""
    counts = {}
    for parent in spec.parents:
        counts[parent.column] = conn.execute(
            f"SELECT count(*) FROM {q(config.schema)}.{q(spec.name)} c LEFT JOIN {q(config.schema)}."
            f"{q(parent.entity)} p ON p.id = c.{q(parent.column)} "
            f"WHERE c.{q(parent.column)} IS NOT NULL AND p.id IS NULL").fetchone()[0]
    return counts


def build_checks(spec: EntitySpec) -> list[dg.AssetChecksDefinition]:
    @dg.asset_check(asset=spec.name, name="identity_is_unique",
                    description=f"No two `{spec.name}` rows share ({', '.join(spec.natural_key)}).")
    def identity_is_unique(redis: RedisResource, postgres: PostgresResource,
                           sync_settings: SyncSettingsResource) -> dg.AssetCheckResult:
        config = sync_config(redis, postgres, sync_settings)
        with connect_postgres(config) as conn:
            duplicates = duplicate_identities(conn, config, spec)
        metadata = {"duplicate_keys": len(duplicates)}
        if duplicates:
            metadata["examples"] = dg.MetadataValue.md(pd.DataFrame(
                duplicates, columns=[*spec.natural_key, "rows"]).astype(str).to_markdown(index=False))
        return dg.AssetCheckResult(passed=not duplicates, metadata=metadata)

    @dg.asset_check(asset=spec.name, name="foreign_keys_resolve",
                    description=f"Every parent id of `{spec.name}` points at an existing row.")
    def foreign_keys_resolve(redis: RedisResource, postgres: PostgresResource,
                             sync_settings: SyncSettingsResource) -> dg.AssetCheckResult:
        config = sync_config(redis, postgres, sync_settings)
        with connect_postgres(config) as conn:
            dangling = dangling_foreign_keys(conn, config, spec)
        return dg.AssetCheckResult(passed=not any(dangling.values()),
                                   metadata={f"dangling_{column}": n for column, n in dangling.items()})

    @dg.asset_check(asset=spec.name, name="reconciles_with_redis",
                    description="A sample of the Redis records the last sync covered is in Postgres "
                                "(or kept as rejected or pending).")
    def reconciles_with_redis(redis: RedisResource, postgres: PostgresResource,
                              sync_settings: SyncSettingsResource) -> dg.AssetCheckResult:
        config = sync_config(redis, postgres, sync_settings)
        client, conn = open_connections(config)
        try:
            result = reconcile(spec, client, conn, config)
        finally:
            client.close()
            conn.close()
        metadata = {"counts": dg.MetadataValue.md(reconciliation_table(result).to_markdown(index=False)),
                    "checked": result.checked, "missing": len(result.missing_keys)}
        if result.missing_keys:
            metadata["missing_examples"] = dg.MetadataValue.json(result.missing_keys[:20])
        return dg.AssetCheckResult(passed=result.passed, metadata=metadata)

    @dg.asset_check(asset=spec.name, name="no_rejected_records",
                    description="The last sync of this table met no record it could not load, new or still bad "
                                "(WARN: the sync still succeeds).")
    def no_rejected_records(redis: RedisResource, postgres: PostgresResource,
                            sync_settings: SyncSettingsResource) -> dg.AssetCheckResult:
        config = sync_config(redis, postgres, sync_settings)
        s = q(config.sync_schema)
        origin = current_origin(config).name
        with connect_postgres(config) as conn:
            row = conn.execute(
                f"SELECT rejected, finished_at FROM {s}.entity_runs WHERE source = %s AND entity = %s "
                "ORDER BY id DESC LIMIT 1", (origin, spec.name)).fetchone()
            # A rejection that sync met has last_seen = its finished_at: both are now() of its transaction.
            met = conn.execute(
                f"SELECT redis_key, reason, times_seen, count(*) OVER () FROM {s}.rejected_records "
                "WHERE source = %s AND entity = %s AND last_seen = %s ORDER BY redis_key LIMIT 10",
                (origin, spec.name, row[1] if row else None)).fetchall()
        metadata = {"rejected_last_sync": row[0] if row else 0, "rejected_seen_last_sync": met[0][3] if met else 0}
        if met:
            metadata["examples"] = dg.MetadataValue.md(pd.DataFrame(
                [r[:3] for r in met], columns=["redis_key", "reason", "times_seen"]).to_markdown(index=False))
        return dg.AssetCheckResult(passed=not met, severity=dg.AssetCheckSeverity.WARN, metadata=metadata)

    return [identity_is_unique, foreign_keys_resolve, reconciles_with_redis, no_rejected_records]


sync_checks = [check for spec in ENTITIES for check in build_checks(spec)]
