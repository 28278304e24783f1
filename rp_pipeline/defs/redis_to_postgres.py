"""The sync: the nine tables with their checks (one multi-asset), its job, schedule and backlog sensor."""

from rp_pipeline.assets import redis_to_postgres
from rp_pipeline.schedules import backlog_sensor, redis_to_postgres_sync_job, sync_schedule

__all__ = ["backlog_sensor", "redis_to_postgres", "redis_to_postgres_sync_job", "sync_schedule"]
