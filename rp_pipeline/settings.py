"""Sync configuration: one place for every knob, read from the environment or given directly.

URLs are normalised here (a plain ``postgresql://`` means psycopg 3) and redacted
here: nothing else in the package formats a URL for humans.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from .entities import BY_NAME

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_KEY_PREFIX = "aidb:"
DEFAULT_INTERVAL_SECONDS = 300
CONFLICT_POLICIES = ("skip", "overwrite", "merge")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class ConfigError(ValueError):
    """Configuration that cannot work; the message says what to change."""


def interval_seconds() -> int:
    """SYNC_INTERVAL: seconds between scheduled syncs (default 300, at least 60: a schedule ticks once a minute)."""
    raw = os.environ.get("SYNC_INTERVAL", str(DEFAULT_INTERVAL_SECONDS))
    try:
        seconds = int(float(raw))
    except ValueError:
        raise ConfigError(f"SYNC_INTERVAL must be a number of seconds, got {raw!r}") from None
    if seconds < 60:
        raise ConfigError(
            f"SYNC_INTERVAL must be at least 60 seconds (a schedule ticks once a minute), got {seconds}"
        )
    return seconds


@dataclass(frozen=True)
class SyncConfig:
    """Everything one sync cycle needs to know. Plain data, safe to log via ``describe()``."""

    postgres_url: str | None = None
    redis_url: str = DEFAULT_REDIS_URL
    key_prefix: str = DEFAULT_KEY_PREFIX
    schema: str = "public"  # analytics tables
    sync_schema: str = "rp_sync"  # bookkeeping: watermarks, id map, rejected records, history
    source: str | None = (
        None  # SYNC_SOURCE: a label for this Redis in rp_sync.sources, never its identity
    )
    conflict: dict[str, str] = field(default_factory=dict)  # entity -> skip | overwrite | merge
    pending_max_age_seconds: float = (
        3600.0  # a child waits this long for its parent, then is rejected
    )
    chunk_size: int = (
        20_000  # records per chunk at most; the memory budget may close a chunk sooner
    )
    memory_budget_mb: float = (
        256.0  # what one sync holds in flight: chunks being read, prepared and loaded
    )
    statement_timeout_ms: int = 300_000
    lock_timeout_ms: int = 60_000
    metric_rescan_seconds: float = 3600.0  # full SCAN for new metric series at least this often
    retention_hours: dict[str, float] = field(
        default_factory=dict
    )  # entity -> delete from Redis after

    def __post_init__(self) -> None:
        for name in (self.schema, self.sync_schema):
            if not _IDENTIFIER.match(name):
                raise ConfigError(
                    f"schema name {name!r} is not a plain SQL identifier (letters, digits, _)"
                )
        if self.schema == self.sync_schema:
            raise ConfigError("the sync's bookkeeping schema must differ from the analytics schema")
        for entity, policy in self.conflict.items():
            if entity not in BY_NAME:
                raise ConfigError(
                    f"unknown entity {entity!r} in conflict policy; known: {', '.join(BY_NAME)}"
                )
            if policy not in CONFLICT_POLICIES:
                raise ConfigError(
                    f"conflict policy for {entity} must be one of {CONFLICT_POLICIES}, not {policy!r}"
                )
        for entity in self.retention_hours:
            if entity not in ("predictions", "metrics"):
                raise ConfigError(
                    f"retention is supported for predictions and metrics, not {entity!r}"
                )
        if self.chunk_size < 1:
            raise ConfigError("chunk size must be at least 1")
        check_redis_url(self.redis_url)
        if not self.memory_budget_mb > 0:
            raise ConfigError(
                f"the memory budget must be a positive number of MB, not {self.memory_budget_mb!r}"
            )

    @property
    def memory_budget_bytes(self) -> int:
        return int(self.memory_budget_mb * (1 << 20))

    @property
    def redis_address(self) -> str:
        """host:port/db/prefix of the Redis as this config reaches it, never credentials. For people only:
        the rows' origin is the data set itself (see `sources.py`), whatever address reached it."""
        parts = split_url(self.redis_url)
        return f"{parts.host}:{parts.port or 6379}/{parts.path or '0'}/{self.key_prefix}"

    def policy(self, entity: str) -> str:
        return self.conflict.get(entity, "skip")

    def require_postgres_url(self) -> str:
        if not self.postgres_url:
            raise ConfigError(
                "POSTGRES_URL is not set: export POSTGRES_URL=postgresql://USER:PASSWORD@HOST:5432/DATABASE "
                "(or put it in .env, or pass --postgres-url)"
            )
        return self.postgres_url

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides) -> SyncConfig:
        """Build from REDIS_URL, POSTGRES_URL, REDIS_KEY_PREFIX and the SYNC_* variables."""
        env = os.environ if env is None else env
        values: dict = {
            "postgres_url": env.get("POSTGRES_URL") or None,
            "redis_url": env.get("REDIS_URL") or DEFAULT_REDIS_URL,
            "key_prefix": env.get("REDIS_KEY_PREFIX", DEFAULT_KEY_PREFIX),
            "schema": env.get("POSTGRES_SCHEMA", "public"),
            "sync_schema": env.get("SYNC_SCHEMA", "rp_sync"),
            "source": env.get("SYNC_SOURCE") or None,
            "conflict": parse_mapping(env.get("SYNC_CONFLICT_POLICY", ""), "SYNC_CONFLICT_POLICY"),
            "retention_hours": {
                k: _number(v, "SYNC_RETENTION_HOURS")
                for k, v in parse_mapping(
                    env.get("SYNC_RETENTION_HOURS", ""), "SYNC_RETENTION_HOURS"
                ).items()
            },
        }
        for name, key, cast in (
            ("pending_max_age_seconds", "SYNC_PENDING_MAX_AGE", float),
            ("chunk_size", "SYNC_CHUNK_SIZE", int),
            ("memory_budget_mb", "SYNC_MEMORY_BUDGET_MB", float),
            ("statement_timeout_ms", "SYNC_STATEMENT_TIMEOUT_MS", int),
            ("lock_timeout_ms", "SYNC_LOCK_TIMEOUT_MS", int),
            ("metric_rescan_seconds", "SYNC_METRIC_RESCAN_SECONDS", float),
        ):
            if env.get(key):
                values[name] = _number(env[key], key, cast)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def describe(self) -> str:
        return (
            f"Redis {redact_url(self.redis_url)} (prefix {self.key_prefix!r}) → "
            f"Postgres {redact_url(self.postgres_url or '(not set)')} "
            f"(schema {self.schema}, bookkeeping {self.sync_schema})"
        )


