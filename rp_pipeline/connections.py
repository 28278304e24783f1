"""Opening Redis and Postgres connections, with errors that say what failed and what to do.

Messages name host:port and database, never a password.
"""

from __future__ import annotations

import os
import re
import ssl
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote

import psycopg
import redis
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException

from .entities import BY_NAME
from .errors import ConnectionProblem, PermissionProblem, first_line
from .layout import GENERATION_KEY, METRIC_SERIES_HEAD, PREDICTION
from .settings import (
    ConfigError,
    SyncConfig,
    hide_passwords,
    psycopg_url,
    redact_url,
    split_url,
)
from .writer import is_cluster_node


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
            return super().wait(
                gen, interval, timeout if timeout is not None else self.deadline_seconds
            )
        except psycopg.errors._WaitTimeout:  # raised by psycopg itself when the timeout passes
            self.stalled = True
            self.pgconn.finish()  # mid-protocol: the connection cannot be used again
            raise psycopg.OperationalError(
                f"Postgres did not answer within {self.deadline_seconds:g} s (client-side deadline)"
            ) from None


def connect_postgres(config: SyncConfig, *, autocommit: bool = True) -> psycopg.Connection:
    url = config.require_postgres_url()
    try:
        conn = WatchedConnection.connect(
            psycopg_url(url),
            autocommit=autocommit,
            connect_timeout=10,
            application_name="rp_pipeline",
            keepalives=1,
            keepalives_idle=30,
            keepalives_interval=10,
            keepalives_count=3,
        )
    except psycopg.OperationalError as exc:
        problem = PermissionProblem if "permission denied" in str(exc) else ConnectionProblem
        raise problem(explain_postgres_error(exc, url)) from None
    except psycopg.ProgrammingError:
        # libpq could not parse the URL; its message may quote part of the password: not repeated.
        raise ConnectionProblem(
            f"POSTGRES_URL is not a valid PostgreSQL URL ({redact_url(url)}): write it as "
            "postgresql://user:password@host:5432/database, with special characters in the password "
            "percent-encoded (e.g. / as %2F, ? as %3F, # as %23, % as %25)."
        ) from None
    # Well past the server's own statement timeout: only a server that stopped answering reaches it.
    conn.deadline_seconds = config.statement_timeout_ms / 1000 * 1.5 + 5
    return conn


def explain_postgres_error(exc: Exception, url: str) -> str:
    where = _where(url, 5432)
    parts = split_url(url)
    database = parts.path or "(default)"
    text = hide_passwords(str(exc), (url,))
    if "password authentication failed" in text or "no password supplied" in text:
        return (
            f"Postgres at {where} rejected the credentials for user {parts.user!r}: "
            "check the user and password in POSTGRES_URL."
        )
    if "does not exist" in text and "database" in text:
        return (
            f"Postgres at {where} has no database {database!r}: create it "
            f"(createdb -h {where.split(':')[0]} {database}) or fix POSTGRES_URL."
        )
    if "permission denied for database" in text:
        user = unquote(parts.user or "") or "(the sync's role)"
        return (
            f"Postgres at {where} refused role '{user}' the database {database!r} (no CONNECT privilege). "
            "Every cycle fails the same way until it is granted (as the owner or a superuser): "
            f'GRANT CONNECT, TEMPORARY ON DATABASE "{database}" TO "{user}" (README, Security: Postgres role).'
        )
    if "Connection refused" in text or "could not connect" in text or "timeout expired" in text:
        return (
            f"cannot connect to Postgres at {where} (connection refused): is it running? Start it "
            "(e.g. `sudo systemctl start postgresql`, or `pg_ctlcluster 15 main start`) or fix POSTGRES_URL "
            f"({redact_url(url)})."
        )
    return f"Postgres at {where} (database {database!r}): {text.splitlines()[0] if text else type(exc).__name__}"


REDIS_PING_TIMEOUT = (
    5.0  # a Redis that accepts connections but does not answer PING in this is not usable
)
REDIS_REPLY_TIMEOUT = 60.0  # the longest one pipelined batch may take to come back


