"""The backlog (records waiting in Redis) has one rule: the exporter's `rp_pipeline_backlog_records`
and the backlog sensor count the same ids past what was synced, and both leave out a counter that
is not a number instead of failing."""

from __future__ import annotations

from rp_pipeline.backlog import COUNTED
from rp_pipeline.exporter import SyncCollector
from rp_pipeline.schedules import records_waiting
from rp_pipeline.schema import migrate


def exporter_backlog(sync_config) -> dict[str, float]:
    collector = SyncCollector(sync_config)
    try:
        families = collector.scrape()
    finally:
        collector.close()
    return {
        s.labels["entity"]: s.value
        for family in families
        if family.name == "rp_pipeline_backlog_records"
        for s in family.samples
    }


def test_exporter_and_sensor_count_the_same_backlog(writer, sync_config, redis_client, key_prefix):
    migrate(sync_config)
    model = writer.create_model("m")
    version = writer.create_model_version(model, "v1")
    writer.log_predictions(
        [{"model_version_id": version, "input_data": [i], "output_data": [i]} for i in range(10)]
    )
    sensor = sync_config  # the sensor reads the counters of the one source it is given

    by_entity = exporter_backlog(sync_config)
    assert by_entity == {spec.name: 0.0 for spec in COUNTED} | {
        "models": 1.0,
        "model_versions": 1.0,
        "predictions": 10.0,
    }
    assert records_waiting(sensor, {}) == sum(by_entity.values()) == 12
    assert records_waiting(sensor, {"predictions": 4}) == 1 + 1 + 6

    redis_client.set(f"{key_prefix}counter:dataset", "not a number")
    assert "datasets" not in exporter_backlog(sync_config)
    assert records_waiting(sensor, {}) == 12
