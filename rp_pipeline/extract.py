"""Extract: Redis records → DataFrame chunks of raw strings (how each layout is walked: strategies.py).

Every chunk has the columns ``_key`` (the record's full Redis key), ``_id`` (its
Redis id where it has one), ``_error`` (why the record could not be read, else
None), then one column per Postgres column of the entity, holding the raw Redis
string (None when the field is absent). Parent references hold the parent's Redis
id, still raw. Nothing is parsed or converted here.

All reads are pipelined: one round trip per batch of keys, never per record.
"""

from __future__ import annotations

import bisect
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate

import hiredis
import pandas as pd
import redis
from redis.cluster import RedisCluster

from .connections import refused_by_acl
from .entities import JSONB, EntitySpec
from .layout import GENERATION_KEY

PIPELINE_BATCH = 5_000
META_COLUMNS = ["_key", "_id", "_error"]


@dataclass(frozen=True)
class RedisSource:
    client: redis.Redis
    prefix: str
    problems: list[tuple[str, str]] = field(
        default_factory=list
    )  # (key, reason): unreadable counters, indexes

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
                    "can be synced"
                ) from None
            marker = self.marker()
        return marker

    def marker(self) -> str | None:
        """The data set's marker as it is now (None after a flush), without creating it."""
        return self.client.get(self.prefix + GENERATION_KEY)

    def scan_keys(self, pattern: str) -> set[str]:
        """Every key of the prefix matching `pattern`, by SCAN on every primary of a cluster."""
        match = self.prefix.replace("[", "\\[") + pattern
        if isinstance(self.client, RedisCluster):
            return set(
                self.client.scan_iter(
                    match=match, count=10_000, target_nodes=RedisCluster.PRIMARIES
                )
            )
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
            self.problems.append(
                (key, f"id counter unreadable ({exc}): ids are taken from the index only")
            )
            return 0

    def all_ids(self, spec: EntitySpec) -> list[int]:
        """Every id the writer allocated (counter) plus any in the entity's index: orphans included."""
        ids = set(range(1, self.counter(spec) + 1))
        if spec.index:
            key = self.prefix + spec.index
            try:
                members = self.client.zrange(key, 0, -1)
            except redis.ResponseError as exc:
                self.problems.append(
                    (key, f"index unreadable ({exc}): ids are taken from the counter only")
                )
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
        if isinstance(reply, Exception) and (
            refused_by_acl(reply) or str(reply).startswith("NOPERM")
        ):
            raise (
                reply
                if isinstance(reply, redis.RedisError)
                else redis.exceptions.NoPermissionError(str(reply).removeprefix("NOPERM "))
            )
    return replies


def hmget_many(client: redis.Redis, keys: Sequence[str], fields: Sequence[str]) -> list:
    """HMGET each key, pipelined; error replies come back as exception objects, in place."""
    return [reply for replies, _ in hmget_stream(client, keys, fields) for reply in replies]


