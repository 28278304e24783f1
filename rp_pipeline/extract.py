"""Extract: Redis records → DataFrame chunks of raw strings, one strategy per way of finding them.

Every chunk has the columns ``_key`` (the record's full Redis key), ``_id`` (its
Redis id where it has one), ``_error`` (why the record could not be read, else
None), then one column per Postgres column of the entity, holding the raw Redis
string (None when the field is absent). Parent references hold the parent's Redis
id, still raw. Nothing is parsed or converted here.

All reads are pipelined: one round trip per batch of keys, never per record.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import pandas as pd
import redis
from redis.cluster import RedisCluster

from .connections import refused_by_acl
from .entities import (
    EXPERIMENTS, HASH_BY_ID, MEMBERS_PER_EXPERIMENT, METRIC_SERIES, PARAMS_PER_RUN, TRAINING_RUNS, EntitySpec,
)

PIPELINE_BATCH = 5_000
META_COLUMNS = ["_key", "_id", "_error"]
GENERATION_KEY = "rp_pipeline:generation"


@dataclass(frozen=True)
class RedisSource:
    client: redis.Redis
    prefix: str
    problems: list[tuple[str, str]] = field(default_factory=list)  # (key, reason): unreadable counters, indexes

    def key(self, pattern: str, **parts) -> str:
        return self.prefix + pattern.format(**parts)

    def generation(self) -> str:
        """The id of this Redis data set: a marker key that a flush or a restart removes.

        Every address of the data (an alias, a forward, a replica) shows the same marker, so it, not
        the address, identifies where rows come from (`sources.py`).
        """
        marker = self.marker()
        if marker is None:
            try:
                self.client.set(self.prefix + GENERATION_KEY, uuid.uuid4().hex, nx=True)
            except redis.ReadOnlyError:
                raise redis.ReadOnlyError(
                    f"this Redis is a read-only replica and its data set has no marker {self.prefix}"
                    f"{GENERATION_KEY} yet: sync once from the primary (which sets it), then the replica "
                    "can be synced") from None
            marker = self.marker()
        return marker

    def marker(self) -> str | None:
        """The data set's marker as it is now (None after a flush), without creating it."""
        return self.client.get(self.prefix + GENERATION_KEY)

    def scan_keys(self, pattern: str) -> set[str]:
        """Every key of the prefix matching `pattern`, by SCAN on every primary of a cluster."""
        match = self.prefix.replace("[", "\\[") + pattern
        if isinstance(self.client, RedisCluster):
            return set(self.client.scan_iter(match=match, count=10_000, target_nodes=RedisCluster.PRIMARIES))
        return set(self.client.scan_iter(match=match, count=10_000))

    def counter(self, spec: EntitySpec) -> int:
        """The entity's id counter; 0 when absent. A counter that is not a number is reported, not fatal."""
        if not spec.counter:
            return 0
        key = self.prefix + spec.counter
        try:
            value = self.client.get(key)
            return int(value or 0)
        except (redis.ResponseError, ValueError) as exc:
            self.problems.append((key, f"id counter unreadable ({exc}): ids are taken from the index only"))
            return 0

    def all_ids(self, spec: EntitySpec) -> list[int]:
        """Every id the writer allocated (counter) plus any in the entity's index: orphans included."""
        ids = set(range(1, self.counter(spec) + 1))
        if spec.index:
            key = self.prefix + spec.index
            try:
                members = self.client.zrange(key, 0, -1)
            except redis.ResponseError as exc:
                self.problems.append((key, f"index unreadable ({exc}): ids are taken from the counter only"))
                members = []
            ids.update(int(m) for m in members if m.isascii() and m.isdigit())
        return sorted(ids)


def pipelined(client: redis.Redis, commands: Iterable[tuple]) -> Iterator:
    """Run commands in pipelined batches; a failing command yields its exception instead of raising,
    except a refusal by the ACL, which is raised (configuration: no record is to blame)."""
    batch: list[tuple] = []

    def flush():
        pipe = client.pipeline(transaction=False)
        for command in batch:
            pipe.execute_command(*command)
        return raise_refusal(pipe.execute(raise_on_error=False))

    for command in commands:
        batch.append(command)
        if len(batch) >= PIPELINE_BATCH:
            yield from flush()
            batch = []
    if batch:
        yield from flush()


