"""Errors meant for the user as they are: each names what failed and what to do, never a password."""


class ConnectionProblem(RuntimeError):
    """A server could not be reached or refused us."""


class PermissionProblem(ConnectionProblem):
    """A server refused a command or statement the sync's user has no right to run.

    A configuration problem, not a transient fault: every cycle would fail the same way
    until the right is granted, so the message names the grant instead of promising a retry.
    """


class SyncFailed(RuntimeError):
    """One entity's sync failed; nothing of it was committed and the next cycle retries it."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (driver messages add hints and context below it)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
