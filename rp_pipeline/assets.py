"""The nine Postgres tables as one multi-asset: one step per sync cycle, made from the entity specs.

Dagster records every event (a materialization, a check result, a log line) at tens of
milliseconds, and every step adds its own; nine steps and their checks cost a cycle with nothing
new seconds. So the tables sync in one step, in dependency order, each table followed by its
checks on the rows it wrote. Each table still has its own asset, materialization, metadata,
freshness policy and check results, its dependencies follow the foreign keys, and any table can
be materialized alone (`can_subset=True`). The run's statistics in the guide's counters become
run tags.

A table's checks run when the cycle wrote to it (or when checks are run on their own): a cycle with
nothing new records only the nine materializations, and Dagster shows the checks of a table it
left unchanged as not executed in that run, their last results unchanged.
"""

import inspect
import itertools
import logging
import os
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pandas as pd
import psycopg

from . import engine, entities
from .bookkeeping import run_history
from .checks import WrittenRows, check_specs, table_checks
from .connections import connect_postgres
from .engine import EntityResult, stats_from_results, sync_entity
from .entities import ENTITIES, STAT_KEYS, EntitySpec
from .errors import PermissionProblem, SyncFailed, UserFacingError
from .extract import RedisSource
from .resources import SyncResource
from .schema import ensure_schema, has_redis_id, identity_index_name
from .settings import (
    DEFAULT_KEY_PREFIX,
    DEFAULT_REDIS_URL,
    ConfigError,
    SyncConfig,
    parse_sources,
    schedule_interval_seconds,
)
from .sources import resolve_origin
from .strategies import strategy_of

GROUP = "redis_to_postgres"
OWNERS = ["team:ml-platform"]

# Types as Postgres reports them (information_schema.columns.data_type).
INFORMATION_SCHEMA_TYPES = {entities.TIMESTAMPTZ: "timestamp with time zone"}


def freshness_policy(seconds: int) -> dg.FreshnessPolicy:
    """Warn after about two sync intervals without a successful sync of the table, fail after about three."""
    return dg.FreshnessPolicy.time_window(
        fail_window=timedelta(seconds=3 * seconds), warn_window=timedelta(seconds=2 * seconds)
    )


def column_schema(spec: EntitySpec) -> dg.TableSchema:
    """The table's columns (Postgres types, nullability), its unique identity and its foreign keys."""

    def column(
        name: str, type_: str, nullable: bool, other: tuple[str, ...] = ()
    ) -> dg.TableColumn:
        return dg.TableColumn(
            name,
            INFORMATION_SCHEMA_TYPES.get(type_, type_),
            constraints=dg.TableColumnConstraints(
                nullable=nullable, unique=name == "id", other=list(other)
            ),
        )

    rule = {True: "ON DELETE SET NULL", False: "ON DELETE CASCADE"}
    columns = [column("id", entities.BIGINT, False, ("primary key, identity",))]
    columns += [
        column(
            p.column,
            entities.BIGINT,
            p.optional,
            (f"foreign key → {p.entity}.id {rule[p.optional]}",),
        )
        for p in spec.parents
    ]
    columns += [
        column(c.name, c.type, not (c.required and c.name in spec.natural_key))
        for c in spec.columns
    ]
    columns.append(column("origin_source", entities.TEXT, True))
    if has_redis_id(spec):
        columns.append(column("origin_redis_id", entities.BIGINT, True))
    identity = ", ".join(spec.natural_key) + (f" WHERE {spec.key_where}" if spec.key_where else "")
    return dg.TableSchema(
        columns=columns,
        constraints=dg.TableConstraints(
            other=[
                f"unique ({identity}) — index {identity_index_name(spec)}",
                *(
                    f"foreign key ({p.column}) → {p.entity}.id {rule[p.optional]}"
                    for p in spec.parents
                ),
            ]
        ),
    )


def _line_of(path: Path, text: str) -> int | None:
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if text in line:
            return number
    return None


def code_references(spec: EntitySpec) -> dg.CodeReferencesMetadataValue:
    """Where the table is declared (its spec) and the engine that syncs every table."""
    specs_file = Path(entities.__file__)
    with (
        warnings.catch_warnings()
    ):  # code references are "beta": said once here, not at every import
        warnings.simplefilter("ignore", dg.BetaWarning)
        return _code_references(spec, specs_file)


