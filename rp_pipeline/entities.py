"""The nine entities of the aidb Redis layout, declared once as data.

Everything that differs between entities lives here: where their records are in
Redis, which fields map to which Postgres columns and types, their identity
(natural key) and their parents. One extractor, one mapper and one loader serve
all of them; a tenth entity is one more `EntitySpec`, plus the schema revision
that creates its table (docs/architecture.md, "Adding a tenth entity").
"""

from __future__ import annotations

from dataclasses import dataclass

from . import layout
from .layout import HashRecords

# How records are found in Redis: each name is one `ReadStrategy` object (strategies.py).
HASH_BY_ID = "hash_by_id"  # {key}:{id} hashes, ids from the counter and the index
PARAMS_PER_RUN = "params_per_run"  # one hash per run, one row per field
METRIC_SERIES = "metric_series"  # sorted sets of JSON members, found by SCAN
MEMBERS_PER_EXPERIMENT = (
    "members_per_experiment"  # a set of run ids per experiment, a hash per pair
)

# Column types, as Postgres names them.
TEXT, BIGINT, FLOAT, JSONB, TIMESTAMPTZ = (
    "text",
    "bigint",
    "double precision",
    "jsonb",
    "timestamptz",
)


@dataclass(frozen=True)
class Column:
    """One Postgres column and the Redis field it comes from."""

    name: str
    type: str = TEXT
    field: str | None = None  # Redis field; defaults to the column name
    unset: str | None = None  # raw value that means "not set" (NULL) besides ''
    required: bool = False  # a record without it is rejected

    @property
    def redis_field(self) -> str:
        return self.field or self.name


@dataclass(frozen=True)
class Parent:
    """A foreign key, mapped from a Redis id to a Postgres id through the id map."""

    column: str  # Postgres column, e.g. model_id
    entity: str  # parent entity name, e.g. "models"
    field: str  # Redis field holding the parent's Redis id
    optional: bool = False  # '' or '0' means "no parent" (dataset_id)


@dataclass(frozen=True, kw_only=True)
class EntitySpec:
    name: str  # asset name and Postgres table
    stat: str  # the guide's statistics counter it adds to
    label: str  # for log lines: "Model synced: ..."
    strategy: str  # how its records are found (strategies.py)
    columns: tuple[Column, ...]
    natural_key: tuple[str, ...]  # the columns that identify a row (nullable: NULL = NULL)
    # Where its records are, relative to the key prefix: an entity with ids (HASH_BY_ID) gives its
    # layout (`records`), which fills key, counter and index; any other gives `key`.
    records: HashRecords | None = None
    key: str = ""  # record key pattern
    counter: str | None = None  # counter key allocating ids (HASH_BY_ID)
    index: str | None = None  # sorted set of ids (HASH_BY_ID), when there is a single one
    parents: tuple[Parent, ...] = ()
    by_origin: bool = False  # identity includes origin_source (runs, predictions, metrics)
    incremental: bool = False  # read only ids past the watermark (predictions)
    mutable: bool = True  # records can change in Redis: upsert updates them
    log_each: bool = False  # one log line per synced record
    display: str = "name"  # column shown in per-record log lines
    retention_field: str | None = None  # timestamp column used by the retention policy

    def __post_init__(self):
        if self.records:
            records, set_ = self.records, object.__setattr__
            set_(self, "key", self.key or records.record)
            set_(self, "counter", self.counter or records.counter)
            set_(self, "index", self.index or (None if records.per_parent else records.index))

    @property
    def key_where(self) -> str | None:
        """Predicate of the partial unique index for origin-identified rows."""
        return "origin_source IS NOT NULL" if self.by_origin else None

    def key_is_nullable(self, name: str) -> bool:
        return any(c.name == name and not c.required for c in self.columns)

    @property
    def identity_sql(self) -> list[str]:
        """The identity as SQL expressions: what the unique index, ON CONFLICT and DISTINCT ON use."""
        return [
            f"COALESCE({sql_name(k)}, -1)" if self.key_is_nullable(k) else sql_name(k)
            for k in self.natural_key
        ]

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


def sql_name(name: str) -> str:
    """A quoted SQL identifier ("timestamp" is a keyword)."""
    return '"' + name.replace('"', '""') + '"'


C = Column

MODELS = EntitySpec(
    name="models",
    stat="models",
    label="Model",
    strategy=HASH_BY_ID,
    records=layout.MODEL,
    columns=(
        C("name", required=True),
        C("description"),
        C("architecture"),
        C("framework"),
        C("task_type"),
        C("input_shape"),
        C("output_shape"),
        C("created_at", TIMESTAMPTZ),
        C("updated_at", TIMESTAMPTZ),
    ),
    natural_key=("name",),
    log_each=True,
)

MODEL_VERSIONS = EntitySpec(
    name="model_versions",
    stat="versions",
    label="Version",
    strategy=HASH_BY_ID,
    records=layout.VERSION,
    columns=(
        C("version", required=True),
        C("checkpoint_path"),
        C("config", JSONB),
        C("status"),
        C("created_at", TIMESTAMPTZ),
    ),
    parents=(Parent("model_id", "models", "model_id"),),
    natural_key=("model_id", "version"),
    log_each=True,
    display="version",
)

