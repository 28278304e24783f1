"""The guide's Python API: `RedisPgSync` runs the Dagster job `redis_to_postgres_sync` in process.

One cycle is: pre-flight (Redis and Postgres answer) → the same job `dagster dev`
schedules, executed in this process on the instance `dagster dev` shows → the
guide's statistics from the run's history. The CLI and the demo run their cycles
through `RedisPgSync.sync_once`; nothing else executes the job outside Dagster.
("The guide": the tutorial whose API and statistics are kept, docs/architecture.md.)

    sync = RedisPgSync(redis_url="redis://localhost:6379/0", postgres_url="postgresql://...")
    stats = sync.full_sync()            # {'models': 2, 'versions': 0, ..., 'errors': 0}
    sync.run_continuous(interval_seconds=300)   # until stop(), SIGTERM or Ctrl+C

With several sources in `redis_url` (URLs separated by commas, README: Many sources), a cycle is one
run per source, one after another: `full_sync(sources=["eu"])` syncs the sources named, and
`last_outcome.by_source` holds each source's outcome.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

import dagster as dg

from .assets import SOURCE_TAG, run_statistics
from .connections import connect_postgres, connect_redis
from .errors import ConnectionProblem, PermissionProblem, UserFacingError
from .instance_storage import PACKAGED_INSTANCE, InstanceProblem, sync_instance
from .report import (
    COUNTERS,
    SyncOutcome,
    SyncRunFailed,
    combined,
    counter_label,
    error_lines,
    run_failures,
)
from .resources import resources_for
from .schedules import sync_job
from .settings import DEFAULT_KEY_PREFIX, DEFAULT_REDIS_URL, ConfigError, SyncConfig, hide_passwords

# Kept importable from here, where they lived before instance discovery and the report moved out.
__all__ = [
    "COUNTERS",
    "PACKAGED_INSTANCE",
    "InstanceProblem",
    "RedisPgSync",
    "SyncOutcome",
    "SyncRunFailed",
    "combined",
    "sync_instance",
]

log = logging.getLogger("rp_pipeline")


class RedisPgSync:
    """Sync Redis (the aidb layout under `key_prefix`) into Postgres, once or every N seconds.

    URLs left as None come from REDIS_URL / POSTGRES_URL; `settings` are further
    `SyncConfig` fields (schema, sync_schema, conflict, chunk_size, ...).
    """

    def __init__(
        self,
        redis_url: str | None = None,
        postgres_url: str | None = None,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        *,
        logger: logging.Logger | None = None,
        **settings,
    ):
        unknown = set(settings) - {f.name for f in fields(SyncConfig)}
        if unknown:
            raise TypeError(
                f"unknown setting(s) {', '.join(sorted(unknown))}; see rp_pipeline.settings.SyncConfig"
            )
        self._setup(
            SyncConfig(
                redis_url=redis_url or os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL,
                postgres_url=postgres_url or os.environ.get("POSTGRES_URL") or None,
                key_prefix=key_prefix,
                **settings,
            ),
            logger,
        )

    def _setup(self, config: SyncConfig, logger: logging.Logger | None) -> None:
        self.config = config
        self.log = logger or log
        self.last_outcome: SyncOutcome | None = None
        self._stop_requested = (
            False  # set by stop() or a signal; a plain flag, safe in a signal handler
        )
        self._stop_signal: int | None = None

    @classmethod
    def from_config(cls, config: SyncConfig, logger: logging.Logger | None = None) -> RedisPgSync:
        sync = cls.__new__(cls)
        sync._setup(config, logger)
        return sync

    @classmethod
    def from_env(
        cls, env: dict[str, str] | None = None, logger: logging.Logger | None = None, **overrides
    ) -> RedisPgSync:
        """Configured like the CLI: REDIS_URL, POSTGRES_URL, REDIS_KEY_PREFIX, POSTGRES_SCHEMA, SYNC_*,
        with ./.env filling what the environment does not set."""
        if env is None:
            from dotenv import dotenv_values

            env = {
                **{k: v for k, v in dotenv_values(Path.cwd() / ".env").items() if v is not None},
                **os.environ,
            }
        return cls.from_config(SyncConfig.from_env(env, **overrides), logger)

    # -- one cycle -----------------------------------------------------------

    def preflight(self) -> None:
        """Raise ConfigError or ConnectionProblem (InstanceProblem for Dagster's storage) unless a cycle can start."""
        resources_for(self.config)
        self._check_servers()
        with sync_instance():
            pass

    def _check_servers(self, config: SyncConfig | None = None) -> None:
        """Both servers answer; with several sources, Postgres only (a source that is down fails its
        own run, not the others')."""
        config = config or self.config
        if len(config.sources) == 1:
            connect_redis(config).close()
        connect_postgres(config).close()

    def full_sync(self, sources: list[str] | tuple[str, ...] | None = None) -> dict[str, int]:
        """One sync of every entity of every source (or of the sources labelled `sources`); the guide's
        statistics, summed over the sources (per source: `last_outcome.by_source`). Raises SyncRunFailed
        (a SyncFailed) if a step failed."""
        outcome = self.sync_once(sources)
        if not outcome.success:
            raise SyncRunFailed(outcome)
        return outcome.stats

    def sync_once(self, sources: list[str] | tuple[str, ...] | None = None) -> SyncOutcome:
        """Pre-flight, then one run of the Dagster job per source (all, or those labelled `sources`,
        one after another); logs in the guide's style, never half-stops.

        A source that is down fails its own run only: the others still sync, and the outcome is a
        failure. Called on the main thread, SIGINT/SIGTERM during the cycle only request a stop
        (see `stop_requested`); a second signal interrupts with KeyboardInterrupt.
        """
        selected = self.config.select_sources(sources)
        with self._stop_on_signals():
            if len(self.config.sources) == 1:
                outcome = self._sync_source(self.config, selected[0].label)
                self.last_outcome = outcome
                return outcome
            outcomes: dict[str, SyncOutcome] = {}
            for source in selected:
                if self._stop_requested and outcomes:
                    break
                config = self.config.for_source(source.label)
                try:
                    outcomes[source.label] = self._sync_source(config, source.label)
                except ConnectionProblem as exc:  # this source (or Postgres) is down: its run only
                    self.log.error("=== Source %s not synced: %s ===", source.label, exc)
                    outcomes[source.label] = SyncOutcome(
                        "",
                        False,
                        {**dict.fromkeys(COUNTERS, 0), "errors": 1},
                        0.0,
                        [str(exc)],
                        problem=str(exc) if isinstance(exc, PermissionProblem) else None,
                    )
            outcome = combined(outcomes)
            self._log_total(outcome)
            self.last_outcome = outcome
            return outcome

    def _sync_source(self, config: SyncConfig, label: str) -> SyncOutcome:
        """One run of the job for one source (`config` is that source's)."""
        self._check_servers(config)
        partitioned = len(self.config.sources) > 1
        self.log.info(
            "=== Starting Redis → PostgreSQL Sync%s ===", f": source {label}" if partitioned else ""
        )
        clock = time.perf_counter()
        run_id = str(uuid.uuid4())
        job = sync_job(self.config.labels)
        with sync_instance() as instance:
            instance.add_event_listener(run_id, self._forward_log)
            result = self._on_worker_thread(
                lambda: job.execute_in_process(
                    instance=instance,
                    run_id=run_id,
                    resources=resources_for(self.config),
                    partition_key=label if partitioned else None,
                    raise_on_error=False,
                    tags={"rp_pipeline/trigger": "python", SOURCE_TAG: label},
                    # Dagster's own console output is replaced by the guide-style lines forwarded below.
                    run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
                )
            )
        seconds = time.perf_counter() - clock
        failures, failed_steps, problem = run_failures(result, self._redact)
        try:
            stats, _ = run_statistics(config, run_id)
        except Exception as exc:
            if result.success:
                raise
            self.log.warning("  (statistics unavailable: %s)", exc)
            stats = {key: 0 for key in COUNTERS}
        stats = dict(stats)
        if failures:  # a failed entity is an error too: a failed cycle never reports "Errors: 0"
            stats["errors"] = stats.get("errors", 0) + max(1, failed_steps)
        outcome = SyncOutcome(
            run_id, result.success and not failures, stats, seconds, failures, problem
        )
        self._log_outcome(outcome)
        return outcome

    def _forward_log(self, entry) -> None:
        """The assets' log lines and failed checks, as they happen (called on the cycle's thread).

        The run's summary is left out (it is printed from the statistics), and so is Dagster's
        note on check results a partial run did not produce.
        """
        if entry.is_dagster_event:
            if entry.dagster_event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
                self._log_check(entry.dagster_event.asset_check_evaluation_data)
            return
        if (
            entry.user_message.startswith(("Sync complete in ", "Dependencies for step"))
            or "did not yield or return expected outputs" in entry.user_message
        ):
            return
        for line in entry.user_message.splitlines():  # a table's lines arrive as one message
            self.log.log(entry.level, line)

    def _log_check(self, evaluation) -> None:
        if evaluation.passed:
            return
        details = ", ".join(
            f"{k}={v.value}"
            for k, v in evaluation.metadata.items()
            if isinstance(v.value, (int, float, str)) and len(str(v.value)) < 80
        )
        level = (
            logging.WARNING if evaluation.severity == dg.AssetCheckSeverity.WARN else logging.ERROR
        )
        self.log.log(
            level,
            "  Check failed: %s.%s%s",
            evaluation.asset_key.to_user_string(),
            evaluation.check_name,
            f" ({details})" if details else "",
        )

    def _error_lines(self, step: str, error) -> list[str]:
        """A failed step's lines as this sync shows them (report.error_lines, redacted here)."""
        return error_lines(step, error, self._redact)

    def _redact(self, text: str) -> str:
        return hide_passwords(
            text, (self.config.postgres_url, *(s.redis_url for s in self.config.sources))
        )

    def _log_total(self, outcome: SyncOutcome) -> None:
        failed = [label for label, o in outcome.by_source.items() if not o.success]
        self.log.log(
            logging.ERROR if failed else logging.INFO,
            "=== %d source(s) synced in %.2fs%s ===",
            len(outcome.by_source),
            outcome.seconds,
            f"; failed: {', '.join(failed)}" if failed else "",
        )
        for key in COUNTERS:
            self.log.info("  %s: %s", counter_label(key), outcome.stats.get(key, 0))

    def _log_outcome(self, outcome: SyncOutcome) -> None:
        if outcome.success:
            self.log.info("=== Sync Complete in %.2fs ===", outcome.seconds)
        else:
            self.log.error(
                "=== Sync Failed after %.2fs (Dagster run %s) ===", outcome.seconds, outcome.run_id
            )
            for failure in outcome.failures:
                self.log.error("  %s", failure)
        for key in COUNTERS:
            self.log.info("  %s: %s", counter_label(key), outcome.stats.get(key, 0))

    # -- cache warm ----------------------------------------------------------

    def warm(
        self,
        entities: tuple[str, ...] | list[str] | None = None,
        runs_days: float | None = None,
        predictions_hours: float | None = None,
        dry_run: bool = False,
    ) -> dict[str, int]:
        """Write Postgres rows back into Redis after a flush or restart (warm.py); records written per entity.

        Defaults: every entity, runs of the last WARM_RUNS_DAYS (7), predictions of the last
        WARM_PREDICTIONS_HOURS (0: none). Raises SyncFailed if a server fails; running it again completes it.
        """
        from .warm import WarmOptions, parse_entities, run_warm

        options = WarmOptions.from_env(
            entities=parse_entities(",".join(entities)) if entities else None,
            runs_days=runs_days,
            predictions_hours=predictions_hours,
            dry_run=dry_run,
        )
        self._check_servers()
        return run_warm(self.config, options, self.log).counts()

    # -- continuous mode -----------------------------------------------------

    def run_continuous(
        self,
        interval_seconds: float = 300,
        sources: list[str] | tuple[str, ...] | None = None,
    ) -> int:
        """Sync every `interval_seconds` until stop(), SIGTERM or Ctrl+C, each ending after the current
        cycle. A failed cycle is logged and retried at the next interval. Returns the cycles run."""
        if interval_seconds <= 0:
            raise ConfigError(
                f"the interval must be a positive number of seconds, got {interval_seconds}"
            )
        self.config.select_sources(sources)  # an unknown label is refused before the first cycle
        self._stop_requested, self._stop_signal = False, None
        cycles = 0
        with self._stop_on_signals():
            while not self._stop_requested:
                started = time.monotonic()
                try:
                    self.sync_once(sources)
                except UserFacingError as exc:
                    self.log.error("Sync cycle skipped: %s", exc)
                cycles += 1
                wait = interval_seconds - (time.monotonic() - started)
                if not self._stop_requested and wait > 0:
                    self.log.info("Next sync in %.0fs", wait)
                deadline = time.monotonic() + wait
                while not self._stop_requested and time.monotonic() < deadline:
                    time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        self.log.info(
            "Stopped after %d cycle(s)%s.",
            cycles,
            f" ({signal.Signals(self._stop_signal).name})" if self._stop_signal else "",
        )
        return cycles

    def stop(self) -> None:
        """End run_continuous after the cycle in progress (or at once if it is waiting)."""
        self._stop_requested = True

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested

    @property
    def stop_signal(self) -> int | None:
        """The signal (SIGINT, SIGTERM) that requested the stop, if one did."""
        return self._stop_signal

    @contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """On the main thread, SIGINT and SIGTERM request a stop; a second one raises KeyboardInterrupt."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum, _frame):
            if self._stop_signal is not None:
                raise KeyboardInterrupt
            self._stop_signal, self._stop_requested = signum, True

        previous = {
            sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_worker_thread(self, work):
        """Run `work` on a worker thread while this thread waits and notices stop requests.

        On the main thread Dagster turns SIGINT/SIGTERM into an interrupt of the running
        step; on another thread it leaves signals alone, so the cycle always finishes and
        each entity's transaction commits whole.
        """
        box: dict = {}

        def target():
            try:
                box["value"] = work()
            except BaseException as exc:
                box["error"] = exc

        worker = threading.Thread(target=target, name="rp_pipeline-sync-cycle", daemon=True)
        worker.start()
        noted = False
        while worker.is_alive():
            worker.join(0.2)
            if self._stop_signal is not None and not noted:
                noted = True
                self.log.info(
                    "Received %s: stopping after the current cycle (press Ctrl+C again to abort it).",
                    signal.Signals(self._stop_signal).name,
                )
        if "error" in box:
            raise box["error"]
        return box["value"]
