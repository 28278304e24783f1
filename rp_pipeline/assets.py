"""Sync assets: one per Postgres table, made from the entity specs by one factory.

Each asset is a thin shell over `engine.sync_entity`; its dependencies follow the
foreign keys, so materializing all nine is one consistent sync. `sync_report`
sums the run up in the guide's statistics.
"""

import dagster as dg
import pandas as pd

from .engine import EntityResult, stats_from_results, sync_entity
from .entities import ENTITIES, STAT_KEYS, EntitySpec, sql_name as q
from .resources import PostgresResource, RedisResource, SyncSettingsResource, open_connections, sync_config
from .schema import ensure_schema

GROUP = "redis_to_postgres"


def materialization_metadata(result: EntityResult) -> dict:
    metadata = {
        "rows_read": result.read,
        "rows_inserted": result.inserted,
        "rows_updated": result.updated,
        "rows_unchanged": result.unchanged,
        "rows_skipped": dg.MetadataValue.int(result.skipped),
        "rows_rejected": result.rejected,
        "rows_pending": result.pending,
        "rows_deleted_from_redis": result.deleted,
        "json_non_finite_nulled": result.json_non_finite_nulled,
        "duration_seconds": round(result.duration_seconds, 3),
        "rows_per_second": round(result.rows_per_second, 1),
        "bytes_read": result.bytes_read,
        "largest_record_bytes": result.largest_record_bytes,
    }
    if result.watermark is not None:
        metadata["watermark"] = result.watermark
    if result.rejection_samples:
        metadata["rejected_examples"] = dg.MetadataValue.md(
            pd.DataFrame(result.rejection_samples).to_markdown(index=False))
    return metadata


def build_sync_asset(spec: EntitySpec) -> dg.AssetsDefinition:
    """The asset that syncs one entity's Redis records into its Postgres table."""

    @dg.asset(
        name=spec.name,
        group_name=GROUP,
        deps=sorted({parent.entity for parent in spec.parents}),
        kinds={"redis", "postgres", "pandas"},
        description=f"Redis `{spec.key}` records synced into the Postgres table `{spec.name}`.",
        tags={"entity": spec.name},
    )
    def sync_asset(context: dg.AssetExecutionContext, redis: RedisResource, postgres: PostgresResource,
                   sync_settings: SyncSettingsResource) -> dg.MaterializeResult:
        config = sync_config(redis, postgres, sync_settings)
        ensure_schema(config)
        client, conn = open_connections(config)
        try:
            context.log.info(f"Syncing {spec.name}...")
            result = sync_entity(spec, client, conn, config, run_id=context.run.run_id, logger=context.log)
        finally:
            client.close()
            conn.close()
        context.log.info(
            f"{spec.name}: {result.inserted} inserted, {result.updated} updated, {result.unchanged} unchanged, "
            f"{result.skipped} skipped, {result.rejected} rejected, {result.pending} pending "
            f"in {result.duration_seconds:.2f}s ({result.rows_per_second:,.0f} rows/s)")
        return dg.MaterializeResult(metadata=materialization_metadata(result))

    return sync_asset


sync_assets = [build_sync_asset(spec) for spec in ENTITIES]


@dg.asset(group_name=GROUP, deps=[spec.name for spec in ENTITIES], kinds={"postgres"},
          description="The run's statistics in the guide's counters; also set as run tags.")
def sync_report(context: dg.AssetExecutionContext, redis: RedisResource, postgres: PostgresResource,
                sync_settings: SyncSettingsResource) -> dg.MaterializeResult:
    config = sync_config(redis, postgres, sync_settings)
    stats, seconds = run_statistics(config, context.run.run_id)
    context.log.info(f"=== Sync Complete in {seconds:.2f}s ===")
    for key in STAT_KEYS:
        context.log.info(f"  {key.capitalize()}: {stats[key]}")
    context.instance.add_run_tags(context.run.run_id, {f"rp_pipeline/{k}": str(v) for k, v in stats.items()})
    return dg.MaterializeResult(metadata={**stats, "duration_seconds": round(seconds, 3)})


def run_statistics(config, run_id: str) -> tuple[dict[str, int], float]:
    """The guide's counters for one run, from the history the assets committed."""
    from .connections import connect_postgres

    with connect_postgres(config) as conn:
        rows = conn.execute(
            f"SELECT entity, inserted, updated, rejected, extract(epoch FROM max(finished_at) OVER () "
            f"- min(started_at) OVER ()) FROM {q(config.sync_schema)}.entity_runs WHERE run_id = %s",
            (run_id,)).fetchall()
    stats = stats_from_results({"entity": e, "inserted": i, "updated": u, "rejected": r} for e, i, u, r, _ in rows)
    return stats, float(rows[0][4]) if rows else 0.0
