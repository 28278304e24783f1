"""Dagster instance storage chosen by the environment, for `dagster.yaml`.

With DAGSTER_POSTGRES_URL set, run, event-log and schedule storage live in that
Postgres through dagster-postgres, in their own schema (DAGSTER_POSTGRES_SCHEMA,
default `dagster`), never among the analytics tables. Without it they are SQLite
files under `.dagster_home/` (or $DAGSTER_HOME): nothing extra to run.
Each class returns the concrete storage from `from_config_value`, keeping its own
`inst_data` so that run workers rebuild the same choice.

`sync_instance()` finds the instance the CLI and the Python API record their runs in: the one
`dagster dev` shows for this directory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
from dagster._core.storage.event_log.base import EventLogStorage as BaseEventLogStorage
from dagster._core.storage.runs.base import RunStorage as BaseRunStorage
from dagster._core.storage.schedules.base import ScheduleStorage as BaseScheduleStorage
from dagster._serdes import ConfigurableClass

from .errors import ConnectionProblem

SCHEMA_ENV, URL_ENV = "DAGSTER_POSTGRES_SCHEMA", "DAGSTER_POSTGRES_URL"


def postgres_storage_url() -> str | None:
    """dagster-postgres URL (psycopg2) with search_path set to the Dagster schema, creating the schema."""
    url = os.environ.get(URL_ENV)
    if not url:
        return None
    schema = os.environ.get(SCHEMA_ENV, "dagster")
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", schema):
        raise ValueError(f"{SCHEMA_ENV} must be a plain SQL identifier, got {schema!r}")
    import psycopg

    from .settings import psycopg_url

    with psycopg.connect(psycopg_url(url), autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    url = re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql+psycopg2://", url)
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


def local_storage_dir() -> str:
    base = Path(os.environ.get("DAGSTER_HOME") or Path.cwd() / ".dagster_home") / "storage"
    base.mkdir(parents=True, exist_ok=True)
    return str(base)


class _EnvSelected(ConfigurableClass):
    """Never instantiated: `from_config_value` hands back a concrete storage."""

    @classmethod
    def config_type(cls):
        return {}


def _storage(inst_data, postgres_class: str, sqlite_factory):
    url = postgres_storage_url()
    if url:
        import dagster_postgres

        return getattr(dagster_postgres, postgres_class)(url, inst_data=inst_data)
    return sqlite_factory(local_storage_dir(), inst_data=inst_data)


# Each subclasses Dagster's storage base too, as the instance checks the class it rehydrates.
class RunStorage(_EnvSelected, BaseRunStorage):
    @classmethod
    def from_config_value(cls, inst_data, config_value):
        from dagster._core.storage.runs import SqliteRunStorage

        return _storage(inst_data, "PostgresRunStorage", SqliteRunStorage.from_local)


class EventLogStorage(_EnvSelected, BaseEventLogStorage):
    @classmethod
    def from_config_value(cls, inst_data, config_value):
        from dagster._core.storage.event_log import SqliteEventLogStorage

        return _storage(inst_data, "PostgresEventLogStorage", SqliteEventLogStorage)


class ScheduleStorage(_EnvSelected, BaseScheduleStorage):
    @classmethod
    def from_config_value(cls, inst_data, config_value):
        from dagster._core.storage.schedules import SqliteScheduleStorage

        return _storage(inst_data, "PostgresScheduleStorage", SqliteScheduleStorage.from_local)


# Storage for a working directory without a dagster.yaml (an installed package, a container):
# the same environment-driven choice as the repository's dagster.yaml.
PACKAGED_INSTANCE = {
    **{
        kind: {"module": "rp_pipeline.instance_storage", "class": cls}
        for kind, cls in (
            ("run_storage", "RunStorage"),
            ("event_log_storage", "EventLogStorage"),
            ("schedule_storage", "ScheduleStorage"),
        )
    },
    "telemetry": {"enabled": False},
}


class InstanceProblem(ConnectionProblem):
    """The Dagster instance's storage (the run history) could not be opened or reached."""


@contextmanager
def sync_instance() -> Iterator[dg.DagsterInstance]:
    """The instance runs are recorded in: $DAGSTER_HOME's if set, else the one `dagster dev` uses here.

    `dagster dev` started without DAGSTER_HOME in a directory reads ./dagster.yaml, whose
    storage (the classes above) is Postgres at DAGSTER_POSTGRES_URL or SQLite
    in ./.dagster_home/storage; this builds the same instance, so runs of the CLI and the
    API show up in that UI. Without a ./dagster.yaml the same storage choice is applied.
    """
    # No public API builds an instance from ./dagster.yaml with its home in ./.dagster_home (or
    # from overrides when there is no dagster.yaml): DagsterInstance.get() needs DAGSTER_HOME.
    from dagster._core.instance.ref import InstanceRef

    try:
        if os.environ.get("DAGSTER_HOME"):
            instance = dg.DagsterInstance.get()
        else:
            cwd = Path.cwd()
            has_yaml = (cwd / "dagster.yaml").exists()
            instance = dg.DagsterInstance.from_ref(
                InstanceRef.from_dir(
                    str(cwd / ".dagster_home"),
                    config_dir=str(cwd),
                    overrides=None if has_yaml else PACKAGED_INSTANCE,
                )
            )
    except Exception as exc:
        raise InstanceProblem(_instance_error(exc)) from None
    with instance:
        yield instance


def _instance_error(exc: Exception) -> str:
    # Imported here: run workers load this module for its storage classes alone.
    from .connections import explain_postgres_error

    where = (
        f"DAGSTER_HOME={os.environ['DAGSTER_HOME']}"
        if os.environ.get("DAGSTER_HOME")
        else f"{Path.cwd() / 'dagster.yaml'} semantics, storage in ./.dagster_home"
    )
    url = os.environ.get(URL_ENV)
    if url:
        detail = explain_postgres_error(exc, url) + " (DAGSTER_POSTGRES_URL, Dagster's run storage)"
    else:
        lines = str(exc).strip().splitlines()
        detail = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    return f"cannot open the Dagster instance ({where}): {detail}"
