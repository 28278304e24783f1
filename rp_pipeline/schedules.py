"""The sync job, the schedule that runs it every SYNC_INTERVAL seconds (default 300), and the backlog sensor."""

import os
import time
from typing import TYPE_CHECKING

import dagster as dg

from .assets import redis_to_postgres
from .entities import ENTITIES
from .resources import RedisResource
from .settings import ConfigError, interval_seconds

if TYPE_CHECKING:
    import redis as redis_py

JOB_NAME = "redis_to_postgres_sync"
DEFAULT_BACKLOG_TRIGGER = 100_000
IN_FLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]

# In process: the whole sync is one step, so a separate process per step would buy nothing.
# Another executor can be chosen in the run config (execution: config: multiprocess: ...).
redis_to_postgres_sync_job = dg.define_asset_job(
    name=JOB_NAME,
    selection=dg.AssetSelection.assets(redis_to_postgres),
    executor_def=dg.in_process_executor,
    description="One Redis → Postgres sync of every table and its checks; the guide's statistics as run tags.",
    tags={"dagster/max_retries": 0},
)


def run_in_flight(instance: dg.DagsterInstance) -> str | None:
    """The id of a sync run queued or running, if there is one."""
    records = instance.get_run_records(
        dg.RunsFilter(job_name=JOB_NAME, statuses=IN_FLIGHT), limit=1
    )
    return records[0].dagster_run.run_id if records else None


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

    @dg.schedule(
        name="redis_to_postgres_sync_schedule",
        cron_schedule=cron,
        job=redis_to_postgres_sync_job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Runs {JOB_NAME} every {seconds} s; skips while a run is still going.",
    )
    def sync_schedule(context: dg.ScheduleEvaluationContext):
        in_flight = run_in_flight(context.instance)
        if in_flight:
            return dg.SkipReason(f"run {in_flight} is still in progress")
        if (
            cron == "* * * * *" and seconds > 60
        ):  # the interval is not a cron step: check elapsed time
            last = context.instance.get_run_records(dg.RunsFilter(job_name=JOB_NAME), limit=1)
            if (
                last
                and last[0].create_timestamp
                and time.time() - last[0].create_timestamp.timestamp() < seconds - 30
            ):
                return dg.SkipReason(f"last run started less than {seconds} s ago")
        return dg.RunRequest()

    return sync_schedule


sync_schedule = build_sync_schedule(interval_seconds())


def backlog_trigger() -> int:
    """SYNC_BACKLOG_TRIGGER: records waiting in Redis above which the backlog sensor starts a sync early."""
    raw = os.environ.get("SYNC_BACKLOG_TRIGGER") or str(DEFAULT_BACKLOG_TRIGGER)
    try:
        return int(float(raw))
    except ValueError:
        raise ConfigError(
            f"SYNC_BACKLOG_TRIGGER must be a number of records, got {raw!r}"
        ) from None


COUNTED = [
    spec for spec in ENTITIES if spec.counter
]  # entities whose ids a Redis counter allocates


_clients: dict[str, "redis_py.Redis"] = {}


def _counter_client(url: str) -> "redis_py.Redis":
    """A client kept between evaluations, without the connect-time CLIENT SETINFO: an evaluation is one MGET.
    On a Redis Cluster node, a cluster client: the counters live in different slots."""
    if url not in _clients:
        import redis as redis_py
        from redis.cluster import RedisCluster

        from .writer import is_cluster_node

        client = redis_py.Redis.from_url(
            url, socket_connect_timeout=5, socket_timeout=10, lib_name=None, lib_version=None
        )
        if is_cluster_node(client):
            client.close()
            client = RedisCluster.from_url(url, socket_connect_timeout=5, socket_timeout=10)
        _clients[url] = client
    return _clients[url]


def records_waiting(redis: RedisResource, synced_up_to: dict[str, int]) -> int:
    """Ids allocated in Redis beyond what the last sync of each table reached: one MGET (one per node on a
    cluster)."""
    client = _counter_client(redis.url)
    keys = [f"{redis.key_prefix}{spec.counter}" for spec in COUNTED]
    counters = (
        client.mget_nonatomic(keys) if hasattr(client, "mget_nonatomic") else client.mget(keys)
    )
    return sum(
        max(0, int(value or 0) - synced_up_to.get(spec.name, 0))
        for spec, value in zip(COUNTED, counters)
    )


def synced_up_to(instance: dg.DagsterInstance) -> dict[str, int]:
    """Per table, the highest Redis id its last materialization reached (its `watermark` metadata)."""
    events = instance.get_latest_materialization_events(
        [dg.AssetKey(spec.name) for spec in COUNTED]
    )
    found = {}
    for key, event in events.items():
        watermark = (
            event.asset_materialization.metadata.get("watermark")
            if event and event.asset_materialization
            else None
        )
        if watermark is not None:
            found[key.to_user_string()] = int(watermark.value)
    return found


def build_backlog_sensor(trigger: int) -> dg.SensorDefinition:
    @dg.sensor(
        name="redis_backlog_sensor",
        job=redis_to_postgres_sync_job,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=f"Starts {JOB_NAME} before the next tick when more than {trigger:,} records wait in "
        "Redis (SYNC_BACKLOG_TRIGGER); never while a sync is queued or running. Off by default.",
    )
    def redis_backlog_sensor(context: dg.SensorEvaluationContext, redis: RedisResource):
        in_flight = run_in_flight(context.instance)
        if in_flight:
            return dg.SkipReason(f"run {in_flight} is still in progress")
        waiting = records_waiting(redis, synced_up_to(context.instance))
        if waiting <= trigger:
            return dg.SkipReason(
                f"{waiting:,} records wait in Redis (trigger: more than {trigger:,})"
            )
        return dg.RunRequest(
            tags={"rp_pipeline/trigger": "backlog", "rp_pipeline/backlog": str(waiting)}
        )

    return redis_backlog_sensor


backlog_sensor = build_backlog_sensor(backlog_trigger())