def connect_redis(config: SyncConfig) -> redis.Redis:
    """A client that decodes UTF-8 but keeps invalid bytes (as surrogates) so they are rejected, not fatal."""
    url = config.require_one_source().redis_url
    try:
        options = dict(
            decode_responses=True,
            encoding_errors="surrogateescape",
            socket_connect_timeout=5,
            socket_keepalive=True,
        )
        with redis.Redis.from_url(url, socket_timeout=REDIS_PING_TIMEOUT, **options) as probe:
            probe.ping()
            cluster = is_cluster_node(probe)
            if cluster:
                _check_cluster_access(probe, config)
        if cluster:
            client = connect_cluster(config, options)
        else:
            client = redis.Redis.from_url(url, socket_timeout=REDIS_REPLY_TIMEOUT, **options)
    except redis.AuthenticationError:
        raise ConnectionProblem(
            f"Redis at {_where(url, 6379)} rejected the password in REDIS_URL."
        ) from None
    except redis.TimeoutError:
        raise ConnectionProblem(
            f"Redis at {_where(url, 6379)} accepted the connection but did not answer within "
            f"{REDIS_PING_TIMEOUT:g} s: is it overloaded, or is something else listening on that port? "
            f"Check REDIS_URL ({redact_url(url)})."
        ) from None
    except redis.ConnectionError as exc:
        tls_problem = explain_tls_error(exc, url)
        if tls_problem:
            raise ConnectionProblem(tls_problem) from None
        raise ConnectionProblem(
            f"cannot connect to Redis at {_where(url, 6379)} ({first_line(exc)}): is it running? Start it "
            "(e.g. `redis-server --daemonize yes`, or `sudo systemctl start redis-server`) or fix REDIS_URL "
            f"({redact_url(url)})."
        ) from None
    except redis.ResponseError as exc:
        if refused_by_acl(exc):
            raise PermissionProblem(explain_redis_refusal(exc, config, CONNECTION_ACCESS)) from None
        if "SELECT is not allowed in cluster mode" in str(exc):
            raise ConfigError(_cluster_has_one_db(url)) from None
        raise ConnectionProblem(
            f"Redis at {_where(url, 6379)} refused us: {first_line(exc)}"
        ) from None
    except ConfigError:
        raise
    except ValueError:
        # The parser's own message may quote part of the password: it is not repeated.
        raise ConnectionProblem(
            f"REDIS_URL is not a valid Redis URL ({redact_url(url)}): write it as "
            "redis://[user:password@]host:port/db, with special characters in the password percent-encoded "
            "(e.g. # as %23)."
        ) from None
    return client


def _check_cluster_access(probe: redis.Redis, config: SyncConfig) -> None:
    """CLUSTER SLOTS, as RedisCluster will send it, so a refusal by the ACL is named (redis-py reports it as
    "cluster mode is not enabled")."""
    try:
        probe.execute_command("CLUSTER SLOTS")
    except redis.ResponseError as exc:
        if refused_by_acl(exc):
            raise PermissionProblem(explain_redis_refusal(exc, config, CLUSTER_ACCESS)) from None
        raise


def connect_cluster(config: SyncConfig, options: dict) -> RedisCluster:
    """A RedisCluster client from the same URL: it discovers every node (CLUSTER SLOTS) and follows
    MOVED/ASK redirects itself; TLS and the ACL user in the URL apply to every node."""
    url = config.redis_url
    if split_url(url).path not in ("", "0"):
        raise ConfigError(_cluster_has_one_db(url))
    try:
        return RedisCluster.from_url(url, socket_timeout=REDIS_REPLY_TIMEOUT, **options)
    except RedisClusterException as exc:
        if "NOPERM" in str(exc) or "no permissions" in str(exc):
            raise PermissionProblem(explain_redis_refusal(exc, config, CLUSTER_ACCESS)) from None
        raise ConnectionProblem(
            f"cannot read the node map of the Redis Cluster at {_where(url, 6379)} "
            f"({first_line(exc)}): check that every node is reachable from here."
        ) from None