def raise_refusal(replies: list) -> list:
    """The replies, unless one is an ACL refusal (as redis-py's or hiredis's error object): that is raised."""
    for reply in replies:
        if isinstance(reply, Exception) and (refused_by_acl(reply) or str(reply).startswith("NOPERM")):
            raise reply if isinstance(reply, redis.RedisError) else redis.exceptions.NoPermissionError(
                str(reply).removeprefix("NOPERM "))
    return replies


def hmget_many(client: redis.Redis, keys: Sequence[str], fields: Sequence[str]) -> list:
    """HMGET each key, pipelined on a pooled connection and parsed by hiredis directly.

    redis-py's per-reply Python overhead caps a pipeline near 90k hashes/s; packing the
    commands in bulk and reading raw replies roughly triples that. Error replies come back
    as exception objects, in place, like a non-raising pipeline.
    """
    try:
        import hiredis
    except ImportError:  # pragma: no cover - hiredis is a dependency; keep working without it
        return list(pipelined(client, (("HMGET", k, *fields) for k in keys)))
    tail = b"".join(b"$%d\r\n%s\r\n" % (len(f), f) for f in (f.encode() for f in fields))
    head = b"*%d\r\n$5\r\nHMGET\r\n" % (2 + len(fields))
    replies: list = []
    conn = client.connection_pool.get_connection()
    try:
        sock = conn._sock  # redis-py has connected, authenticated and selected the db (TLS included)
        for start in range(0, len(keys), PIPELINE_BATCH):
            batch = keys[start:start + PIPELINE_BATCH]
            conn.send_packed_command([b"".join(
                [head + b"$%d\r\n%s\r\n" % (len(k), k) + tail for k in (k.encode() for k in batch)])])
            reader = hiredis.Reader(encoding="utf-8", errors="surrogateescape")
            want = len(replies) + len(batch)
            while len(replies) < want:
                data = sock.recv(1 << 20)
                if not data:
                    raise redis.ConnectionError("Redis closed the connection while answering HMGET")
                reader.feed(data)
                reply = reader.gets()
                while reply is not False:
                    replies.append(reply)
                    reply = reader.gets()
    except BaseException as exc:
        conn.disconnect()  # its reply stream is in an unknown state: never reuse it
        if isinstance(exc, OSError):  # a socket timeout or reset, in redis-py's terms
            raise redis.ConnectionError(f"reading HMGET replies failed: {exc or type(exc).__name__}") from exc
        raise
    finally:
        client.connection_pool.release(conn)
    return replies


# Replies that mean "ask another node": the slot moved (resharding) or is moving, or the cluster is failing over.
_REDIRECTS = ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN")


def hmget_many_on_cluster(client: RedisCluster, keys: Sequence[str], fields: Sequence[str]) -> list:
    """HMGET each key of a Redis Cluster: keys grouped by the primary that serves their slot, each group
    pipelined on that node like a single server. A reply that redirects (a slot moved since the client
    read the slot map) is read again through the cluster client, which follows MOVED/ASK itself."""
    groups: dict[str, list[int]] = {}
    nodes = {}
    for position, key in enumerate(keys):
        node = client.nodes_manager.get_node_from_slot(client.keyslot(key))
        groups.setdefault(node.name, []).append(position)
        nodes[node.name] = node
    replies: list = [None] * len(keys)
    for name, positions in groups.items():
        try:
            answers = hmget_many(client.get_redis_connection(nodes[name]), [keys[i] for i in positions], fields)
        except redis.ConnectionError as exc:
            client.nodes_manager.initialize()  # a failover or a removed node: the next cycle reads the new map
            raise redis.ConnectionError(f"Redis Cluster node {name} failed while answering HMGET ({exc}): "
                                        "a failover or a node down") from exc
        for position, reply in zip(positions, answers):
            replies[position] = reply
    redirected = [i for i, reply in enumerate(replies)
                  if isinstance(reply, Exception) and str(reply).split(" ", 1)[0] in _REDIRECTS]
    if redirected:
        for position, reply in zip(redirected, pipelined(client, (("HMGET", keys[i], *fields) for i in redirected))):
            replies[position] = reply
    return replies


