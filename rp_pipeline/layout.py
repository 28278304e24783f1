"""The aidb Redis layout, declared once: keys, hash fields and how values are encoded.

This is the layout existing applications write (docs: the Redis layout; /work/shared/spec/
redis-layout.md) and the one `RedisWriter` and the cache warm write; the extractor, retention
and `entities.py` read it from here. Every key is relative to the key prefix. No imports from
the package: everything else depends on this module, never the reverse.
"""

from __future__ import annotations

import json
import numbers
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

DEFAULT_PREFIX = "aidb:"

# The sync's own marker of the data set (a uuid set once with SET NX; a flush removes it).
GENERATION_KEY = "rp_pipeline:generation"


@dataclass(frozen=True)
class HashRecords:
    """An entity with ids: a counter allocates them, each record is a hash, an index lists them."""

    record: str  # key of one record; "{id}" is its id
    counter: str  # plain integer, INCR allocates the next id
    index: str  # sorted set of ids; "{parent}" = the record's first field (one index per parent)
    fields: tuple[str, ...]  # the hash's fields after `id`, in the order the writer writes them
    name_map: str | None = None  # hash: the first field's value → the latest id with it
    scored_by_time: bool = False  # index score is minus the Unix time of logging (else the id)

    @property
    def record_head(self) -> str:
        """The record key before its id ("model:")."""
        return self.record.partition("{id}")[0]

    @property
    def per_parent(self) -> bool:
        return "{parent}" in self.index


MODEL = HashRecords(
    record="model:{id}",
    counter="counter:model",
    index="idx:models",
    fields=(
        "name",
        "description",
        "architecture",
        "framework",
        "task_type",
        "input_shape",
        "output_shape",
        "created_at",
        "updated_at",
    ),
    name_map="model:name_to_id",  # NB: matches model:*, it is not a model
)
VERSION = HashRecords(
    record="version:{id}",
    counter="counter:version",
    index="idx:versions:{parent}",
    fields=("model_id", "version", "checkpoint_path", "config", "status", "created_at"),
)
DATASET = HashRecords(
    record="dataset:{id}",
    counter="counter:dataset",
    index="idx:datasets",
    fields=(
        "name",
        "description",
        "source_path",
        "format",
        "size_bytes",
        "num_samples",
        "split_info",
        "preprocessing",
        "created_at",
    ),
)
RUN = HashRecords(
    record="run:{id}",
    counter="counter:run",
    index="idx:runs",
    fields=(
        "model_version_id",
        "dataset_id",
        "run_name",
        "status",
        "started_at",
        "completed_at",
        "duration_seconds",
        "final_loss",
        "best_metric_value",
        "artifacts",
    ),
)
EXPERIMENT = HashRecords(
    record="experiment:{id}",
    counter="counter:experiment",
    index="idx:experiments",
    fields=("name", "description", "hypothesis", "status", "created_at", "completed_at", "results"),
)
PREDICTION = HashRecords(
    record="prediction:{id}",
    counter="counter:prediction",
    index="idx:predictions:{parent}",
    fields=(
        "model_version_id",
        "input",
        "output",
        "confidence",
        "inference_time_ms",
        "timestamp",
        "metadata",
    ),
    scored_by_time=True,
)

# The fields `update_training_run` may rewrite in place.
RUN_UPDATABLE = (
    "status",
    "completed_at",
    "duration_seconds",
    "final_loss",
    "best_metric_value",
    "artifacts",
)

# Hyperparameters: one hash per run, one field per parameter (name → str(value)).
HYPERPARAMS = "hyperparam:{id}"  # id: the run's
# Metric series: a sorted set per run, metric and split; each member a JSON point (fields below),
# scored by its epoch, else its step, else 0. Names and splits may contain ':': read them from
# the point, never from the key.
METRIC_SERIES = "metric:{id}:{metric_name}:{split}"  # id: the run's
METRIC_SERIES_HEAD = "metric:"  # every series key starts so; the run id follows
METRIC_POINT_FIELDS = ("epoch", "step", "metric_name", "metric_value", "split", "timestamp")
# Experiment membership: a hash per (experiment, run) pair and a set of run ids per experiment.
MEMBERSHIP = "exprun:{experiment_id}:{run_id}"
MEMBERSHIP_FIELDS = ("experiment_id", "training_run_id", "variant_name", "notes")
EXPERIMENT_RUN_SET = "exprun:{id}:runs"  # id: the experiment's

# -- encodings -----------------------------------------------------------------------------------
NOT_SET = "0"  # a run's numbers and a prediction's confidence/time before they are given
NO_PARENT = "0"  # a run's dataset_id when it has none

_JSON = json.JSONEncoder(default=str)  # same output as json.dumps(obj, default=str), built once


def encode_json(obj: Any) -> str:
    """A JSON field as the layout writes it (NaN and Infinity included, as Python writes them)."""
    return _JSON.encode(obj)


def wrapped(value: Any) -> dict:
    """A prediction's input or output: a non-dict x is stored as {"data": x}."""
    return value if isinstance(value, dict) else {"data": value}


def encode_scalar(value: Any) -> str:
    """A hash value as redis-py would store it (str, repr of numbers), numpy scalars included."""
    kind = type(value)
    if kind is str:
        return value
    if kind is int:
        return str(value)
    if kind is float:
        return repr(value)
    # numpy scalars repr as "np.float64(0.5)": store the plain number instead.
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return repr(float(value))
    return str(value)


def utc_now() -> str:
    """Naive UTC ISO-8601, as datetime.utcnow().isoformat() gives."""
    return datetime.now(timezone.utc).replace(tzinfo=None).isoformat()


def naive_utc(moment: datetime) -> datetime:
    """A timestamp as the layout holds it: naive, in UTC."""
    return moment if moment.tzinfo is None else moment.astimezone(timezone.utc).replace(tzinfo=None)
