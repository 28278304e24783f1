"""The code location: assets, checks, job, schedule and resources, assembled."""

import dagster as dg

from .assets import sync_assets, sync_report
from .checks import sync_checks
from .resources import resources_from_env
from .schedules import redis_to_postgres_sync_job, sync_schedule
from .warm_assets import warm_definitions

defs = dg.Definitions(
    assets=[*sync_assets, sync_report],
    asset_checks=sync_checks,
    jobs=[redis_to_postgres_sync_job],
    schedules=[sync_schedule],
    resources=resources_from_env(),
)
defs = dg.Definitions.merge(defs, warm_definitions)  # the cache warm (warm_assets.py)
