"""The run report: one cycle's outcome (`SyncOutcome`), the guide's counters, and the failure lines
read out of a Dagster run's events (redacted, one per failure, naming the tables that failed)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import dagster as dg

from .entities import BY_NAME, STAT_KEYS
from .errors import PermissionProblem, SyncFailed, UserFacingError, user_facing_class

# The guide's counters in its order, plus ours (experiment membership) before the errors.
COUNTERS = (*STAT_KEYS[:-1], "experiment_runs", "errors")


class SyncRunFailed(SyncFailed):
    """A sync cycle ran but a step failed; `outcome` holds what committed before the failure."""

    def __init__(self, outcome: SyncOutcome):
        super().__init__("; ".join(outcome.failures))
        self.outcome = outcome


@dataclass(frozen=True)
class SyncOutcome:
    """One cycle: the Dagster run, whether it succeeded, the guide's counters and the wall time.

    `problem` is set when a step failed on configuration (a missing Redis ACL right or Postgres
    grant): one line naming the grant, the same every cycle until it is made.
    """

    run_id: str
    success: bool
    stats: dict[str, int]
    seconds: float
    failures: list[str] = field(default_factory=list)
    problem: str | None = None
    # With several sources: each source's own outcome, by label (the fields above sum them up).
    by_source: dict[str, SyncOutcome] = field(default_factory=dict)


def combined(outcomes: dict[str, SyncOutcome]) -> SyncOutcome:
    """Several sources' outcomes as one: counters summed, failures named by source."""
    stats = {key: sum(o.stats.get(key, 0) for o in outcomes.values()) for key in COUNTERS}
    return SyncOutcome(
        run_id=",".join(o.run_id for o in outcomes.values() if o.run_id),
        success=all(o.success for o in outcomes.values()),
        stats=stats,
        seconds=sum(o.seconds for o in outcomes.values()),
        failures=[f"{label}: {line}" for label, o in outcomes.items() for line in o.failures],
        problem=next((o.problem for o in outcomes.values() if o.problem), None),
        by_source=outcomes,
    )


def counter_label(key: str) -> str:
    return key.replace("_", " ").capitalize()


def run_failures(result, redact: Callable[[str], str]) -> tuple[list[str], int, str | None]:
    """(the failure lines: one per distinct failure naming the tables that failed alike, then those
    left waiting behind them, or the run's own failure when no step got to run; how many tables
    failed; the configuration problem, without the tables' names, if the step failed on one)."""
    failures, run_failures, problem = [], [], None
    for event in result.all_events:
        if event.is_step_failure:
            error = _innermost(event.step_failure_data.error)
            lines = error_lines(event.step_key, error, redact)
            failures.extend(lines)
            # A missing grant is configuration: the CLI reports it like a bad setting (exit 2).
            if _is_error(error, PermissionProblem) and problem is None and lines:
                problem = lines[0].split(": ", 1)[1] if _tables_named(lines[0]) else lines[0]
        elif event.event_type == dg.DagsterEventType.RUN_FAILURE and event.event_specific_data:
            error = getattr(event.event_specific_data, "error", None)
            if error is not None:
                run_failures.extend(error_lines("run", _innermost(error), redact))
    failures = failures or run_failures
    if not result.success and not failures:
        failures.append(f"run {result.run_id} failed; see it in the Dagster UI")
    return failures, sum(len(_tables_named(line)) for line in failures), problem


def error_lines(step: str, error, redact: Callable[[str], str]) -> list[str]:
    """The lines of the exception a step raised, redacted: the sync's own failure names each table
    ('models, datasets: ...'); anything else is 'step: Class: message'."""
    lines = error.message.strip().splitlines() or [error.cls_name or "error"]
    _qualified_name, sep, first = lines[0].partition(": ")
    if not sep:
        first = lines[0]
    if _is_error(error, UserFacingError):  # written for the user: shown as is, no class name
        return [
            redact(line)
            for line in [first, *lines[1:]]
            if line.strip() and not line.startswith(" ")
        ]
    text = f"{error.cls_name}: {first}" if sep else first
    return [redact(text if text.startswith(f"{step}:") else f"{step}: {text}")]


def _innermost(error):
    """The exception a step raised, out of the wrappers Dagster puts around it."""
    while error.cause is not None:
        error = error.cause
    return error


def _is_error(error, kind: type[Exception]) -> bool:
    """Whether a step's serialized error (Dagster keeps the class's name only) is a `kind`."""
    cls = user_facing_class(error.cls_name)
    return cls is not None and issubclass(cls, kind)


def _tables_named(line: str) -> list[str]:
    """The tables a failure line starts with ('models, datasets: ...'); [] for any other line."""
    head, sep, _ = line.partition(": ")
    names = head.split(", ") if sep else []
    return names if names and all(name in BY_NAME for name in names) else []
