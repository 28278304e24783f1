"""The hot-path Redis client: writes the "aidb" layout (docs/redis-layout.md) atomically.

The layout's keys, fields and encodings are declared once, in `layout.py`.

Method and parameter names are those of the old Redis adapter, so applications
can switch writers without changes, and the keys, fields and string values are
the ones it writes, so old and new writers can share one Redis. Unlike the old
adapter, every record is written in one round trip by one Lua script that
allocates the id, writes the hash and adds it to its index: no reader ever sees
a counter ahead of the records that exist.

Redis ACL (README, Security). The writer runs EVALSHA of its two scripts (SCRIPT LOAD the
first time; inside them INCRBY, HSET, ZADD, EXISTS), HSET (hyperparameters), ZADD (metric
points), MULTI/HSET/SADD/EXEC (experiment membership), EXISTS (update_training_run without
fields) and, for get_statistics only, ZCARD, GET, ZRANGE, HGET. It writes under the key prefix
only: counter:*, model:*, model:name_to_id, version:*, dataset:*, run:*, experiment:*,
prediction:*, idx:*, hyperparam:*, metric:*, exprun:*; never the sync's rp_pipeline:* keys.

On a Redis Cluster (`from_url` asks the server; or pass a `RedisCluster`) a record's counter,
hash and index live in different slots, which no script can write together. There the writer
uses ordered single-key writes instead: INCRBY the counter (ids allocated), then HSET every hash,
then ZADD the index entries (and the name map). A reader may see a counter ahead of its records,
as with the old adapter, and the sync waits for such an id ("allocated, not written yet"); an
index entry never names a hash not written yet. Membership is HSET, then SADD (no MULTI across
slots). On a cluster its ACL user needs +cluster|slots as well (the rules below cover the rest).

    ACL SETUSER rp_writer reset on >CHANGE-ME %RW~aidb:* +@connection +evalsha +script|load +incrby +hset +zadd +exists +sadd +multi +exec +get +zcard +zrange +hget
"""

from __future__ import annotations

import codecs
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timezone
from itertools import islice
from typing import Any

import hiredis
import redis
from redis.cluster import RedisCluster

from . import layout
from .layout import (
    EXPERIMENT,
    MODEL,
    PREDICTION,
    RUN,
    VERSION,
    HashRecords,
    encode_json,
    encode_scalar,
    naive_utc,
    utc_now,
)

# One script serves every entity and both single and batch writes. Per call:
#   KEYS[1]         the id counter
#   KEYS[2..n+1]    the index (sorted set) of each record
#   KEYS[n+2]       optional name map (hash: value of field #map_at -> id)
#   ARGV            record key prefix, n, field count f, map_at (0 = no map),
#                   f field names, then per record: index score ('' = the id)
#                   and f values.
# The record keys derive from the id allocated inside the script, so they
# cannot be declared in KEYS; that is fine on a standalone Redis, which is all
# the aidb layout (keys without hash tags) can live on anyway.
_INSERT_RECORDS = """
local prefix, n, f, map_at = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local first = redis.call('INCRBY', KEYS[1], n) - n + 1
local pos = 4 + f
local hash = {'id', 0}
for j = 1, f do hash[2 * j + 1] = ARGV[4 + j] end
for i = 0, n - 1 do
  local id = first + i
  local score = ARGV[pos + 1]
  if score == '' then score = id end
  hash[2] = id
  for j = 1, f do hash[2 * j + 2] = ARGV[pos + 1 + j] end
  redis.call('HSET', prefix .. id, unpack(hash))
  redis.call('ZADD', KEYS[2 + i], score, id)
  if map_at > 0 then redis.call('HSET', KEYS[n + 2], ARGV[pos + 1 + map_at], id) end
  pos = pos + 1 + f
end
return first
"""

# Rewrites fields of an existing hash only: an update racing a FLUSHDB or an
# expiry must not leave behind a partial record (e.g. a run without model_version_id).
_UPDATE_EXISTING = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""

# A batch is written as chunks of this many records, one atomic script call each,
# so that Redis is never blocked by one huge script.
BATCH_CHUNK = 1000