def hmget_stream(
    client: redis.Redis, keys: Sequence[str], fields: Sequence[str], window_bytes: int = 1 << 62
) -> Iterator[tuple[list, list[int]]]:
    """HMGET each key, pipelined on a pooled connection and parsed by hiredis directly: runs of
    consecutive replies, each run with the replies' sizes in bytes as received (to within 1 KB:
    hiredis compacts its buffer by the kilobyte).

    redis-py's per-reply Python overhead caps a pipeline near 90k hashes/s; packing the commands
    in bulk and reading raw replies roughly triples that. Replies are parsed as they arrive, one
    socket read at a time, so a consumer that stops (a chunk full of bytes) holds only what it
    took. The next window of commands is sent once this one is read, its length sized from the
    largest reply seen so that about `window_bytes` wait in Redis's output buffer, never more than
    PIPELINE_BATCH commands. Error replies come back as exception objects, in place.
    """
    tail = b"".join(b"$%d\r\n%s\r\n" % (len(f), f) for f in (f.encode() for f in fields))
    head = b"*%d\r\n$5\r\nHMGET\r\n" % (2 + len(fields))
    conn = client.connection_pool.get_connection()
    window, largest = min(64, PIPELINE_BATCH), 1  # a first small window measures the records
    try:
        sock = (
            conn._sock
        )  # redis-py has connected, authenticated and selected the db (TLS included)
        start = 0
        while start < len(keys):
            batch = keys[start : start + window]
            start += len(batch)
            conn.send_packed_command(
                [
                    b"".join(
                        [
                            head + b"$%d\r\n%s\r\n" % (len(k), k) + tail
                            for k in (k.encode() for k in batch)
                        ]
                    )
                ]
            )
            reader = hiredis.Reader(encoding="utf-8", errors="surrogateescape")
            unread, got = 0, 0  # bytes fed to the reader and not yet parsed; replies of this window
            while got < len(batch):
                data = sock.recv(1 << 20)
                if not data:
                    raise redis.ConnectionError("Redis closed the connection while answering HMGET")
                reader.feed(data)
                unread += len(data)
                replies, sizes = [], []
                reply = reader.gets()
                while reply is not False:
                    replies.append(reply)
                    left = reader.len()
                    sizes.append(unread - left)
                    unread = left
                    reply = reader.gets()
                if replies:
                    got += len(replies)
                    largest = max(largest, max(sizes))
                    yield replies, sizes
            window = max(1, min(PIPELINE_BATCH, window_bytes // largest))
    except BaseException as exc:
        conn.disconnect()  # its reply stream is in an unknown state: never reuse it
        if isinstance(exc, OSError):  # a socket timeout or reset, in redis-py's terms
            raise redis.ConnectionError(
                f"reading HMGET replies failed: {exc or type(exc).__name__}"
            ) from exc
        raise
    finally:
        client.connection_pool.release(conn)


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
            answers = hmget_many(
                client.get_redis_connection(nodes[name]), [keys[i] for i in positions], fields
            )
        except redis.ConnectionError as exc:
            client.nodes_manager.initialize()  # a failover or a removed node: the next cycle reads the new map
            raise redis.ConnectionError(
                f"Redis Cluster node {name} failed while answering HMGET ({exc}): "
                "a failover or a node down"
            ) from exc
        for position, reply in zip(positions, answers):
            replies[position] = reply
    redirected = [
        i
        for i, reply in enumerate(replies)
        if isinstance(reply, Exception) and str(reply).split(" ", 1)[0] in _REDIRECTS
    ]
    if redirected:
        for position, reply in zip(
            redirected, pipelined(client, (("HMGET", keys[i], *fields) for i in redirected))
        ):
            replies[position] = reply
    return replies


def hmget_sized(
    client, keys: Sequence[str], fields: Sequence[str], window_bytes: int
) -> Iterator[tuple[list, list[int]]]:
    """`hmget_stream` on a single server; on a Redis Cluster, windows of keys read node by node
    (`hmget_many_on_cluster`), each window sized from the largest reply so far, replies measured
    by their values' bytes."""
    if not isinstance(client, RedisCluster):
        yield from hmget_stream(client, keys, fields, window_bytes=window_bytes)
        return
    start, largest = 0, 1
    while start < len(keys):
        window = keys[start : start + max(1, min(PIPELINE_BATCH, window_bytes // largest))]
        replies = hmget_many_on_cluster(client, window, fields)
        sizes = [
            sum(len(v) for v in r if isinstance(v, str)) if isinstance(r, list) else 0
            for r in replies
        ]
        largest = max(largest, *sizes)
        start += len(window)
        yield replies, sizes


@dataclass
class Read:
    """One chunk as read from Redis, with its size: what the memory budget counts."""

    frame: pd.DataFrame
    bytes: int  # as received from Redis
    largest: int  # the largest record's bytes
    missing: list[str] = field(default_factory=list)  # keys of ids with no record (yet)


def _fields(spec: EntitySpec) -> tuple[list[str], list[str]]:
    """(Redis fields, frame columns) that HMGET reads for a hash entity."""
    return (
        [p.field for p in spec.parents] + [c.redis_field for c in spec.columns],
        [p.column for p in spec.parents] + spec.column_names,
    )


def _hash_keys(src: RedisSource, spec: EntitySpec, ids: Sequence[int]) -> list[str]:
    head, _, tail = (src.prefix + spec.key).partition("{id}")
    return [f"{head}{i}{tail}" for i in ids]


def read_hashes(
    src: RedisSource, spec: EntitySpec, ids: Sequence[int]
) -> tuple[pd.DataFrame, list[int]]:
    """HMGET the entity's fields for these ids: (rows that exist, ids with no record)."""
    keys = _hash_keys(src, spec, ids)
    read = hmget_many_on_cluster if isinstance(src.client, RedisCluster) else hmget_many
    return _hash_frame(src, spec, ids, keys, read(src.client, keys, _fields(spec)[0]))


class _KeysOf(Sequence):
    """The Redis keys of ids, made a slice at a time: a backlog of a million ids is 80 MB of keys."""

    def __init__(self, src: RedisSource, spec: EntitySpec, ids: Sequence[int]):
        self.src, self.spec, self.ids = src, spec, ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return _hash_keys(self.src, self.spec, self.ids[index])
        return _hash_keys(self.src, self.spec, [self.ids[index]])[0]


def read_hash_chunks(
    src: RedisSource, spec: EntitySpec, ids: Sequence[int], max_records: int, max_bytes: int
) -> Iterator[Read]:
    """HMGET these ids in chunks that close at `max_records` records or `max_bytes` bytes, whichever
    comes first; a record bigger than `max_bytes` is a chunk of its own."""
    keys = _KeysOf(src, spec, ids)
    done, replies, sizes = 0, [], []

    def chunk(count: int) -> Read:
        nonlocal done, replies, sizes
        taken, size, largest = replies[:count], sum(sizes[:count]), max(sizes[:count])
        replies, sizes = replies[count:], sizes[count:]
        if largest > MAX_VALUE_BYTES[JSONB]:
            _refuse_oversized(spec, taken)
        frame, missing = _hash_frame(
            src, spec, ids[done : done + count], keys[done : done + count], taken
        )
        done += count
        return Read(frame, size, largest, _hash_keys(src, spec, missing))

    for more, more_sizes in hmget_sized(src.client, keys, _fields(spec)[0], window_bytes=max_bytes):
        replies += more
        sizes += more_sizes
        while len(replies) >= max_records or sum(sizes) >= max_bytes:
            yield chunk(
                min(max_records, bisect.bisect_left(list(accumulate(sizes)), max_bytes) + 1)
            )
    if replies:
        yield chunk(len(replies))


# What Postgres accepts: one jsonb value up to 2^28 - 1 bytes, any other value (and so one COPY row) up to 1 GB - 1.
MAX_VALUE_BYTES = {JSONB: (1 << 28) - 1, None: (1 << 30) - 1}


def _refuse_oversized(spec: EntitySpec, replies: list) -> None:
    """Records with a value Postgres cannot take become errors naming the field and its size; their
    values are dropped here, so neither the load nor the rejected-records table carries them."""
    types = [None] * len(spec.parents) + [c.type for c in spec.columns]
    fields = _fields(spec)[0]
    for i, reply in enumerate(replies):
        if not isinstance(reply, list):
            continue
        sizes = [
            0
            if not isinstance(v, str)
            else len(v)
            if v.isascii()
            else len(v.encode("utf-8", "surrogateescape"))
            for v in reply
        ]
        why = [
            f"field {f!r} is {n:,} bytes, more than Postgres accepts in one {t or 'text'} value "
            f"({MAX_VALUE_BYTES.get(t, MAX_VALUE_BYTES[None]):,} bytes)"
            for f, t, n in zip(fields, types, sizes)
            if n > MAX_VALUE_BYTES.get(t, MAX_VALUE_BYTES[None])
        ]
        if not why and sum(sizes) > MAX_VALUE_BYTES[None]:
            why = [
                f"the record is {sum(sizes):,} bytes, more than Postgres accepts in one row "
                f"({MAX_VALUE_BYTES[None]:,} bytes)"
            ]
        if why:
            replies[i] = TooLarge("; ".join(why) + "; not synced")


class TooLarge(Exception):
    """A record Postgres cannot take whole (in place of its HMGET reply)."""


def _hash_frame(
    src: RedisSource, spec: EntitySpec, ids: Sequence[int], keys: list[str], replies: list
) -> tuple[pd.DataFrame, list[int]]:
    """HMGET replies as a frame: (rows that exist, ids with no record)."""
    fields, names = _fields(spec)
    width = len(fields)
    errors: list = [None] * len(replies)
    if set(map(type, replies)) <= {
        list
    }:  # the usual case, checked in C: a record with no field is rare
        first = next(zip(*replies)) if replies else ()
        unusual = (
            [i for i, v in enumerate(first) if v is None and replies[i].count(None) == width]
            if None in first
            else []
        )
    else:
        unusual = [
            i for i, r in enumerate(replies) if type(r) is not list or r.count(None) == width
        ]
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
                errors[i] = (
                    str(replies[i])
                    if isinstance(replies[i], TooLarge)
                    else f"cannot read: {replies[i]}"
                )
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
    frame = pd.DataFrame(
        {
            "_key": pd.Series(keys, dtype=object),
            "_id": pd.Series(list(ids), dtype="int64"),
            "_error": pd.Series(errors, dtype=object),
            **{name: pd.Series(values, dtype=object) for name, values in zip(names, columns)},
        }
    )
    return frame, missing


def chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
