"""Opening Redis and Postgres connections, with errors that say what failed and what to do.

Messages name host:port and database, never a password.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import psycopg
import redis

from .errors import ConnectionProblem, first_line
from .settings import SyncConfig, psycopg_url, redact_url


def _where(url: str, default_port: int) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or default_port}"


def connect_postgres(config: SyncConfig, *, autocommit: bool = True) -> psycopg.Connection:
    url = config.require_postgres_url()
    try:
        conn = psycopg.connect(psycopg_url(url), autocommit=autocommit, connect_timeout=10,
                               application_name="rp_pipeline")
    except psycopg.OperationalError as exc:
        raise ConnectionProblem(explain_postgres_error(exc, url)) from None
    return conn


def explain_postgres_error(exc: Exception, url: str) -> str:
    where = _where(url, 5432)
    database = (urlsplit(url).path or "/").lstrip("/") or "(default)"
    text = str(exc).replace(urlsplit(url).password or "\x00", "***")
    if "password authentication failed" in text or "no password supplied" in text:
        return (f"Postgres at {where} rejected the credentials for user {urlsplit(url).username!r}: "
                "check the user and password in POSTGRES_URL.")
    if "does not exist" in text and "database" in text:
        return (f"Postgres at {where} has no database {database!r}: create it "
                f"(createdb -h {where.split(':')[0]} {database}) or fix POSTGRES_URL.")
    if "Connection refused" in text or "could not connect" in text or "timeout expired" in text:
        return (f"cannot connect to Postgres at {where} (connection refused): is it running? Start it "
                "(e.g. `sudo systemctl start postgresql`, or `pg_ctlcluster 15 main start`) or fix POSTGRES_URL "
                f"({redact_url(url)}).")
    return f"Postgres at {where} (database {database!r}): {text.splitlines()[0] if text else type(exc).__name__}"


def connect_redis(config: SyncConfig) -> redis.Redis:
    """A client that decodes UTF-8 but keeps invalid bytes (as surrogates) so they are rejected, not fatal."""
    url = config.redis_url
    try:
        client = redis.Redis.from_url(url, decode_responses=True, encoding_errors="surrogateescape",
                                      socket_connect_timeout=5, socket_timeout=120)
        client.ping()
    except redis.AuthenticationError:
        raise ConnectionProblem(f"Redis at {_where(url, 6379)} rejected the password in REDIS_URL.") from None
    except redis.ConnectionError as exc:
        raise ConnectionProblem(
            f"cannot connect to Redis at {_where(url, 6379)} ({first_line(exc)}): is it running? Start it "
            "(e.g. `redis-server --daemonize yes`, or `sudo systemctl start redis-server`) or fix REDIS_URL "
            f"({redact_url(url)}).") from None
    except redis.ResponseError as exc:
        raise ConnectionProblem(f"Redis at {_where(url, 6379)} refused us: {first_line(exc)}") from None
    except ValueError as exc:
        raise ConnectionProblem(f"REDIS_URL is not a valid Redis URL ({redact_url(url)}): {exc}") from None
    return client