def _code_references(spec: EntitySpec, specs_file: Path) -> dg.CodeReferencesMetadataValue:
    return dg.CodeReferencesMetadataValue(
        code_references=[
            dg.LocalFileCodeReference(
                file_path=str(specs_file),
                line_number=_line_of(specs_file, f'name="{spec.name}"'),
                label=f"{spec.name} spec",
            ),
            dg.LocalFileCodeReference(
                file_path=inspect.getsourcefile(engine),
                line_number=inspect.getsourcelines(sync_entity)[1],
                label="sync engine",
            ),
        ]
    )


def describe(spec: EntitySpec) -> str:
    how = strategy_of(spec).describe(spec)
    parents = f" Parents: {', '.join(p.entity for p in spec.parents)}." if spec.parents else ""
    mode = (
        "read incrementally above a watermark, appended"
        if spec.incremental
        else "re-read each cycle, appended"
        if not spec.mutable
        else "re-read each cycle and upserted"
    )
    return (
        f"Redis `{{prefix}}{spec.key}` records ({how}) synced into the Postgres table `{spec.name}`, {mode}; "
        f"a row is identified by ({', '.join(spec.natural_key)}).{parents}"
    )


def table_spec(spec: EntitySpec, seconds: int) -> dg.AssetSpec:
    return dg.AssetSpec(
        spec.name,
        deps=sorted({parent.entity for parent in spec.parents}),
        group_name=GROUP,
        description=describe(spec),
        kinds={"redis", "postgres", "pandas"},
        owners=OWNERS,
        tags={"entity": spec.name},
        freshness_policy=freshness_policy(seconds),
        metadata={
            "dagster/column_schema": column_schema(spec),
            "dagster/code_references": code_references(spec),
        },
    )


def materialization_metadata(result: EntityResult, config: SyncConfig, database: str) -> dict:
    metadata = {
        "dagster/row_count": dg.MetadataValue.int(result.row_count or 0),
        "dagster/table_name": f"{database}.{config.schema}.{result.entity}",
        "dagster/column_schema": column_schema(ENTITIES_BY_NAME[result.entity]),
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
            pd.DataFrame(result.rejection_samples).to_markdown(index=False)
        )
    return metadata


ENTITIES_BY_NAME = {spec.name: spec for spec in ENTITIES}


SOURCE_TAG = "rp_pipeline/source"  # every sync run's source label (its partition key with several)


def source_labels(env: dict[str, str] | None = None) -> tuple[str, ...]:
    """The sources' labels as REDIS_URL names them when the definitions load. A REDIS_URL that cannot
    work gives no partitions here: the run then fails with the one line saying what to fix."""
    env = os.environ if env is None else env
    try:
        return tuple(
            s.label
            for s in parse_sources(
                env.get("REDIS_URL") or DEFAULT_REDIS_URL,
                env.get("REDIS_KEY_PREFIX", DEFAULT_KEY_PREFIX),
            )
        )
    except ConfigError:
        return ()


def sources_partitions(labels: tuple[str, ...]) -> dg.StaticPartitionsDefinition | None:
    """One partition per source when there are several; none for one (no partition noise in the UI)."""
    return dg.StaticPartitionsDefinition(list(labels)) if len(labels) > 1 else None


def build_sync_assets(labels: tuple[str, ...], seconds: int) -> dg.AssetsDefinition:
    """The sync's multi-asset for these sources: partitioned by source label when there are several."""

    @dg.multi_asset(
        name=GROUP,
        specs=[table_spec(spec, seconds) for spec in ENTITIES],
        # Unpartitioned even with several sources: partitioned check specs are a preview in
        # Dagster 1.13 (a warning at every load); each evaluation names its run, hence its source.
        check_specs=[s for spec in ENTITIES for s in check_specs(spec)],
        can_subset=True,
        partitions_def=sources_partitions(labels),
        description="One Redis → Postgres sync: the nine tables in dependency order, each followed by "
        "its checks." + (" One partition per Redis source." if len(labels) > 1 else ""),
    )
    def redis_to_postgres(context: dg.AssetExecutionContext, sync: SyncResource) -> Iterator:
        config = sync.sync_config(context.partition_key if context.has_partition_key else None)
        context.instance.add_run_tags(context.run.run_id, {SOURCE_TAG: config.sources[0].label})
        ensure_schema(config)
        with sync.connections(config.sources[0].label) as (client, conn, config):
            yield from sync_tables(context, client, conn, config)

    return redis_to_postgres


redis_to_postgres = build_sync_assets(source_labels(), schedule_interval_seconds())


