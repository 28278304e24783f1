"""The sync job, the schedule that runs it every SYNC_INTERVAL seconds (default 300), and the backlog sensor."""

import functools
import time
from typing import TYPE_CHECKING

import dagster as dg

from .assets import SOURCE_TAG, build_sync_assets, redis_to_postgres, source_labels
from .backlog import COUNTED, counter_keys, counter_value, unsynced_ids
from .resources import SyncResource
from .settings import SyncConfig, schedule_interval_seconds, setting

if TYPE_CHECKING:
    import redis as redis_py

JOB_NAME = "redis_to_postgres_sync"
IN_FLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]


# In process: the whole sync is one step, so a separate process per step would buy nothing.
# Another executor can be chosen in the run config (execution: config: multiprocess: ...).
def build_sync_job(assets: dg.AssetsDefinition, labels: tuple[str, ...] = ()):
    # With one source the job carries its tag, so a run launched from the UI has it while queued
    # and the per-source limit in dagster.yaml holds it to one at a time; with several, each run
    # is tagged by its request (schedule, sensor) or carries its partition's tag.
    source_tag = {SOURCE_TAG: labels[0]} if len(labels) == 1 else {}
    return dg.define_asset_job(
        name=JOB_NAME,
        selection=dg.AssetSelection.assets(assets),
        executor_def=dg.in_process_executor,
        description="One Redis → Postgres sync of every table and its checks; the guide's statistics "
        "as run tags. With several Redis sources, one run per source (partition).",
        tags={"dagster/max_retries": 0, **source_tag},
    )


LABELS = source_labels()
redis_to_postgres_sync_job = build_sync_job(redis_to_postgres, LABELS)


@functools.lru_cache(maxsize=8)
def assets_and_job_for(labels: tuple[str, ...]):
    """The sync's assets and job (unresolved) for these sources: the code location's own when its
    REDIS_URL names the same sources, else built alike (partitioned the same way)."""
    if labels == LABELS:
        return redis_to_postgres, redis_to_postgres_sync_job
    if (
        len(labels) < 2 and len(LABELS) < 2
    ):  # unpartitioned both: the same assets, this source's tag
        return redis_to_postgres, build_sync_job(redis_to_postgres, labels)
    assets = build_sync_assets(labels, schedule_interval_seconds())
    return assets, build_sync_job(assets, labels)


@functools.lru_cache(maxsize=8)
def sync_job(labels: tuple[str, ...]) -> dg.JobDefinition:
    """The sync job for these sources, resolved, to run in process."""
    assets, job = assets_and_job_for(labels)
    # The resource is a placeholder: each run is given its own (execute_in_process(resources=...)).
    return dg.Definitions(
        assets=[assets], jobs=[job], resources={"sync": SyncResource()}
    ).resolve_job_def(JOB_NAME)


