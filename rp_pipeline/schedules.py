"""The sync job and the schedule that runs it every SYNC_INTERVAL seconds (default 300)."""


import os
import time

import dagster as dg

from .assets import sync_assets, sync_report
from .settings import DEFAULT_INTERVAL_SECONDS, ConfigError

JOB_NAME = "redis_to_postgres_sync"

# In-process by default: nine small steps and their checks run in one process, so a
# cycle with nothing new costs little beyond Dagster's start-up. Another executor
# can be chosen in the run config (execution: config: multiprocess: ...).
redis_to_postgres_sync_job = dg.define_asset_job(
    name=JOB_NAME,
    selection=dg.AssetSelection.assets(*sync_assets, sync_report),
    executor_def=dg.in_process_executor,
    description="One Redis → Postgres sync of every entity, then the run's statistics.",
    tags={"dagster/max_retries": 0},
)


def interval_seconds() -> int:
    raw = os.environ.get("SYNC_INTERVAL", str(DEFAULT_INTERVAL_SECONDS))
    try:
        seconds = int(float(raw))
    except ValueError:
        raise ConfigError(f"SYNC_INTERVAL must be a number of seconds, got {raw!r}") from None
    if seconds < 60:
        raise ConfigError(f"SYNC_INTERVAL must be at least 60 seconds (a schedule ticks once a minute), got {seconds}")
    return seconds


def cron_for(seconds: int) -> str:
    """A cron string firing every `seconds`, or every minute when no cron expresses it exactly."""
    minutes = seconds // 60
    if seconds % 60 == 0 and minutes < 60 and 60 % minutes == 0:
        return f"*/{minutes} * * * *" if minutes > 1 else "* * * * *"
    if seconds % 3600 == 0 and 24 % (seconds // 3600) == 0:
        return f"0 */{seconds // 3600} * * *"
    return "* * * * *"


def build_sync_schedule(seconds: int) -> dg.ScheduleDefinition:
    cron = cron_for(seconds)

    @dg.schedule(name="redis_to_postgres_sync_schedule", cron_schedule=cron, job=redis_to_postgres_sync_job,
                 default_status=dg.DefaultScheduleStatus.RUNNING,
                 description=f"Runs {JOB_NAME} every {seconds} s; skips while a run is still going.")
    def sync_schedule(context: dg.ScheduleEvaluationContext):
        in_flight = context.instance.get_run_records(
            dg.RunsFilter(job_name=JOB_NAME, statuses=[dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING,
                                                       dg.DagsterRunStatus.STARTED]), limit=1)
        if in_flight:
            return dg.SkipReason(f"run {in_flight[0].dagster_run.run_id} is still in progress")
        if cron == "* * * * *" and seconds > 60:  # the interval is not a cron step: check elapsed time
            last = context.instance.get_run_records(dg.RunsFilter(job_name=JOB_NAME), limit=1)
            if last and last[0].create_timestamp and time.time() - last[0].create_timestamp.timestamp() < seconds - 30:
                return dg.SkipReason(f"last run started less than {seconds} s ago")
        return dg.RunRequest()

    return sync_schedule


sync_schedule = build_sync_schedule(interval_seconds())