def _frame(records: list[dict], spec: EntitySpec) -> pd.DataFrame:
    """Records as a frame of strings and None (absent fields are None, never NaN)."""
    columns = META_COLUMNS + [p.column for p in spec.parents] + spec.column_names + (
        ["_member"] if spec.strategy == METRIC_SERIES else [])
    rows = [[record.get(c) for c in columns] for record in records]
    return pd.DataFrame(rows, columns=columns, dtype=object)


def read_hashes(src: RedisSource, spec: EntitySpec, ids: Sequence[int]) -> tuple[pd.DataFrame, list[int]]:
    """HMGET the entity's fields for these ids: (rows that exist, ids with no record)."""
    fields = [p.field for p in spec.parents] + [c.redis_field for c in spec.columns]
    names = [p.column for p in spec.parents] + spec.column_names
    head, _, tail = (src.prefix + spec.key).partition("{id}")
    keys = [f"{head}{i}{tail}" for i in ids]
    read = hmget_many_on_cluster if isinstance(src.client, RedisCluster) else hmget_many
    replies = read(src.client, keys, fields)
    width = len(fields)
    errors: list = [None] * len(replies)
    if set(map(type, replies)) <= {list}:  # the usual case, checked in C: a record with no field is rare
        first = list(zip(*replies))[0] if replies else ()
        unusual = [i for i, v in enumerate(first) if v is None and replies[i].count(None) == width] \
            if None in first else []
    else:
        unusual = [i for i, r in enumerate(replies) if type(r) is not list or r.count(None) == width]
    missing = []
    if unusual:  # rare: records not written yet, keys of the wrong type, hashes without our fields
        empty = [i for i in unusual if not isinstance(replies[i], Exception)]
        exists = {}
        if empty:
            # Read again with HGETALL, so "no record" (empty: Redis has no empty hashes) and "a hash without
            # our fields" are told apart on one snapshot, by one read-only command (no MULTI in the ACL):
            # a writer may have written the record since the first read.
            again = pipelined(src.client, (("HGETALL", keys[i]) for i in empty))
            for i, whole in zip(empty, again):
                if isinstance(whole, Exception):
                    replies[i], exists[i] = whole, 1
                else:
                    replies[i], exists[i] = [whole.get(f) for f in fields], 1 if whole else 0
        raise_refusal([replies[i] for i in unusual])
        keep = []
        for i in unusual:
            if isinstance(replies[i], Exception):
                errors[i] = f"cannot read: {replies[i]}"
                replies[i] = [None] * width
            elif exists.get(i) != 1:
                missing.append(ids[i])
                keep.append(i)
        if keep:
            drop = set(keep)
            kept = [i for i in range(len(replies)) if i not in drop]
            ids, keys = [ids[i] for i in kept], [keys[i] for i in kept]
            replies, errors = [replies[i] for i in kept], [errors[i] for i in kept]
    # Column-wise construction: one transpose in C instead of a dict per record.
    columns = list(zip(*replies)) if replies else [()] * width
    frame = pd.DataFrame({"_key": pd.Series(keys, dtype=object), "_id": pd.Series(list(ids), dtype="int64"),
                          "_error": pd.Series(errors, dtype=object),
                          **{name: pd.Series(values, dtype=object) for name, values in zip(names, columns)}})
    return frame, missing