class RedisWriter:
    """Writes models, runs, metrics, predictions... into Redis in the aidb layout."""

    def __init__(self, client: redis.Redis, key_prefix: str = layout.DEFAULT_PREFIX):
        self.client = client
        self.key_prefix = key_prefix
        self.on_cluster = isinstance(
            client, RedisCluster
        )  # ordered single-key writes, see the module docstring
        self._insert = client.register_script(_INSERT_RECORDS)
        self._update = client.register_script(_UPDATE_EXISTING)
        # The constant head of the script's ARGV, per entity.
        self._heads = {
            entity: [
                key_prefix + entity.record_head,
                None,  # n, filled per call
                len(entity.fields),
                1 if entity.name_map else 0,
                *entity.fields,
            ]
            for entity in (MODEL, VERSION, layout.DATASET, RUN, EXPERIMENT, PREDICTION)
        }

    @classmethod
    def from_url(cls, url: str, key_prefix: str = layout.DEFAULT_PREFIX) -> RedisWriter:
        """A writer with its own connection pool to `url` (e.g. redis://host:6379/0); a Redis Cluster
        node's URL gives a cluster client (every node found from it)."""
        client = redis.Redis.from_url(url, decode_responses=True)
        if is_cluster_node(client):
            client.close()
            client = RedisCluster.from_url(url, decode_responses=True)
        return cls(client, key_prefix)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> RedisWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- entities with an id -------------------------------------------------

    def create_model(
        self,
        name: str,
        description: str = "",
        architecture: str = "",
        framework: str = "",
        task_type: str = "",
        input_shape: str = "",
        output_shape: str = "",
    ) -> int:
        """Register a model and point `model:name_to_id` at it; returns its id."""
        now = utc_now()
        values = (
            name,
            description,
            architecture,
            framework,
            task_type,
            input_shape,
            output_shape,
            now,
            now,
        )
        return self._insert_one(MODEL, values)

    def create_model_version(
        self,
        model_id: int,
        version: str,
        checkpoint_path: str = "",
        config: dict | None = None,
        status: str = "active",
    ) -> int:
        """Register a version of a model; returns its id. `status` defaults to "active", as in the old adapter."""
        values = (model_id, version, checkpoint_path, encode_json(config or {}), status, utc_now())
        return self._insert_one(VERSION, values, parent=model_id)

    def create_dataset(
        self,
        name: str,
        description: str = "",
        source_path: str = "",
        format: str = "",
        size_bytes: int = 0,
        num_samples: int = 0,
        split_info: dict | None = None,
        preprocessing: dict | None = None,
    ) -> int:
        """Register a dataset; returns its id."""
        values = (
            name,
            description,
            source_path,
            format,
            size_bytes,
            num_samples,
            encode_json(split_info or {}),
            encode_json(preprocessing or {}),
            utc_now(),
        )
        return self._insert_one(layout.DATASET, values)

    def create_training_run(
        self,
        model_version_id: int,
        dataset_id: int | None = None,
        run_name: str = "",
        status: str = "started",
    ) -> int:
        """Start a training run (completed_at '', numbers 0 until update_training_run); returns its id."""
        values = (
            model_version_id,
            dataset_id or 0,
            run_name,
            status,
            utc_now(),
            "",
            0,
            0,
            0,
            "{}",
        )
        return self._insert_one(RUN, values)

    def create_experiment(
        self,
        name: str,
        description: str = "",
        hypothesis: str = "",
        status: str = "active",
    ) -> int:
        """Register an experiment; returns its id. `status` defaults to "active", as in the old adapter."""
        values = (name, description, hypothesis, status, utc_now(), "", "{}")
        return self._insert_one(EXPERIMENT, values)

    def log_prediction(
        self,
        model_version_id: int,
        input_data: Any,
        output_data: Any,
        confidence: float | None = None,
        inference_time_ms: float | None = None,
        metadata: dict | None = None,
    ) -> int:
        """Log one prediction; returns its id."""
        score, timestamp = _logging_time()
        values = _prediction_values(
            model_version_id,
            input_data,
            output_data,
            confidence,
            inference_time_ms,
            metadata,
            timestamp,
        )
        return self._insert_one(PREDICTION, values, parent=model_version_id, score=score)

    def log_predictions(self, records: Iterable[Mapping[str, Any]]) -> list[int]:
        """Log many predictions (dicts of log_prediction's arguments); returns their ids in order.

        Each chunk of BATCH_CHUNK records is allocated and written by one atomic
        script call, so the counter is never ahead of the records here either.
        The next chunk is encoded and sent while Redis runs the one before: when Redis refuses a
        chunk (out of memory, an ACL), the error is raised, the chunks before it are written and
        so may be the one sent after it; each chunk is written whole or not at all.
        All records share one logging time.
        """
        score, timestamp = _logging_time()
        rows = (
            (
                record["model_version_id"],
                score,
                _prediction_values(
                    record["model_version_id"],
                    record["input_data"],
                    record["output_data"],
                    record.get("confidence"),
                    record.get("inference_time_ms"),
                    record.get("metadata"),
                    timestamp,
                ),
            )
            for record in records
        )
        return self._insert_chunks(PREDICTION, _chunked(rows, BATCH_CHUNK))

    # -- writes without an id ------------------------------------------------

    def update_training_run(
        self,
        run_id: int,
        status: str | None = None,
        completed_at: str | datetime | None = None,
        duration_seconds: float | None = None,
        final_loss: float | None = None,
        best_metric_value: float | None = None,
        artifacts: dict | None = None,
    ) -> bool:
        """Rewrite the given (not None) fields of an existing run; False if the run has no hash."""
        if isinstance(completed_at, datetime):
            completed_at = naive_utc(completed_at).isoformat()
        if artifacts is not None:
            artifacts = encode_json(artifacts)
        given = (status, completed_at, duration_seconds, final_loss, best_metric_value, artifacts)
        args = []
        for field, value in zip(layout.RUN_UPDATABLE, given):
            if value is not None:
                args += (field, encode_scalar(value))
        key = self._key(RUN.record.format(id=run_id))
        if not args:
            return bool(self.client.exists(key))
        return bool(self._update(keys=[key], args=args))

    def log_hyperparameters(self, training_run_id: int, params: Mapping[str, Any]) -> None:
        """Add or overwrite hyperparameters of a run, each stored as str(value)."""
        if params:
            self.client.hset(
                self._key(layout.HYPERPARAMS.format(id=training_run_id)),
                mapping={k: str(v) for k, v in params.items()},
            )

    def log_metric(
        self,
        training_run_id: int,
        metric_name: str,
        metric_value: float,
        epoch: int | None = None,
        step: int | None = None,
        split: str = "train",
    ) -> None:
        """Add one point to the run's metric series; its score is the epoch, else the step, else 0."""
        point = dict(
            zip(
                layout.METRIC_POINT_FIELDS,
                (epoch, step, metric_name, metric_value, split, utc_now()),
            )
        )
        score = epoch if epoch is not None else step if step is not None else 0
        self.client.zadd(
            self._key(
                layout.METRIC_SERIES.format(
                    id=training_run_id, metric_name=metric_name, split=split
                )
            ),
            {encode_json(point): score},
        )

    def add_experiment_run(
        self, experiment_id: int, training_run_id: int, variant_name: str = "", notes: str = ""
    ) -> None:
        """Make a run a member of an experiment (membership hash and run set, in one transaction)."""
        values = (experiment_id, training_run_id, variant_name, notes)
        fields = dict(zip(layout.MEMBERSHIP_FIELDS, map(encode_scalar, values)))
        member = self._key(
            layout.MEMBERSHIP.format(experiment_id=experiment_id, run_id=training_run_id)
        )
        runs = self._key(layout.EXPERIMENT_RUN_SET.format(id=experiment_id))
        if (
            self.on_cluster
        ):  # two slots: the hash first, so the run set never names a membership not written
            self.client.hset(member, mapping=fields)
            self.client.sadd(runs, training_run_id)
            return
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(member, mapping=fields)
            pipe.sadd(runs, training_run_id)
            pipe.execute()

    # -- reads ---------------------------------------------------------------

    def get_statistics(self) -> dict[str, int]:
        """Counts as the old adapter reports them.

        models, datasets, training_runs and experiments are index sizes;
        model_versions and predictions are their id counters (ids allocated),
        since those entities have only per-parent indexes; completed_runs counts
        indexed runs whose status is "completed".
        """
        with self.client.pipeline(transaction=False) as pipe:
            for entity in (MODEL, layout.DATASET, RUN, EXPERIMENT):
                pipe.zcard(self._key(entity.index))
            pipe.get(self._key(VERSION.counter))
            pipe.get(self._key(PREDICTION.counter))
            pipe.zrange(self._key(RUN.index), 0, -1)
            models, datasets, runs, experiments, versions, predictions, run_ids = pipe.execute()
            for run_id in run_ids:
                pipe.hget(self._key(RUN.record.format(id=_text(run_id))), "status")
            statuses = pipe.execute() if run_ids else []
        return {
            "models": models,
            "model_versions": int(versions or 0),
            "datasets": datasets,
            "training_runs": runs,
            "completed_runs": sum(
                1 for status in statuses if status is not None and _text(status) == "completed"
            ),
            "experiments": experiments,
            "predictions": int(predictions or 0),
        }

    # -- the one write mechanism ---------------------------------------------

    def _key(self, suffix: str) -> str:
        return self.key_prefix + suffix

    def _insert_one(
        self, entity: HashRecords, values: tuple, parent: Any = None, score: str = ""
    ) -> int:
        return self._insert_chunks(entity, [[(parent, score, values)]])[0]

    def _insert_chunks(
        self, entity: HashRecords, chunks: Iterable[list[tuple[Any, str, tuple]]]
    ) -> list[int]:
        """Allocate ids for rows of (parent id, index score or '' for the id, field values) and write
        them, one script call per chunk; the ids in row order."""
        if self.on_cluster:
            return [i for rows in chunks for i in self._insert_many_in_order(entity, rows)]
        sizes: list[int] = []

        def calls() -> Iterator[tuple[list[str], list]]:
            for rows in chunks:
                sizes.append(len(rows))
                yield self._insert_call(entity, rows)

        ids: list[int] = []
        for chunk, first in enumerate(_script_replies(self.client, self._insert, calls())):
            ids += range(int(first), int(first) + sizes[chunk])
        return ids

    def _insert_call(
        self, entity: HashRecords, rows: list[tuple[Any, str, tuple]]
    ) -> tuple[list[str], list]:
        """The insert script's (keys, args) for these rows."""
        args = list(self._heads[entity])
        args[1] = len(rows)
        keys = [self._key(entity.counter)]
        for parent, score, values in rows:
            keys.append(self._key(entity.index.format(parent=parent)))
            args.append(score)
            args += map(encode_scalar, values)
        if entity.name_map:
            keys.append(self._key(entity.name_map))
        return keys, args

    def _insert_many_in_order(
        self, entity: HashRecords, rows: list[tuple[Any, str, tuple]]
    ) -> list[int]:
        """The cluster's way (module docstring): counter, then every hash, then the index entries."""
        first = int(self.client.incrby(self._key(entity.counter), len(rows))) - len(rows) + 1
        ids = list(range(first, first + len(rows)))
        pipe = self.client.pipeline(transaction=False)  # grouped by node, one round trip per node
        for record_id, (_, _, values) in zip(ids, rows):
            pipe.hset(
                self._key(entity.record.format(id=record_id)),
                mapping={"id": record_id, **dict(zip(entity.fields, map(encode_scalar, values)))},
            )
        pipe.execute()
        for record_id, (parent, score, values) in zip(ids, rows):
            pipe.zadd(
                self._key(entity.index.format(parent=parent)), {str(record_id): score or record_id}
            )
            if entity.name_map:
                pipe.hset(self._key(entity.name_map), encode_scalar(values[0]), record_id)
        pipe.execute()
        return ids