def _cluster_has_one_db(url: str) -> str:
    return (
        f"REDIS_URL names a database other than 0 on a Redis Cluster node ({redact_url(url)}): a cluster has "
        "only database 0; remove the /db from the URL."
    )


TLS_FILE_PARAMETERS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_ca_path")


def explain_tls_error(exc: redis.ConnectionError, url: str) -> str | None:
    """One line for a TLS setup that failed (wrong CA, missing file, client certificate), else None."""
    if not url.startswith("rediss://"):
        return None
    where, cause = _where(url, 6379), exc.__cause__ or exc.__context__
    query = parse_qs(
        url.rsplit("@", 1)[-1].partition("?")[2]
    )  # after the credentials: never the password
    missing = [
        f"{name}={query[name][0]}"
        for name in TLS_FILE_PARAMETERS
        if name in query and not os.path.exists(query[name][0])
    ]
    if missing:
        return (
            f"REDIS_URL names a TLS file that does not exist: {', '.join(missing)}; fix the path "
            f"({redact_url(url)})."
        )
    if isinstance(cause, ssl.SSLCertVerificationError):
        return (
            f"Redis at {where} presented a TLS certificate this client does not trust ({cause.verify_message}): "
            "set ssl_ca_certs in REDIS_URL to the CA file that signed the server's certificate, e.g. "
            f"rediss://{where}/0?ssl_ca_certs=/path/to/ca.crt ({redact_url(url)})."
        )
    if isinstance(cause, (ssl.SSLEOFError, ConnectionResetError)) or "CERTIFICATE_REQUIRED" in str(
        cause
    ):
        return (
            f"Redis at {where} closed the TLS connection during setup: if it requires a client certificate "
            "(tls-auth-clients yes), add ssl_certfile=/path/client.crt&ssl_keyfile=/path/client.key to "
            f"REDIS_URL ({redact_url(url)})."
        )
    if isinstance(cause, ssl.SSLError):
        return (
            f"TLS setup with Redis at {where} failed ({first_line(cause)}): check ssl_certfile, ssl_keyfile and "
            f"ssl_ca_certs in REDIS_URL ({redact_url(url)})."
        )
    return None


# -- permissions: configuration problems, explained with the grant that fixes them ---------------------


@dataclass(frozen=True)
class RedisAccess:
    """Something the sync does in Redis, and the ACL rules that allow it (README, Security)."""

    commands: str  # what the sync runs, as named in the message when Redis does not name it
    keys: str  # the key pattern, with {prefix}
    rules: str  # the ACL SETUSER rules that allow it, with {prefix}
    purpose: str


CONNECTION_ACCESS = RedisAccess("PING", "(no key)", "+@connection", "connection check")
# The ACL patterns below are built from the layout, so a key that moves there moves here too.
_MARKER_KEYS = "{prefix}" + GENERATION_KEY.rpartition(":")[0] + ":*"
MARKER_ACCESS = RedisAccess(
    "SET",
    _MARKER_KEYS,
    f"+set %RW~{_MARKER_KEYS}",
    "the sync's generation marker {prefix}" + GENERATION_KEY,
)
CLUSTER_ACCESS = RedisAccess(
    "CLUSTER SLOTS", "(no key)", "+cluster|slots", "finding the nodes of a Redis Cluster"
)
READ_ACCESS = RedisAccess(
    "GET/ZRANGE/HMGET/HGETALL/SMEMBERS/ZCARD/SCAN",
    "{prefix}*",
    "+@read %R~{prefix}*",
    "reading the layout",
)
# What retention deletes: prediction hashes, their per-model-version indexes, metric series.
_RETENTION_KEYS = tuple(
    "{prefix}" + head + "*"
    for head in (
        PREDICTION.record_head,
        PREDICTION.index.partition("{parent}")[0],
        METRIC_SERIES_HEAD,
    )
)
RETENTION_ACCESS = RedisAccess(
    "EVALSHA/ZREM",
    ", ".join(_RETENTION_KEYS),
    "+evalsha +script|load +script|exists +del +zrem "
    + " ".join(f"%RW~{keys}" for keys in _RETENTION_KEYS),
    "retention (SYNC_RETENTION_HOURS) deleting synced records",
)


