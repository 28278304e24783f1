"""Errors meant for the user as they are: each names what failed and what to do, never a password.

Every such error is a `UserFacingError`: the CLI prints its message as one paragraph (no class
name, no traceback), the Python API and Dagster show it as written. Anything else is a bug and
keeps its class name and traceback.
"""


class UserFacingError(Exception):
    """An error whose message is written for the user: shown as it is, without class name or traceback."""


class ConnectionProblem(UserFacingError, RuntimeError):
    """A server could not be reached or refused us."""


class PermissionProblem(ConnectionProblem):
    """A server refused a command or statement the sync's user has no right to run.

    A configuration problem, not a transient fault: every cycle would fail the same way
    until the right is granted, so the message names the grant instead of promising a retry.
    """


class SyncFailed(UserFacingError, RuntimeError):
    """One entity's sync failed; nothing of it was committed and the next cycle retries it."""


def user_facing_class(name: str | None) -> type[UserFacingError] | None:
    """The user-facing error class called `name`, or None: a Dagster step's failure reaches the API
    as the class's name only (its error is serialized), not as the exception."""
    todo = [UserFacingError]
    while todo:
        cls = todo.pop()
        if cls.__name__ == name:
            return cls
        todo.extend(cls.__subclasses__())
    return None


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (driver messages add hints and context below it)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