def read_params(src: RedisSource, spec: EntitySpec, run_ids: Sequence[int]) -> pd.DataFrame:
    """One row per (run, parameter) from each run's hyperparameter hash."""
    keys = [src.key(spec.key, id=i) for i in run_ids]
    records = []
    for run_id, key, reply in zip(run_ids, keys, pipelined(src.client, (("HGETALL", k) for k in keys))):
        if isinstance(reply, Exception):
            records.append({"_key": key, "_error": f"cannot read: {reply}", "training_run_id": str(run_id)})
            continue
        for name, value in (reply or {}).items():
            records.append({"_key": f"{key}#{name}", "_error": None, "training_run_id": str(run_id),
                            "param_name": name, "param_value": value})
    return _frame(records, spec)


def _text(value) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value, default=str)


def metric_run_id(src: RedisSource, key: str) -> str:
    """The run id of a metric series key: the segment after 'metric:' (names may contain ':')."""
    return key[len(src.prefix) + len("metric:"):].split(":", 1)[0]


def read_metric_series(src: RedisSource, spec: EntitySpec, keys: Sequence[str]) -> pd.DataFrame:
    """One row per point: the JSON member's fields, never parsed out of the key."""
    records = []
    for key, reply in zip(keys, pipelined(src.client, (("ZRANGE", k, 0, -1) for k in keys))):
        run_id = metric_run_id(src, key)
        if isinstance(reply, Exception):
            records.append({"_key": key, "_error": f"cannot read: {reply}", "training_run_id": run_id})
            continue
        for member in reply:
            record = {"_key": key, "_member": member, "_error": None, "training_run_id": run_id}
            try:
                point = json.loads(member)
                if not isinstance(point, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                record["_error"] = f"metric point is not a JSON object: {exc}"
            else:
                for column in spec.columns:
                    record[column.name] = _text(point.get(column.redis_field))
            records.append(record)
    return _frame(records, spec)


def read_memberships(src: RedisSource, spec: EntitySpec, experiment_ids: Sequence[int]) -> pd.DataFrame:
    """One row per (experiment, run) pair listed in the experiment's run set."""
    set_keys = [src.key("exprun:{id}:runs", id=e) for e in experiment_ids]
    pairs = []
    for experiment_id, reply in zip(experiment_ids, pipelined(src.client, (("SMEMBERS", k) for k in set_keys))):
        if not isinstance(reply, Exception):
            pairs.extend((experiment_id, run_id) for run_id in sorted(reply))
    fields = [c.redis_field for c in spec.columns]
    keys = [src.key(spec.key, experiment_id=e, run_id=r) for e, r in pairs]
    records = []
    for (experiment_id, run_id), key, reply in zip(pairs, keys,
                                                   pipelined(src.client, (("HMGET", k, *fields) for k in keys))):
        record = {"_key": key, "_error": None, "experiment_id": str(experiment_id), "training_run_id": run_id}
        if isinstance(reply, Exception):
            record["_error"] = f"cannot read: {reply}"
        else:
            record.update(zip(spec.column_names, reply))
        records.append(record)
    return _frame(records, spec)


def chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def extract_all(src: RedisSource, spec: EntitySpec, chunk_size: int, ids: Sequence[int] | None = None,
                series_keys: Sequence[str] = ()) -> Iterator[pd.DataFrame]:
    """Every current record of a fully re-read entity, in chunks (not for incremental predictions)."""
    if spec.strategy == HASH_BY_ID:
        for ids in chunks(src.all_ids(spec) if ids is None else ids, chunk_size):
            yield read_hashes(src, spec, ids)[0]
    elif spec.strategy == PARAMS_PER_RUN:
        for ids in chunks(src.all_ids(TRAINING_RUNS), max(1, chunk_size // 20)):
            yield read_params(src, spec, ids)
    elif spec.strategy == MEMBERS_PER_EXPERIMENT:
        for ids in chunks(src.all_ids(EXPERIMENTS), max(1, chunk_size // 20)):
            yield read_memberships(src, spec, ids)
    elif spec.strategy == METRIC_SERIES:
        for keys in chunks(list(series_keys), max(1, chunk_size // 100)):
            yield read_metric_series(src, spec, keys)
    else:
        raise ValueError(f"unknown strategy {spec.strategy!r} for {spec.name}")