class TableLog:
    """The sync's log lines for one table, handed to Dagster as one message per run of same-level
    lines: a table whose sync names every record it wrote ("Run synced: ...") costs one event, not
    one per record. A table still syncing after PROGRESS_EVERY_SECONDS is a long load: from then
    on its lines (a progress line every PROGRESS_EVERY_SECONDS) go out as they come, so the run's
    logs show it moving, not only its end."""

    def __init__(self, logger):
        self.logger = logger
        self.lines: list[tuple[int, str]] = []
        self.count = 0  # lines logged, emitted or not
        self.started = time.monotonic()
        self.owner = threading.get_ident()  # Dagster's log is written from the step's thread only

    def log(self, level: int, msg: str, *args, **_kwargs) -> None:
        self.lines.append((level, msg % args if args else msg))
        self.count += 1
        if (
            threading.get_ident() == self.owner
            and time.monotonic() - self.started >= engine.PROGRESS_EVERY_SECONDS
        ):
            self.emit()

    def debug(self, msg, *args, **kwargs):
        self.log(logging.DEBUG, msg, *args)

    def info(self, msg, *args, **kwargs):
        self.log(logging.INFO, msg, *args)

    def warning(self, msg, *args, **kwargs):
        self.log(logging.WARNING, msg, *args)

    def error(self, msg, *args, **kwargs):
        self.log(logging.ERROR, msg, *args)

    def emit(self) -> None:
        lines, self.lines = self.lines, []
        for level, group in itertools.groupby(lines, key=lambda line: line[0]):
            self.logger.log(level, "\n".join(text for _, text in group))


def sync_order(specs: Sequence[EntitySpec]) -> list[EntitySpec]:
    """The tables in dependency order, each incremental (append-heavy) table as early as its
    parents allow: its checks, the costliest, then run while the tables after it sync."""
    remaining, placed, order = list(specs), set(), []
    while remaining:
        ready = [s for s in remaining if all(p.entity in placed for p in s.parents)] or remaining
        spec = next((s for s in ready if s.incremental), ready[0])
        remaining.remove(spec)
        placed.add(spec.name)
        order.append(spec)
    return order


class BackgroundChecks:
    """A table's checks, run on a connection of their own while the next tables sync; their results
    come back in the order the tables were checked (`done()` between tables, `all()` at the end).
    A check that raised raises here, as it did inline."""

    def __init__(self, config: SyncConfig):
        self.config = config
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rp_pipeline-checks")
        self.pending: list[Future] = []
        self.conn: psycopg.Connection | None = None

    def __enter__(self) -> "BackgroundChecks":
        return self

    def __exit__(self, *exc_info) -> None:
        for future in self.pending:
            future.cancel()
        self.pool.shutdown(wait=True)
        if self.conn is not None:
            self.conn.close()

    def _run(self, spec, names, written, client, source) -> list:
        if self.conn is None or self.conn.closed or self.conn.broken:
            self.conn = connect_postgres(self.config)
        return list(table_checks(spec, names, written, self.conn, client, self.config, source))

    def submit(self, spec, names, written, client, source) -> None:
        self.pending.append(self.pool.submit(self._run, spec, names, written, client, source))

    def done(self) -> Iterator[dg.AssetCheckResult]:
        while self.pending and self.pending[0].done():
            yield from self.pending.pop(0).result()

    def all(self) -> Iterator[dg.AssetCheckResult]:
        while self.pending:
            yield from self.pending.pop(0).result()