def refused_by_acl(exc: BaseException) -> bool:
    """A Redis ACL refusal: NOPERM, or a command refused inside a script (Redis < 7.2 sends no NOPERM code then)."""
    text = str(exc)
    return isinstance(exc, redis.exceptions.NoPermissionError) or (
        isinstance(exc, redis.ResponseError)
        and ("NOPERM" in text or "no permissions to" in text or "can't run this command" in text)
    )


def explain_redis_refusal(exc: BaseException, config: SyncConfig, access: RedisAccess) -> str:
    """One line: the command refused, the key pattern, and the ACL rule that allows it."""
    user = unquote(split_url(config.redis_url).user or "") or "default"
    named = re.search(r"run the '([^']+)' command", str(exc))
    command = named.group(1).upper() if named else access.commands
    prefix = config.key_prefix
    return (
        f"Redis at {_where(config.redis_url, 6379)} refused user '{user}' {command} on "
        f"{access.keys.format(prefix=prefix)} ({access.purpose.format(prefix=prefix)}: {first_line(exc)}). "
        f"Every cycle fails the same way until it is allowed: ACL SETUSER {user} "
        f"{access.rules.format(prefix=prefix)} (README, Security: Redis ACL)."
    )


# Postgres refusals → the README role section's grant that fixes each.
_POSTGRES_GRANTS = (
    (
        r"permission denied to create temporary tables",
        "GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {user}",
    ),
    (
        r"permission denied for database",
        "GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {user}; and create the "
        "schemas as the owner (CREATE SCHEMA {sync_schema} AUTHORIZATION {user})",
    ),
    (
        r'permission denied for schema "?{sync_schema_re}"?$',
        "ALTER SCHEMA {sync_schema} OWNER TO {user}",
    ),
    (r"permission denied for schema", "GRANT USAGE, CREATE ON SCHEMA {schema} TO {user}"),
    (
        r"must be owner of \w+ (\S+)",
        "ALTER TABLE {schema}.{object} OWNER TO {user} (or run the first sync once as the owner)",
    ),
    (
        r"permission denied for (?:table|relation|sequence) (\S+)",
        "GRANT {table_rights} ON ALL TABLES IN SCHEMA {table_schema} TO {user}",
    ),
)


def explain_postgres_refusal(
    exc: BaseException, config: SyncConfig, user: str | None = None, database: str | None = None
) -> str:
    """One line: what Postgres refused and the README's grant that allows it (run as the owner or a superuser)."""
    url = config.require_postgres_url()
    parts = split_url(url)
    text = first_line(exc)
    user = user or unquote(parts.user or "") or "(the sync's role)"
    names = {
        "user": _ident(user),
        "db": _ident(database or parts.path or "postgres"),
        "schema": _ident(config.schema),
        "sync_schema": _ident(config.sync_schema),
        "sync_schema_re": re.escape(config.sync_schema),
    }
    grant = "the role section's grants"
    for pattern, template in _POSTGRES_GRANTS:
        found = re.search(pattern.format(**names), text)
        if found:
            name = found.group(1).strip('"') if found.groups() else ""
            # The nine tables are the analytics schema's; any other is the sync's bookkeeping (rows deleted too).
            analytics = name in BY_NAME
            grant = template.format(
                **names,
                object=_ident(name),
                table_schema=names["schema"] if analytics else names["sync_schema"],
                table_rights="SELECT, INSERT, UPDATE" + ("" if analytics else ", DELETE"),
            )
            break
    return (
        f"Postgres at {_where(url, 5432)} refused role '{user}': {text}. Every cycle fails the same way until "
        f"it is granted (as the owner or a superuser): {grant} (README, Security: Postgres role)."
    )


def _ident(name: str) -> str:
    return '"' + name.strip('"').replace('"', '""') + '"'
