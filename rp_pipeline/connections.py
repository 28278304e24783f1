"""Opening Redis and Postgres connections, with errors that say what failed and what to do.

Messages name host:port and database, never a password.
"""

from __future__ import annotations

import psycopg
import redis

from .errors import ConnectionProblem, first_line
from .settings import SyncConfig, psycopg_url, redact_url, split_url


def _where(url: str, default_port: int) -> str:
    parts = split_url(url)
    return f"{parts.host}:{parts.port or default_port}"


class WatchedConnection(psycopg.Connection):
    """A connection whose every wait on the server has a client-side deadline.

    statement_timeout is enforced by the server: a server that stops answering (hung, a
    half-open connection, a network that drops packets silently) would hold the sync, and
    the locks its transaction holds, forever. Past the deadline the connection is closed
    and the wait fails with OperationalError; `stalled` says why.
    """

    deadline_seconds: float | None = None
    stalled: bool = False

    def wait(self, gen, interval=0.1, timeout=None):
        try:
            return super().wait(gen, interval, timeout if timeout is not None else self.deadline_seconds)
        except psycopg.errors._WaitTimeout:  # raised by psycopg itself when the timeout passes
            self.stalled = True
            self.pgconn.finish()  # mid-protocol: the connection cannot be used again
            raise psycopg.OperationalError(
                f"Postgres did not answer within {self.deadline_seconds:g} s (client-side deadline)") from None


def connect_postgres(config: SyncConfig, *, autocommit: bool = True) -> psycopg.Connection:
    url = config.require_postgres_url()
    try:
        conn = WatchedConnection.connect(
            psycopg_url(url), autocommit=autocommit, connect_timeout=10, application_name="rp_pipeline",
            keepalives=1, keepalives_idle=30, keepalives_interval=10, keepalives_count=3)
    except psycopg.OperationalError as exc:
        raise ConnectionProblem(explain_postgres_error(exc, url)) from None
    # Well past the server's own statement timeout: only a server that stopped answering reaches it.
    conn.deadline_seconds = config.statement_timeout_ms / 1000 * 1.5 + 5
    return conn


def explain_postgres_error(exc: Exception, url: str) -> str:
    where = _where(url, 5432)
    parts = split_url(url)
    database = parts.path or "(default)"
    text = str(exc).replace(parts.password, "***") if parts.password else str(exc)
    if "password authentication failed" in text or "no password supplied" in text:
        return (f"Postgres at {where} rejected the credentials for user {parts.user!r}: "
                "check the user and password in POSTGRES_URL.")
    if "does not exist" in text and "database" in text:
        return (f"Postgres at {where} has no database {database!r}: create it "
                f"(createdb -h {where.split(':')[0]} {database}) or fix POSTGRES_URL.")
    if "Connection refused" in text or "could not connect" in text or "timeout expired" in text:
        return (f"cannot connect to Postgres at {where} (connection refused): is it running? Start it "
                "(e.g. `sudo systemctl start postgresql`, or `pg_ctlcluster 15 main start`) or fix POSTGRES_URL "
                f"({redact_url(url)}).")
    return f"Postgres at {where} (database {database!r}): {text.splitlines()[0] if text else type(exc).__name__}"


REDIS_PING_TIMEOUT = 5.0  # a Redis that accepts connections but does not answer PING in this is not usable
REDIS_REPLY_TIMEOUT = 60.0  # the longest one pipelined batch may take to come back


def connect_redis(config: SyncConfig) -> redis.Redis:
    """A client that decodes UTF-8 but keeps invalid bytes (as surrogates) so they are rejected, not fatal."""
    url = config.redis_url
    try:
        options = dict(decode_responses=True, encoding_errors="surrogateescape", socket_connect_timeout=5,
                       socket_keepalive=True)
        with redis.Redis.from_url(url, socket_timeout=REDIS_PING_TIMEOUT, **options) as probe:
            probe.ping()
        client = redis.Redis.from_url(url, socket_timeout=REDIS_REPLY_TIMEOUT, **options)
    except redis.AuthenticationError:
        raise ConnectionProblem(f"Redis at {_where(url, 6379)} rejected the password in REDIS_URL.") from None
    except redis.TimeoutError:
        raise ConnectionProblem(
            f"Redis at {_where(url, 6379)} accepted the connection but did not answer within "
            f"{REDIS_PING_TIMEOUT:g} s: is it overloaded, or is something else listening on that port? "
            f"Check REDIS_URL ({redact_url(url)}).") from None
    except redis.ConnectionError as exc:
        raise ConnectionProblem(
            f"cannot connect to Redis at {_where(url, 6379)} ({first_line(exc)}): is it running? Start it "
            "(e.g. `redis-server --daemonize yes`, or `sudo systemctl start redis-server`) or fix REDIS_URL "
            f"({redact_url(url)}).") from None
    except redis.ResponseError as exc:
        raise ConnectionProblem(f"Redis at {_where(url, 6379)} refused us: {first_line(exc)}") from None
    except ValueError:
        # The parser's own message may quote part of the password: it is not repeated.
        raise ConnectionProblem(
            f"REDIS_URL is not a valid Redis URL ({redact_url(url)}): write it as "
            "redis://[user:password@]host:port/db, with special characters in the password percent-encoded "
            "(e.g. # as %23).") from None
    return client