def is_cluster_node(client: redis.Redis) -> bool:
    """Whether the server is a Redis Cluster node, from HELLO's `mode` (in @connection: no extra ACL rule).
    Here, in the light module, for the writer and the sync alike.

    A cluster node answers a plain client for the keys of its own slots only: read as a single
    server, a cluster yields a fraction of the data set and no error."""
    try:
        hello = client.execute_command("HELLO")
    except (
        redis.ResponseError
    ):  # a server older than 6.2 (HELLO needs a protocol version there): no cluster mode
        return False
    if isinstance(hello, list):
        hello = dict(zip(hello[::2], hello[1::2]))
    mode = hello.get("mode", hello.get(b"mode"))  # bytes from a client that does not decode replies
    return mode in ("cluster", b"cluster")


def _chunked(items: Iterable, size: int) -> Iterator[list]:
    items = iter(items)
    while chunk := list(islice(items, size)):
        yield chunk


def _script_replies(
    client: redis.Redis, script, calls: Iterable[tuple[list[str], list]]
) -> Iterator[Any]:
    """Run a registered script once per (keys, args) on one pooled connection; the replies in order.

    Each call is packed by hiredis in C (a batch call carries about ten arguments per record, which
    redis-py would encode one by one in Python) and sent before the previous call's reply is read,
    so the next call is encoded while Redis runs the one before. Error replies raise as redis-py
    raises them. NOSCRIPT (Redis restarted or flushed its scripts) fails a call before it wrote
    anything: the script is loaded again and the calls that failed are sent again, in order; a
    call that ran (another client loaded the script meanwhile) keeps its reply.
    """
    pool = client.connection_pool
    conn = pool.get_connection()
    unread: deque[bytes] = deque()
    # hiredis writes text as strict UTF-8; a client set to another encoding gets its own bytes.
    encoder = conn.encoder
    own_encoding = (codecs.lookup(encoder.encoding).name, encoder.encoding_errors) != (
        "utf-8",
        "strict",
    )

    def oldest() -> Iterator[Any]:
        try:
            reply = conn.read_response()
        except redis.exceptions.NoScriptError:
            replies = [None] + [_or_noscript(conn) for _ in range(len(unread) - 1)]
            client.script_load(script.script)
            for packed, reply in zip(unread, replies):
                if reply is None:
                    conn.send_packed_command([packed])
                    reply = conn.read_response()
                yield reply
            unread.clear()
            return
        unread.popleft()
        yield reply

    try:
        for keys, args in calls:
            call = ("EVALSHA", script.sha, len(keys), *keys, *args)
            unread.append(
                hiredis.pack_command(tuple(map(encoder.encode, call)) if own_encoding else call)
            )
            conn.send_packed_command([unread[-1]])
            if len(unread) > 1:
                yield from oldest()
        while unread:
            yield from oldest()
    except BaseException:
        conn.disconnect()  # a reply may be left unread: never reuse the connection
        raise
    finally:
        pool.release(conn)


def _or_noscript(conn) -> Any:
    """The next reply; None for NOSCRIPT (the insert script never returns nil)."""
    try:
        return conn.read_response()
    except redis.exceptions.NoScriptError:
        return None


def _prediction_values(
    model_version_id: Any,
    input_data: Any,
    output_data: Any,
    confidence: Any,
    inference_time_ms: Any,
    metadata: Any,
    timestamp: str,
) -> tuple:
    """A prediction's hash values after `id`, in `layout.PREDICTION.fields` order."""
    return (
        model_version_id,
        encode_json(layout.wrapped(input_data)),
        encode_json(layout.wrapped(output_data)),
        confidence or 0,
        inference_time_ms or 0,
        timestamp,
        encode_json(metadata) if metadata else "{}",
    )


def _logging_time() -> tuple[str, str]:
    """(index score, timestamp) of a prediction logged now: the score is minus the Unix time."""
    now = time.time()
    return repr(-now), datetime.fromtimestamp(now, timezone.utc).replace(tzinfo=None).isoformat()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
