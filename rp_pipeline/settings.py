"""Sync configuration: one place for every knob, read from the environment or given directly.

URLs are normalised here (a plain ``postgresql://`` means psycopg 3) and redacted
here: nothing else in the package formats a URL for humans.
"""

from __future__ import annotations

import os
import re
from dataclasses import MISSING, dataclass, field, fields, replace
from urllib.parse import parse_qsl, quote, unquote

from .entities import BY_NAME, ENTITIES
from .errors import UserFacingError

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_KEY_PREFIX = "aidb:"
DEFAULT_INTERVAL_SECONDS = 300
CONFLICT_POLICIES = ("skip", "overwrite", "merge")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class ConfigError(UserFacingError, ValueError):
    """Configuration that cannot work; the message says what to change."""


# Every setting read from the environment: variable → SyncConfig field, and how its text is read.
# The Dagster resource (resources.py) is a view of these same variables; nothing else parses them.
NUMBER_SETTINGS = (
    ("SYNC_INTERVAL", "interval_seconds", float),
    ("SYNC_BACKLOG_TRIGGER", "backlog_trigger", lambda text: int(float(text))),  # 1e5 too
    ("SYNC_PENDING_MAX_AGE", "pending_max_age_seconds", float),
    ("SYNC_CHUNK_SIZE", "chunk_size", int),
    ("SYNC_MEMORY_BUDGET_MB", "memory_budget_mb", float),
    ("SYNC_STATEMENT_TIMEOUT_MS", "statement_timeout_ms", int),
    ("SYNC_LOCK_TIMEOUT_MS", "lock_timeout_ms", int),
    ("SYNC_METRIC_RESCAN_SECONDS", "metric_rescan_seconds", float),
)
TEXT_SETTINGS = (
    ("POSTGRES_URL", "postgres_url"),
    ("REDIS_URL", "redis_url"),
    ("REDIS_KEY_PREFIX", "key_prefix"),
    ("POSTGRES_SCHEMA", "schema"),
    ("SYNC_SCHEMA", "sync_schema"),
    ("SYNC_SOURCE", "source"),
)
MAPPING_SETTINGS = (
    ("SYNC_CONFLICT_POLICY", "conflict"),
    ("SYNC_RETENTION_HOURS", "retention_hours"),
)
ENVIRONMENT_VARIABLES = tuple(
    name for name, *_ in (*TEXT_SETTINGS, *MAPPING_SETTINGS, *NUMBER_SETTINGS)
)


def setting(name: str, env: dict[str, str] | None = None):
    """One variable read by its rule (the environment's value, else SyncConfig's default)."""
    env = os.environ if env is None else env
    for variable, attribute, cast in NUMBER_SETTINGS:
        if variable == name:
            raw = env.get(name)
            return _number(raw, name, cast) if raw else SYNC_DEFAULTS[attribute]
    raise KeyError(name)


def schedule_interval_seconds(env: dict[str, str] | None = None) -> int:
    """SYNC_INTERVAL as a schedule needs it: whole seconds, at least 60 (a schedule ticks once a minute)."""
    seconds = int(setting("SYNC_INTERVAL", env))
    if seconds < 60:
        raise ConfigError(
            f"SYNC_INTERVAL must be at least 60 seconds (a schedule ticks once a minute), got {seconds}"
        )
    return seconds


@dataclass(frozen=True)
class SourceConfig:
    """One Redis data set to sync: a URL for redis-py (without our options) and a key prefix.

    `label` names it wherever one source is told from another: the Dagster partition key, the
    run tag `rp_pipeline/source`, the CLI's --source and the API's `sources=`.
    """

    label: str
    redis_url: str
    key_prefix: str


