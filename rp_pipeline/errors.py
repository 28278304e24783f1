"""Errors meant for the user as they are: each names what failed and what to do, never a password."""


class ConnectionProblem(RuntimeError):
    """A server could not be reached or refused us."""


class SyncFailed(RuntimeError):
    """One entity's sync failed; nothing of it was committed and the next cycle retries it."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (driver messages add hints and context below it)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
