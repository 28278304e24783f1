"""One configuration, read once: every variable is parsed by settings.py with one rule.

Covers: the Dagster resource reading the same configuration as the CLI and the API from the same
environment (one field per variable, no defaults of its own); SYNC_INTERVAL read by the same rule
for the schedule and the CLI; a configuration surviving the trip into the resource and back.
"""

from __future__ import annotations

import pytest

from rp_pipeline.resources import SyncResource
from rp_pipeline.settings import (
    ENVIRONMENT_VARIABLES,
    ConfigError,
    SyncConfig,
    schedule_interval_seconds,
)

ENVIRONMENT = {
    "REDIS_URL": "redis://cache:6379/2,redis://cache:6379/2?key_prefix=b:&label=tenant-b",
    "REDIS_KEY_PREFIX": "app:",
    "POSTGRES_URL": "postgresql://sync:pw@db:5432/ml",
    "POSTGRES_SCHEMA": "analytics",
    "SYNC_SCHEMA": "sync_state",
    "SYNC_SOURCE": "lab",
    "SYNC_CONFLICT_POLICY": "models=overwrite,datasets=merge",
    "SYNC_RETENTION_HOURS": "predictions=24",
    "SYNC_INTERVAL": "600",
    "SYNC_BACKLOG_TRIGGER": "5000",
    "SYNC_PENDING_MAX_AGE": "120",
    "SYNC_CHUNK_SIZE": "500",
    "SYNC_MEMORY_BUDGET_MB": "64",
    "SYNC_STATEMENT_TIMEOUT_MS": "1000",
    "SYNC_LOCK_TIMEOUT_MS": "2000",
    "SYNC_METRIC_RESCAN_SECONDS": "60",
}


def test_the_dagster_resource_reads_the_environment_as_the_cli_does(monkeypatch):
    assert set(ENVIRONMENT) == set(ENVIRONMENT_VARIABLES)  # every variable is exercised here
    for name, value in ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    cli = SyncConfig.from_env()
    assert SyncResource.from_env().process_config_and_initialize().sync_config() == cli
    assert cli.interval_seconds == 600 and cli.backlog_trigger == 5000 and cli.chunk_size == 500
    assert cli.labels == ("cache-6379-2-app", "tenant-b")
    assert SyncResource.of(cli).sync_config() == cli
    one = SyncResource.of(cli).sync_config("tenant-b")
    assert (one.redis_url, one.key_prefix) == ("redis://cache:6379/2", "b:")


def test_the_resource_has_one_field_per_variable_and_no_defaults_of_its_own():
    fields = SyncResource.model_fields
    assert set(fields) == {name.lower() for name in ENVIRONMENT_VARIABLES}
    assert all(field.default is None for field in fields.values())
    assert SyncResource(postgres_url="postgresql://db/x").sync_config() == SyncConfig(
        postgres_url="postgresql://db/x"
    )


@pytest.mark.parametrize("value", ["five minutes", "", "90.5", "30"])
def test_sync_interval_is_read_by_one_rule_for_the_schedule_and_the_cli(value):
    env = {"SYNC_INTERVAL": value}
    if value == "five minutes":
        for read in (lambda: SyncConfig.from_env(env), lambda: schedule_interval_seconds(env)):
            with pytest.raises(ConfigError, match="SYNC_INTERVAL must be a number, got 'five"):
                read()
        return
    seconds = SyncConfig.from_env(env).interval_seconds
    assert seconds == (float(value) if value else 300.0)
    if seconds >= 60:  # the schedule ticks once a minute: whole seconds, at least 60
        assert schedule_interval_seconds(env) == int(seconds)
    else:
        with pytest.raises(ConfigError, match="at least 60 seconds"):
            schedule_interval_seconds(env)


def test_a_setting_that_cannot_work_fails_a_dagster_step_with_its_one_line():
    import dagster as dg

    with pytest.raises(dg.Failure) as failed:
        SyncResource(postgres_url="postgresql://db/x", sync_chunk_size="many").sync_config()
    assert failed.value.description == "SYNC_CHUNK_SIZE must be a number, got 'many'"