@dataclass(frozen=True)
class SyncConfig:
    """Everything one sync cycle needs to know. Plain data, safe to log via ``describe()``.

    `redis_url` may name several sources (REDIS_URL with URLs separated by commas); the engine
    runs with one: `for_source(label)`.
    """

    postgres_url: str | None = None
    # One Redis URL, or several separated by commas, each optionally with ?key_prefix=...&label=...
    redis_url: str = DEFAULT_REDIS_URL
    # The key prefix of a source whose URL names none.
    key_prefix: str = DEFAULT_KEY_PREFIX
    # Analytics tables.
    schema: str = "public"
    # Bookkeeping: watermarks, id map, rejected records, history.
    sync_schema: str = "rp_sync"
    # SYNC_SOURCE: a label for this Redis in rp_sync.sources, never its identity.
    source: str | None = None
    # Entity -> skip | overwrite | merge.
    conflict: dict[str, str] = field(default_factory=dict)
    # A child waits this long for its parent, then is rejected.
    pending_max_age_seconds: float = 3600.0
    # Records per chunk at most; the memory budget may close a chunk sooner.
    chunk_size: int = 10_000
    # What one sync holds in flight: chunks being read, prepared and loaded.
    memory_budget_mb: float = 256.0
    statement_timeout_ms: int = 300_000
    lock_timeout_ms: int = 60_000
    # A full SCAN for new metric series at least this often.
    metric_rescan_seconds: float = 3600.0
    # Entity -> delete from Redis this many hours after it synced.
    retention_hours: dict[str, float] = field(default_factory=dict)
    # Seconds between syncs (the schedule, the CLI's continuous mode).
    interval_seconds: float = float(DEFAULT_INTERVAL_SECONDS)
    # Records waiting in Redis above which the backlog sensor starts a sync early.
    backlog_trigger: int = 100_000
    # The partition key of a single source whose URL names none (set by `for_source`).
    label: str | None = None

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
        if self.retention_hours:
            # Which entities can expire is their read strategy's to say (imported here: the
            # strategies need this module).
            from .strategies import strategy_of

            expiring = [spec.name for spec in ENTITIES if strategy_of(spec).expires(spec)]
            for entity in self.retention_hours:
                if entity not in expiring:
                    raise ConfigError(
                        f"retention is supported for {' and '.join(expiring)}, not {entity!r}"
                    )
        if self.chunk_size < 1:
            raise ConfigError("chunk size must be at least 1")
        if not self.memory_budget_mb > 0:
            raise ConfigError(
                f"the memory budget must be a positive number of MB, not {self.memory_budget_mb!r}"
            )
        if not self.interval_seconds > 0:
            raise ConfigError(
                f"the interval must be a positive number of seconds, got {self.interval_seconds:g}"
            )
        sources = parse_sources(self.redis_url, self.key_prefix, self.label)
        if len(sources) == 1:  # the engine's form: a URL redis-py reads, the prefix beside it
            (only,) = sources
            object.__setattr__(self, "redis_url", only.redis_url)
            object.__setattr__(self, "key_prefix", only.key_prefix)
            if only.label != default_label(only.redis_url, only.key_prefix):
                object.__setattr__(self, "label", only.label)
        else:
            object.__setattr__(
                self, "redis_url", ",".join(source_url(s, self.key_prefix) for s in sources)
            )
        object.__setattr__(self, "_sources", sources)

    @property
    def sources(self) -> tuple[SourceConfig, ...]:
        """The Redis data sets this configuration syncs, in the order REDIS_URL names them."""
        return self._sources

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(s.label for s in self.sources)

    def for_source(self, label: str | None = None) -> SyncConfig:
        """The configuration of one source, as the engine runs with it (None: the only source)."""
        if label is None:
            if len(self.sources) > 1:
                raise ConfigError(
                    f"REDIS_URL names {len(self.sources)} sources ({', '.join(self.labels)}): "
                    "say which one to use"
                )
            label = self.sources[0].label
        chosen = self.select_sources([label])[0]
        if len(self.sources) == 1:
            return self
        return replace(
            self,
            redis_url=chosen.redis_url,
            key_prefix=chosen.key_prefix,
            label=chosen.label,
            source=chosen.label,
        )

    def select_sources(self, labels=None) -> tuple[SourceConfig, ...]:
        """The sources named by `labels` (all of them for None); an unknown label is a ConfigError."""
        if labels is None:
            return self.sources
        by_label = {s.label: s for s in self.sources}
        unknown = [label for label in labels if label not in by_label]
        if unknown:
            raise ConfigError(
                f"unknown source {', '.join(map(repr, unknown))}; the sources in REDIS_URL are: "
                f"{', '.join(by_label)}"
            )
        return tuple(by_label[label] for label in dict.fromkeys(labels))

    def require_one_source(self) -> SourceConfig:
        """The one source a connection is opened to; several are a mistake in the caller."""
        if len(self.sources) != 1:
            raise ConfigError(
                f"REDIS_URL names {len(self.sources)} sources ({', '.join(self.labels)}): "
                "this reads one: set REDIS_URL to that source's URL alone"
            )
        return self.sources[0]

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
        """Build from REDIS_URL, POSTGRES_URL, REDIS_KEY_PREFIX, POSTGRES_SCHEMA and the SYNC_* variables."""
        env = os.environ if env is None else env
        values: dict = {}
        for name, attribute in TEXT_SETTINGS:
            raw = env.get(name)
            if raw or (name == "REDIS_KEY_PREFIX" and raw is not None):  # an empty prefix is one
                values[attribute] = raw
        for name, attribute in MAPPING_SETTINGS:
            mapping = parse_mapping(env.get(name, ""), name)
            if attribute == "retention_hours":
                mapping = {k: _number(v, name) for k, v in mapping.items()}
            values[attribute] = mapping
        for name, attribute, cast in NUMBER_SETTINGS:
            if env.get(name):
                values[attribute] = _number(env[name], name, cast)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The variables that configure this sync (the inverse of `from_env`), for the Dagster resource."""
        env = {
            name: str(getattr(self, attribute))
            for name, attribute in TEXT_SETTINGS
            if getattr(self, attribute) is not None
        }
        env["REDIS_URL"] = ",".join(source_url(s, self.key_prefix) for s in self.sources)
        for name, attribute in MAPPING_SETTINGS:
            env[name] = ",".join(f"{k}={v}" for k, v in getattr(self, attribute).items())
        for name, attribute, _ in NUMBER_SETTINGS:
            env[name] = repr(getattr(self, attribute))
        return env

    def describe(self) -> str:
        redis = "; ".join(
            f"{s.label}: {redact_url(s.redis_url)} (prefix {s.key_prefix!r})" for s in self.sources
        )
        if len(self.sources) == 1:
            redis = f"{redact_url(self.redis_url)} (prefix {self.key_prefix!r})"
        return (
            f"Redis {redis} → "
            f"Postgres {redact_url(self.postgres_url or '(not set)')} "
            f"(schema {self.schema}, bookkeeping {self.sync_schema})"
        )


SYNC_DEFAULTS = {f.name: f.default for f in fields(SyncConfig) if f.default is not MISSING}


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
# URL options that are the sync's, not redis-py's: removed before a URL reaches redis-py.
SOURCE_OPTIONS = ("key_prefix", "label")
_NEXT_URL = re.compile(r"\s*,\s*(?=(?:redis|rediss|unix)://)", re.I)
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def parse_sources(
    redis_url: str, key_prefix: str = DEFAULT_KEY_PREFIX, label: str | None = None
) -> tuple[SourceConfig, ...]:
    """REDIS_URL's sources: URLs separated by commas, each optionally with `?key_prefix=` (else
    `key_prefix`) and `?label=` (else host-port-db, plus the prefix when it is not the default).

    `label` names a lone source whose URL names none. Each URL is checked as one would be alone;
    two sources with one label, or the same Redis and prefix twice, are refused.
    """
    items = _NEXT_URL.split(redis_url.strip())
    if len(items) > 1 and not all(items):
        raise ConfigError(
            f"REDIS_URL has an empty item ({redact_url(redis_url)}): separate the sources' URLs "
            "with single commas"
        )
    sources, seen = [], {}
    for item in items:
        check_redis_url(item)
        plain, options = _split_source_options(item)
        prefix = options.get("key_prefix", key_prefix)
        name = options.get("label") or (label if len(items) == 1 else None)
        name = name or default_label(plain, prefix)
        if not _LABEL.match(name):
            raise ConfigError(
                f"REDIS_URL's label {name!r} is not a valid source label: use letters, digits, "
                f"'_', '.' and '-' ({redact_url(item)})"
            )
        parts = split_url(plain)
        where = (
            plain.partition("://")[0].lower(),
            parts.host,
            parts.port or 6379,
            parts.path or "0",
        )
        if (where, prefix) in seen:
            raise ConfigError(
                f"REDIS_URL names the same Redis and key prefix {prefix!r} twice ({seen[where, prefix]} "
                f"and {name}): remove one, or give one its own ?key_prefix=..."
            )
        if name in {s.label for s in sources}:
            raise ConfigError(
                f"REDIS_URL names two sources labelled {name!r}: give each its own "
                "(?label=... after its URL)"
            )
        seen[where, prefix] = name
        sources.append(SourceConfig(name, plain, prefix))
    return tuple(sources)


def _split_source_options(url: str) -> tuple[str, dict[str, str]]:
    """(the URL without key_prefix= and label=, those options). The query starts after the
    credentials, so a password holding '?' or '&' is never read as options."""
    at = url.rfind("@")
    head, tail = url[: at + 1], url[at + 1 :]
    location, sep, query = tail.partition("?")
    if not sep:
        return url, {}
    kept, options = [], {}
    for item in query.split("&"):
        pairs = parse_qsl(item, keep_blank_values=True)
        if pairs and pairs[0][0] in SOURCE_OPTIONS:
            options[pairs[0][0]] = pairs[0][1]
        elif item:
            kept.append(item)
    return head + location + ("?" + "&".join(kept) if kept else ""), options


def default_label(url: str, key_prefix: str) -> str:
    """host-port-db, and the prefix when it is not the default: readable, and a valid partition key."""
    parts = split_url(url)
    if url.lower().startswith("unix://"):
        db = dict(parse_qsl(url.rsplit("@", 1)[-1].partition("?")[2])).get("db", "0")
        where = f"unix-{parts.path.rsplit('/', 1)[-1] or 'socket'}-{db}"
    else:
        where = f"{parts.host}-{parts.port or 6379}-{parts.path or '0'}"
    if key_prefix != DEFAULT_KEY_PREFIX:
        where += f"-{key_prefix.rstrip(':') or 'noprefix'}"
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", where).strip("_.-")
    return label if label[:1].isalnum() else f"s{label}"


def source_url(source: SourceConfig, key_prefix: str) -> str:
    """The source as one item of REDIS_URL (the inverse of `parse_sources`)."""
    options = []
    if source.key_prefix != key_prefix:
        options.append(f"key_prefix={quote(source.key_prefix, safe=':/')}")
    if source.label != default_label(source.redis_url, source.key_prefix):
        options.append(f"label={source.label}")
    if not options:
        return source.redis_url
    glue = "&" if "?" in source.redis_url[source.redis_url.rfind("@") + 1 :] else "?"
    return source.redis_url + glue + "&".join(options)


def check_redis_url(url: str) -> None:
    """Refuse a Redis URL the sync would read wrongly, before anything connects.

    redis-py is lenient: it reads `redis://a:6379,b:6380/3` as db 0 on host a, and a path
    that is not a number as db 0, so the sync would load another database and exit 0.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in REDIS_SCHEMES:
        raise ConfigError(
            f"REDIS_URL must start with redis://, rediss:// or unix:// ({redact_url(url)}): "
            "write it as redis://[user:password@]host:port/db"
        )
    hostpart = rest[rest.rfind("@") + 1 :]
    if "://" in rest or "," in hostpart.partition("?")[0]:
        raise ConfigError(
            f"REDIS_URL holds more than one address in one URL ({redact_url(url)}): write each "
            "source as a whole URL, separated by commas (redis://a:6379/0,redis://b:6379/0); "
            "a Redis Cluster needs only one of its nodes: the sync finds the others"
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


def hide_passwords(text: str, urls) -> str:
    """`text` with the passwords of `urls` replaced by ***, as written in the URL and percent-decoded
    (as the drivers read them): for messages that may quote a driver's or server's words."""
    for url in urls:
        password = split_url(url).password if url else None
        for form in sorted(
            {password, unquote(password)} if password else (), key=len, reverse=True
        ):
            if form:
                text = text.replace(form, "***")
    return text


def psycopg_url(url: str) -> str:
    """A libpq URL for psycopg: SQLAlchemy-style driver suffixes removed."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", url)


def sqlalchemy_url(url: str) -> str:
    """An explicit psycopg 3 SQLAlchemy URL, whatever form the user wrote."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql+psycopg://", url)
