"""The cache warm in Dagster: the asset `redis_cache_warm` and the sensor `warm_on_flush`.

The asset is a thin shell over `warm.run_warm`, downstream of the nine tables; materialize it from
the UI (its run config selects entities and windows). The sensor, off unless WARM_ON_FLUSH=1,
notices a flushed or restarted Redis through the sync's marker and requests the warm.
"""

import os

import dagster as dg
import pandas as pd

from .entities import ENTITIES
from .extract import RedisSource
from .resources import SyncResource

WARM_JOB_NAME = "redis_cache_warm_job"


class WarmConfig(dg.Config):
    """What to warm; unset values come from WARM_RUNS_DAYS / WARM_PREDICTIONS_HOURS (7 days, 0 hours)."""

    entities: list[str] = []  # noqa: RUF012 (pydantic copies defaults) — empty: every entity
    runs_days: float | None = None
    predictions_hours: float | None = None
    dry_run: bool = False


@dg.asset(
    group_name="redis_cache",
    deps=[spec.name for spec in ENTITIES],
    kinds={"postgres", "redis"},
    description="Postgres rows written back into Redis in the aidb layout (after a flush or a restart), "
    "recognised by the next sync as the rows they came from.",
)
def redis_cache_warm(
    context: dg.AssetExecutionContext,
    config: WarmConfig,
    sync: SyncResource,
) -> dg.MaterializeResult:
    from .warm import WarmOptions, parse_entities, run_warm

    options = WarmOptions.from_env(
        entities=parse_entities(",".join(config.entities)) if config.entities else None,
        runs_days=config.runs_days,
        predictions_hours=config.predictions_hours,
        dry_run=config.dry_run,
    )
    result = run_warm(sync.sync_config(), options, context.log)
    table = pd.DataFrame(
        {
            "entity": list(result.counts()),
            "written": list(result.counts().values()),
            "reused": [result.reused.get(e, 0) for e in result.counts()],
            "left_out": [result.skipped.get(e, 0) for e in result.counts()],
        }
    )
    return dg.MaterializeResult(
        metadata={
            **{f"written_{name}": count for name, count in result.counts().items()},
            "summary": dg.MetadataValue.md(table.to_markdown(index=False)),
            "notes": dg.MetadataValue.md("\n".join(f"- {n}" for n in result.notes) or "none"),
            "dry_run": result.dry_run,
            "duration_seconds": round(result.seconds, 3),
        }
    )


redis_cache_warm_job = dg.define_asset_job(
    name=WARM_JOB_NAME,
    selection=dg.AssetSelection.assets(redis_cache_warm),
    executor_def=dg.in_process_executor,
    description="Warm Redis from Postgres (redis_cache_warm).",
    tags={"dagster/max_retries": 0},
)


@dg.sensor(
    name="warm_on_flush",
    job=redis_cache_warm_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING
    if os.environ.get("WARM_ON_FLUSH") == "1"
    else dg.DefaultSensorStatus.STOPPED,
    description="Requests redis_cache_warm when Redis was flushed or restarted (its data-set marker "
    "vanished or changed). On with WARM_ON_FLUSH=1.",
)
def warm_on_flush(context: dg.SensorEvaluationContext, sync: SyncResource):
    with sync.redis_client() as (client, config):
        src = RedisSource(client, config.key_prefix)
        marker = src.marker()
        if marker is None:
            # Flushed or restarted, and no sync has named the new data set yet: name it here (as the
            # sync would), so this flush is requested once and the warm writes into this data set.
            marker = src.generation()
        elif context.cursor is None:
            context.update_cursor(marker)  # first look: the data set Redis holds is not a flush
            return dg.SkipReason(f"watching Redis data set {marker}")
    if marker == context.cursor:
        return dg.SkipReason(f"Redis data set {marker} unchanged")
    context.update_cursor(marker)
    context.log.info(
        f"Redis holds a new data set ({marker}): flushed or restarted; requesting the warm"
    )
    return dg.RunRequest(run_key=f"warm-{marker}", tags={"rp_pipeline/trigger": "warm_on_flush"})