def run_in_flight(instance: dg.DagsterInstance, source: str | None = None) -> str | None:
    """The id of a sync run queued or running (of `source`'s partition, if given), if there is one."""
    tags = {"dagster/partition": source} if source else None
    records = instance.get_run_records(
        dg.RunsFilter(job_name=JOB_NAME, statuses=IN_FLIGHT, tags=tags), limit=1
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


def source_request(
    label: str, partitioned: bool, run_key: str | None = None, **tags
) -> dg.RunRequest:
    """A sync run of one source: its partition (with several sources) and the source tag."""
    return dg.RunRequest(
        run_key=run_key,
        partition_key=label if partitioned else None,
        tags={SOURCE_TAG: label, **tags},
    )


def build_sync_schedule(seconds: int, labels: tuple[str, ...] = ()) -> dg.ScheduleDefinition:
    """Every `seconds`, one run per source (`labels`), skipping a source whose run is still going."""
    cron = cron_for(seconds)
    partitioned = len(labels) > 1

    @dg.schedule(
        name="redis_to_postgres_sync_schedule",
        cron_schedule=cron,
        job=assets_and_job_for(labels)[1],
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Runs {JOB_NAME} every {seconds} s"
        + (", one run per Redis source" if partitioned else "")
        + "; skips while a run is still going.",
    )
    def sync_schedule(context: dg.ScheduleEvaluationContext):
        try:
            tick_key = context.scheduled_execution_time.isoformat()
        except Exception:  # evaluated by hand, with no tick time: Dagster raises its CheckError
            tick_key = f"{time.time():.0f}"
        requests, skipped = [], []
        for label in labels or (None,):
            source = label if partitioned else None
            in_flight = run_in_flight(context.instance, source)
            if in_flight:
                skipped.append(f"run {in_flight} is still in progress")
                continue
            if cron == "* * * * *" and seconds > 60 and _started_recently(context, source, seconds):
                skipped.append(f"last run started less than {seconds} s ago")
                continue
            if label is None:  # REDIS_URL could not be read at load: the run says why
                requests.append(dg.RunRequest())
            else:
                requests.append(source_request(label, partitioned, run_key=f"{label}@{tick_key}"))
        if not requests:
            return dg.SkipReason("; ".join(dict.fromkeys(skipped)))
        return requests

    return sync_schedule


def _started_recently(context, source: str | None, seconds: int) -> bool:
    """The interval is not a cron step: the schedule ticks every minute and checks the elapsed time."""
    tags = {"dagster/partition": source} if source else None
    last = context.instance.get_run_records(dg.RunsFilter(job_name=JOB_NAME, tags=tags), limit=1)
    return bool(
        last
        and last[0].create_timestamp
        and time.time() - last[0].create_timestamp.timestamp() < seconds - 30
    )


sync_schedule = build_sync_schedule(schedule_interval_seconds(), LABELS)


_clients: dict[str, "redis_py.Redis"] = {}
try:  # redis-py ≥ 7.1 names it driver_info (lib_name/lib_version are deprecated there)
    from redis.driver_info import DriverInfo as _DriverInfo  # noqa: F401

    _NO_CLIENT_SETINFO: dict = {"driver_info": None}
except ImportError:
    _NO_CLIENT_SETINFO = {"lib_name": None, "lib_version": None}


def _counter_client(url: str) -> "redis_py.Redis":
    """A client kept between evaluations, without the connect-time CLIENT SETINFO: an evaluation is one MGET.
    On a Redis Cluster node, a cluster client: the counters live in different slots."""
    if url not in _clients:
        import redis as redis_py
        from redis.cluster import RedisCluster

        from .writer import is_cluster_node

        client = redis_py.Redis.from_url(
            url, socket_connect_timeout=5, socket_timeout=10, **_NO_CLIENT_SETINFO
        )
        if is_cluster_node(client):
            client.close()
            client = RedisCluster.from_url(url, socket_connect_timeout=5, socket_timeout=10)
        _clients[url] = client
    return _clients[url]


def records_waiting(config: SyncConfig, synced_up_to: dict[str, int]) -> int:
    """Ids allocated in one source's Redis beyond what the last sync of each table reached: one MGET
    (one per node on a cluster)."""
    source = config.require_one_source()
    client = _counter_client(source.redis_url)
    keys = counter_keys(source.key_prefix)
    replies = (
        client.mget_nonatomic(keys) if hasattr(client, "mget_nonatomic") else client.mget(keys)
    )
    counters = {spec.name: counter_value(reply) for spec, reply in zip(COUNTED, replies)}
    return sum(unsynced_ids(counters, synced_up_to).values())


def synced_up_to(instance: dg.DagsterInstance, source: str | None = None) -> dict[str, int]:
    """Per table, the highest Redis id its last materialization (of `source`'s partition) reached:
    its `watermark` metadata."""
    found = {}
    for spec in COUNTED:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(
                asset_key=dg.AssetKey(spec.name), asset_partitions=[source] if source else None
            ),
            limit=1,
        ).records
        event = records[0].event_log_entry.asset_materialization if records else None
        watermark = event.metadata.get("watermark") if event else None
        if watermark is not None:
            found[spec.name] = int(watermark.value)
    return found


def build_backlog_sensor(
    trigger: int | None = None, labels: tuple[str, ...] = ()
) -> dg.SensorDefinition:
    """Per source, a run when more than `trigger` records wait (SYNC_BACKLOG_TRIGGER when None)."""
    shown = setting("SYNC_BACKLOG_TRIGGER") if trigger is None else trigger

    @dg.sensor(
        name="redis_backlog_sensor",
        job=assets_and_job_for(labels)[1],
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=f"Starts {JOB_NAME} before the next tick when more than {shown:,} records wait in "
        "a source's Redis (SYNC_BACKLOG_TRIGGER), one run per such source; never while that source's "
        "sync is queued or running. Off by default.",
    )
    def redis_backlog_sensor(context: dg.SensorEvaluationContext, sync: SyncResource):
        config = sync.sync_config(postgres=False)
        threshold = config.backlog_trigger if trigger is None else trigger
        partitioned = len(config.sources) > 1
        requests, skipped = [], []
        for source in config.sources:
            partition = source.label if partitioned else None
            in_flight = run_in_flight(context.instance, partition)
            if in_flight:
                skipped.append(f"{source.label}: run {in_flight} is still in progress")
                continue
            waiting = records_waiting(
                config.for_source(source.label), synced_up_to(context.instance, partition)
            )
            if waiting <= threshold:
                skipped.append(
                    f"{source.label}: {waiting:,} records wait in Redis (trigger: more than {threshold:,})"
                )
                continue
            requests.append(
                source_request(
                    source.label,
                    partitioned,
                    **{"rp_pipeline/trigger": "backlog", "rp_pipeline/backlog": str(waiting)},
                )
            )
        if not requests:
            reasons = [r.split(": ", 1)[1] for r in skipped] if not partitioned else skipped
            return dg.SkipReason("; ".join(reasons))
        return requests[0] if not partitioned else requests

    return redis_backlog_sensor


backlog_sensor = build_backlog_sensor(labels=LABELS)