def parse_mapping(text: str, what: str) -> dict[str, str]:
    """'predictions=24,metrics=72' → {'predictions': '24', 'metrics': '72'}."""
    result: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigError(
                f"{what}: expected entity=value pairs separated by commas, got {item!r}"
            )
        result[key.strip()] = value.strip()
    return result


def _number(value: str, what: str, cast=float):
    try:
        return cast(value)
    except ValueError:
        raise ConfigError(f"{what} must be a number, got {value!r}") from None


@dataclass(frozen=True)
class UrlParts:
    user: str | None
    password: str | None
    host: str
    port: int | None
    path: str  # database / db number, without the leading /


def split_url(url: str) -> UrlParts:
    """A server URL's parts, tolerant of what libpq and redis-py accept but urlsplit does not:
    the credentials end at the *last* '@', so a password may hold '#', '?' or '/'."""
    _, sep, rest = url.partition("://")
    if not sep:
        rest = url
    at = rest.rfind("@")
    userinfo, hostpart = (rest[:at], rest[at + 1 :]) if at >= 0 else ("", rest)
    user, colon, password = userinfo.partition(":")
    match = re.match(r"(\[[^\]]*\]|[^/?#:,]*)(?::(\d+))?[^/?#]*(?:/([^?#]*))?", hostpart)
    host, port, path = (
        (match.group(1), match.group(2), match.group(3)) if match else ("", None, None)
    )
    return UrlParts(
        user or None,
        password if colon else None,
        host.strip("[]") or "localhost",
        int(port) if port else None,
        path or "",
    )


REDIS_SCHEMES = ("redis", "rediss", "unix")


def check_redis_url(url: str) -> None:
    """Refuse a REDIS_URL the sync would read wrongly, before anything connects.

    redis-py is lenient: it reads `redis://a:6379/14,redis://b/3` as db 0 on host a, and a path
    that is not a number as db 0, so the sync would load another database and exit 0.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in REDIS_SCHEMES:
        raise ConfigError(
            f"REDIS_URL must start with redis://, rediss:// or unix:// ({redact_url(url)}): "
            "write it as redis://[user:password@]host:port/db"
        )
    hostpart = rest[rest.rfind("@") + 1 :]
    if "://" in rest or "," in hostpart:
        raise ConfigError(
            f"REDIS_URL holds more than one address ({redact_url(url)}): syncing several Redis "
            "sources at once is not supported yet; run one sync per source, each with one URL "
            "(a Redis Cluster needs only one of its nodes: the sync finds the others)"
        )
    location, _, query = hostpart.partition("?")
    dbs = [location.partition("/")[2]] if scheme.lower() != "unix" else []
    dbs += [value for name, value in parse_qsl(query) if name == "db"]
    db = next((d for d in dbs if d and not (d.isascii() and d.isdigit())), None)
    if db is not None:
        raise ConfigError(
            f"REDIS_URL's database {db!r} is not a number ({redact_url(url)}): write the db "
            "number after the port, e.g. redis://host:6379/0"
        )


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***, for logs, metadata and errors.

    Everything between the user's ':' and the last '@' is masked, so a password that
    holds URL delimiters is still hidden whole."""
    scheme, sep, rest = url.partition("://")
    at = rest.rfind("@")
    if not sep or at < 0 or ":" not in rest[:at]:
        return url
    user = rest[:at].partition(":")[0]
    return f"{scheme}://{user}:***@{rest[at + 1 :]}"


def psycopg_url(url: str) -> str:
    """A libpq URL for psycopg: SQLAlchemy-style driver suffixes removed."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", url)


def sqlalchemy_url(url: str) -> str:
    """An explicit psycopg 3 SQLAlchemy URL, whatever form the user wrote."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql+psycopg://", url)