DATASETS = EntitySpec(
    name="datasets",
    stat="datasets",
    label="Dataset",
    strategy=HASH_BY_ID,
    records=layout.DATASET,
    columns=(
        C("name", required=True),
        C("description"),
        C("source_path"),
        C("format"),
        C("size_bytes", BIGINT),
        C("num_samples", BIGINT),
        C("split_info", JSONB),
        C("preprocessing", JSONB),
        C("created_at", TIMESTAMPTZ),
    ),
    natural_key=("name",),
    log_each=True,
)

TRAINING_RUNS = EntitySpec(
    name="training_runs",
    stat="runs",
    label="Run",
    strategy=HASH_BY_ID,
    records=layout.RUN,
    columns=(
        C("run_name"),
        C("status"),
        C("started_at", TIMESTAMPTZ, required=True),
        C("completed_at", TIMESTAMPTZ),
        C("duration_seconds", FLOAT, unset=layout.NOT_SET),
        C("final_loss", FLOAT, unset=layout.NOT_SET),
        C("best_metric_value", FLOAT, unset=layout.NOT_SET),
        C("artifacts", JSONB),
    ),
    parents=(
        Parent("model_version_id", "model_versions", "model_version_id"),
        Parent("dataset_id", "datasets", "dataset_id", optional=True),
    ),
    natural_key=("origin_source", "origin_redis_id", "started_at"),
    by_origin=True,
    log_each=True,
    display="run_name",
)

HYPERPARAMETERS = EntitySpec(
    name="hyperparameters",
    stat="hyperparams",
    label="Hyperparameter",
    strategy=PARAMS_PER_RUN,
    key=layout.HYPERPARAMS,
    columns=(C("param_name", required=True), C("param_value")),
    parents=(Parent("training_run_id", "training_runs", "training_run_id"),),
    natural_key=("training_run_id", "param_name"),
)

METRICS = EntitySpec(
    name="metrics",
    stat="metrics",
    label="Metric",
    strategy=METRIC_SERIES,
    key=layout.METRIC_SERIES,
    columns=(
        C("epoch", BIGINT),
        C("step", BIGINT),
        C("metric_name", required=True),
        C("metric_value", FLOAT, required=True),
        C("split", required=True),
        C("timestamp", TIMESTAMPTZ, required=True),
    ),
    parents=(Parent("training_run_id", "training_runs", "training_run_id"),),
    natural_key=("training_run_id", "metric_name", "split", "epoch", "step", "timestamp"),
    by_origin=True,
    mutable=False,
    retention_field="timestamp",
)

EXPERIMENTS = EntitySpec(
    name="experiments",
    stat="experiments",
    label="Experiment",
    strategy=HASH_BY_ID,
    records=layout.EXPERIMENT,
    columns=(
        C("name", required=True),
        C("description"),
        C("hypothesis"),
        C("status"),
        C("created_at", TIMESTAMPTZ),
        C("completed_at", TIMESTAMPTZ),
        C("results", JSONB),
    ),
    natural_key=("name",),
    log_each=True,
)

EXPERIMENT_RUNS = EntitySpec(
    name="experiment_runs",
    stat="experiment_runs",
    label="Experiment run",
    strategy=MEMBERS_PER_EXPERIMENT,
    key=layout.MEMBERSHIP,
    columns=(C("variant_name"), C("notes")),
    parents=(
        Parent("experiment_id", "experiments", "experiment_id"),
        Parent("training_run_id", "training_runs", "training_run_id"),
    ),
    natural_key=("experiment_id", "training_run_id"),
)

PREDICTIONS = EntitySpec(
    name="predictions",
    stat="predictions",
    label="Prediction",
    strategy=HASH_BY_ID,
    records=layout.PREDICTION,
    columns=(
        C("input_data", JSONB, field="input"),
        C("output_data", JSONB, field="output"),
        C("confidence", FLOAT, unset=layout.NOT_SET),
        C("inference_time_ms", FLOAT, unset=layout.NOT_SET),
        C("timestamp", TIMESTAMPTZ, required=True),
        C("metadata", JSONB),
    ),
    parents=(Parent("model_version_id", "model_versions", "model_version_id"),),
    natural_key=("origin_source", "origin_redis_id", "timestamp"),
    by_origin=True,
    incremental=True,
    mutable=False,
    retention_field="timestamp",
)

# In dependency order: every parent comes before its children.
ENTITIES: tuple[EntitySpec, ...] = (
    MODELS,
    DATASETS,
    EXPERIMENTS,
    MODEL_VERSIONS,
    TRAINING_RUNS,
    HYPERPARAMETERS,
    METRICS,
    EXPERIMENT_RUNS,
    PREDICTIONS,
)
BY_NAME: dict[str, EntitySpec] = {spec.name: spec for spec in ENTITIES}

# Entities that other entities point at: their loads also record Redis id → Postgres id.
PARENT_ENTITIES = frozenset(p.entity for spec in ENTITIES for p in spec.parents)

# The guide's statistics keys (docs/architecture.md, "The guide"), in its order (experiment_runs
# is ours, reported after them).
STAT_KEYS = (
    "models",
    "versions",
    "datasets",
    "runs",
    "hyperparams",
    "metrics",
    "experiments",
    "predictions",
    "errors",
)