def sync_tables(
    context: dg.AssetExecutionContext, client, conn: psycopg.Connection, config: SyncConfig
) -> Iterator:
    """Sync the selected tables in dependency order, each followed by its selected checks.

    A table whose sync fails is reported at the end (the step fails); the tables below it wait for
    the next cycle, while the others still sync.
    """
    tables = {key.to_user_string() for key in context.selected_asset_keys}
    checks: dict[str, set[str]] = {}
    for key in context.selected_asset_check_keys:
        checks.setdefault(key.asset_key.to_user_string(), set()).add(key.name)
    failed: dict[str, Exception] = {}
    waiting: list[str] = []
    source: str | None = None  # the origin of the rows this cycle wrote, for the checks
    with BackgroundChecks(config) as background:
        for spec in sync_order(ENTITIES):
            yield from background.done()
            written, changed = None, True
            if spec.name in tables:
                if any(p.entity in failed or p.entity in waiting for p in spec.parents):
                    waiting.append(spec.name)
                    continue
                lines = TableLog(context.log)  # "Syncing ..." and the table's lines: one event
                lines.info(f"Syncing {spec.name}...")
                try:
                    result = sync_entity(
                        spec, client, conn, config, run_id=context.run.run_id, logger=lines
                    )
                except Exception as exc:
                    lines.emit()
                    failed[spec.name] = exc
                    if not isinstance(
                        exc, UserFacingError
                    ):  # a bug: keep its traceback in the logs
                        context.log.exception(f"{spec.name}: {_failure_text(spec.name, exc)}")
                    continue
                source = result.origin
                if (  # a table read and found unchanged says so in its metadata only
                    result.inserted
                    or result.updated
                    or result.skipped
                    or result.rejected
                    or result.pending
                    or result.deleted
                ):
                    lines.info(
                        f"{spec.name}: {result.inserted} inserted, {result.updated} updated, {result.unchanged} unchanged, "
                        f"{result.skipped} skipped, {result.rejected} rejected, {result.pending} pending "
                        f"in {result.duration_seconds:.2f}s ({result.rows_per_second:,.0f} rows/s)"
                    )
                if lines.count > 1:  # a table the cycle left alone logs nothing (its header alone)
                    lines.emit()
                yield dg.MaterializeResult(
                    asset_key=spec.name,
                    metadata=materialization_metadata(result, config, conn.info.dbname),
                )
                # rejection_samples: records it met and could not load, new or still bad (the WARN check follows them)
                written, changed = (
                    WrittenRows.of(result),
                    bool(result.inserted or result.updated or result.rejection_samples),
                )
            if changed and checks.get(
                spec.name
            ):  # a table the cycle left as it was keeps its last results
                if (
                    source is None
                ):  # checks run on their own: the origin of the data set Redis holds now
                    source = resolve_origin(
                        RedisSource(client, config.key_prefix), conn, config
                    ).name
                background.submit(spec, checks[spec.name], written, client, source)
        yield from background.all()
    if tables:
        record_statistics(context, config, conn)
    if failed:
        raise step_failure(failed, waiting)


def step_failure(failed: dict[str, Exception], waiting: list[str]) -> Exception:
    """The step's one exception: a line per distinct failure naming the tables that failed alike, then
    those left waiting. A missing right wins the class (PermissionProblem): it is configuration, and
    the CLI exits 2 on it; otherwise SyncFailed (the next cycle retries)."""
    tables_by_text: dict[str, list[str]] = {}
    for entity, exc in failed.items():
        tables_by_text.setdefault(_failure_text(entity, exc), []).append(entity)
    lines = [f"{', '.join(tables)}: {text}" for text, tables in tables_by_text.items()]
    if waiting:
        lines.append(f"not synced this cycle, waiting on a failed parent: {', '.join(waiting)}")
    kind = (
        PermissionProblem
        if any(isinstance(exc, PermissionProblem) for exc in failed.values())
        else SyncFailed
    )
    return kind("\n".join(lines))


def _failure_text(entity: str, exc: Exception) -> str:
    """The failure's first line without the table's name; the class name unless written for the user."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if not isinstance(exc, UserFacingError):
        text = f"{type(exc).__name__}: {text}"
    return text.removeprefix(f"{entity}: ")


def record_statistics(
    context: dg.AssetExecutionContext, config: SyncConfig, conn: psycopg.Connection
) -> None:
    """The run's statistics in the guide's counters, as run tags (`rp_pipeline/predictions=50`, ...)."""
    stats, seconds = run_statistics(config, context.run.run_id, conn)
    context.instance.add_run_tags(
        context.run.run_id, {f"rp_pipeline/{k}": str(v) for k, v in stats.items()}
    )
    context.log.info(
        f"Sync complete in {seconds:.2f}s: " + ", ".join(f"{key} {stats[key]}" for key in STAT_KEYS)
    )


def run_statistics(
    config, run_id: str, conn: psycopg.Connection | None = None
) -> tuple[dict[str, int], float]:
    """The guide's counters for one run, from the history the sync committed (on `conn` when it is
    still usable, else on a connection of its own)."""
    if conn is not None and not conn.closed and not conn.broken:
        rows = run_history(conn, config.sync_schema, run_id)
    else:
        with connect_postgres(config) as own:
            rows = run_history(own, config.sync_schema, run_id)
    stats = stats_from_results(
        {"entity": e, "inserted": i, "updated": u, "rejected": r} for e, i, u, r, _ in rows
    )
    return stats, float(rows[0][4]) if rows else 0.0
