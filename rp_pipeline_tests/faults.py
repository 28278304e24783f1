"""Tools of the fault suite: a killable TCP proxy, the truth in Redis and in Postgres, foreign writers.

Nothing here stands in for Redis or Postgres: the proxy forwards bytes to the real
servers, so an outage is a real connection dying under the driver. The "truth"
readers are independent of the engine: they read Redis with plain commands and
Postgres with plain SQL, and describe each table as a multiset of identities, so
a missing row, a duplicate row and an altered value all show up as a difference.

This module imports only the standard library, redis and psycopg at the top, so
that writer processes started with multiprocessing's spawn start in a fraction of
a second (importing `rp_pipeline` loads Dagster; `import_without_dagster` avoids it).
"""

from __future__ import annotations

import json
import os
import random
import socket
import sys
import threading
import time
import types
from collections import Counter
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis

PACKAGE_DIR = str(Path(__file__).resolve().parent.parent / "rp_pipeline")
TABLES = (
    "models",
    "model_versions",
    "datasets",
    "training_runs",
    "hyperparameters",
    "metrics",
    "experiments",
    "experiment_runs",
    "predictions",
)
FOREIGN_KEYS = (  # child table, column, parent table
    ("model_versions", "model_id", "models"),
    ("training_runs", "model_version_id", "model_versions"),
    ("training_runs", "dataset_id", "datasets"),
    ("hyperparameters", "training_run_id", "training_runs"),
    ("metrics", "training_run_id", "training_runs"),
    ("experiment_runs", "experiment_id", "experiments"),
    ("experiment_runs", "training_run_id", "training_runs"),
    ("predictions", "model_version_id", "model_versions"),
)


def import_without_dagster() -> None:
    """Make `import rp_pipeline.<module>` skip the package's __init__ (which builds the Dagster definitions).

    The engine is plain Python; child processes that only sync or only write need
    none of Dagster, and importing it costs seconds per process. A no-op where
    `rp_pipeline` is already imported.
    """
    if "rp_pipeline" not in sys.modules:
        package = types.ModuleType("rp_pipeline")
        package.__path__ = [PACKAGE_DIR]
        sys.modules["rp_pipeline"] = package


# -- a TCP proxy that can die ------------------------------------------------------------------------------


def free_port() -> int:
    """A port nothing listens on (bound and released at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_address(url: str, port: int, password: str | None = None, user: str | None = None) -> str:
    """`url` pointing at 127.0.0.1:`port`, optionally with credentials; path and query are kept."""
    parts = urlsplit(url)
    user = user if user is not None else (parts.username or "")
    auth = f"{user}:{password}@" if password is not None else (f"{user}@" if user else "")
    return urlunsplit(parts._replace(netloc=f"{auth}127.0.0.1:{port}"))


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a real server until killed; `kill_after` / `pause_after` arm a fault
    on a byte pattern.

    Killing closes the listener and every connection with a reset, like a server
    that crashed: the client's next read or write fails, and new connections are refused.
    """

    def __init__(self, target_host: str, target_port: int, record: bool = False):
        self.target = (target_host, target_port)
        self.record = record
        self.recorded: list[
            bytearray
        ] = []  # client→server bytes, one buffer per connection (if `record`)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.killed = threading.Event()
        self.paused = threading.Event()
        self._action = self.kill
        self.connections = 0
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._trigger: tuple[bytes, int] | None = None
        self._seen = 0
        self._tail = b""
        threading.Thread(target=self._accept, name=f"proxy-{self.port}", daemon=True).start()

    @classmethod
    def to(cls, url: str, default_port: int, record: bool = False) -> TcpProxy:
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or default_port, record)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.kill()

    def kill_after(self, pattern: bytes, occurrence: int = 1) -> None:
        """Kill everything just before the `occurrence`-th client→server appearance of `pattern` is forwarded."""
        with self._lock:
            self._trigger, self._seen, self._tail = (pattern, occurrence), 0, b""
            self._action = self.kill

    def pause_after(self, pattern: bytes, occurrence: int = 1) -> None:
        """Stop forwarding (both ways, connections left open: a server that hangs) at that point instead."""
        with self._lock:
            self._trigger, self._seen, self._tail = (pattern, occurrence), 0, b""
            self._action = self.paused.set

    def kill(self) -> None:
        with self._lock:
            if self.killed.is_set():
                return
            self.killed.set()
            sockets, self._sockets = [self.listener, *self._sockets], []
        for sock in sockets:
            try:
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
            except OSError:
                pass
            for action in (lambda sock=sock: sock.shutdown(socket.SHUT_RDWR), sock.close):
                try:
                    action()
                except OSError:
                    pass

    def _accept(self) -> None:
        while not self.killed.is_set():
            try:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(self.target)
            except OSError:
                return
            with self._lock:
                if self.killed.is_set():
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
                self.connections += 1
                tape = bytearray() if self.record else None
                if tape is not None:
                    self.recorded.append(tape)
            threading.Thread(
                target=self._pump, args=(client, upstream, True, tape), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(upstream, client, False, None), daemon=True
            ).start()

    def _tripped(self, data: bytes) -> bool:
        with self._lock:
            if self._trigger is None:
                return False
            pattern, occurrence = self._trigger
            window = self._tail + data
            self._seen += window.count(
                pattern
            )  # the tail is shorter than the pattern: no double count
            self._tail = window[-(len(pattern) - 1) :] if len(pattern) > 1 else b""
            return self._seen >= occurrence

    def _pump(
        self, source: socket.socket, sink: socket.socket, upstream: bool, tape: bytearray | None
    ) -> None:
        try:
            while not self.killed.is_set():
                data = source.recv(1 << 16)
                if not data:
                    break
                if upstream and self._tripped(data):
                    with self._lock:
                        self._trigger = None
                    self._action()
                while self.paused.is_set() and not self.killed.is_set():
                    time.sleep(0.05)
                if self.killed.is_set():
                    return
                if tape is not None:
                    tape += data
                sink.sendall(data)
        except OSError:
            pass
        finally:
            if not self.killed.is_set():
                for sock in (source, sink):
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass


def postgres_frontend_messages(stream: bytes) -> list[tuple[str, bytes]]:
    """Split a recorded client→Postgres byte stream into (type, body) messages of the wire protocol.

    The untyped opening packets (SSLRequest, GSSENCRequest, StartupMessage) come back as type "".
    """
    messages, pos = [], 0
    while pos + 8 <= len(
        stream
    ):  # untyped packets: length, then a request code or the protocol version
        length, code = (
            int.from_bytes(stream[pos : pos + 4], "big"),
            int.from_bytes(stream[pos + 4 : pos + 8], "big"),
        )
        if code not in (80877103, 80877104, 196608):
            break
        messages.append(("", bytes(stream[pos + 8 : pos + length])))
        pos += length
    while pos + 5 <= len(stream):
        kind, length = chr(stream[pos]), int.from_bytes(stream[pos + 1 : pos + 5], "big")
        messages.append((kind, bytes(stream[pos + 5 : pos + 1 + length])))
        pos += 1 + length
    return messages


# -- the truth: each table as a multiset of identities ------------------------------------------------------------


def iso(moment: datetime | None) -> str | None:
    """A Postgres timestamptz as the naive UTC ISO string the aidb layout writes."""
    if moment is None:
        return None
    return moment.astimezone(timezone.utc).replace(tzinfo=None).isoformat()


def json_value(text: str | None):
    """JSON text as a hashable value that compares numbers exactly (Decimal) and keeps bool ≠ 1, null ≠ missing."""
    if text is None or text == "":
        return None

    def freeze(value):
        if isinstance(value, dict):
            return ("object", tuple(sorted((k, freeze(v)) for k, v in value.items())))
        if isinstance(value, list):
            return ("array", tuple(freeze(v) for v in value))
        if isinstance(value, bool) or value is None:
            return ("const", value)
        if isinstance(value, (int, Decimal)):
            return ("number", Decimal(value).normalize() if isinstance(value, Decimal) else value)
        return ("string", value)

    return freeze(
        json.loads(text, parse_float=Decimal, parse_constant=lambda name: None)
    )  # NaN is stored as null


def _float(text: str | None) -> float | None:
    return None if text in (None, "") else float(text)


def _hgetall_many(client: redis.Redis, keys: list[str]) -> list[dict]:
    out: list[dict] = []
    for start in range(0, len(keys), 2000):
        pipe = client.pipeline(transaction=False)
        for key in keys[start : start + 2000]:
            pipe.hgetall(key)
        out += pipe.execute()
    return out


def _ids(client: redis.Redis, prefix: str, entity: str, index: str | None) -> list[int]:
    ids = set(range(1, int(client.get(f"{prefix}counter:{entity}") or 0) + 1))
    if index:
        ids.update(int(m) for m in client.zrange(prefix + index, 0, -1) if m.isdigit())
    return sorted(ids)


def redis_truth(client: redis.Redis, prefix: str) -> dict[str, Counter]:
    """What Postgres must hold after a complete sync of well-formed data, read with plain Redis commands.

    `client` decodes responses. Names identify models, datasets and experiments
    (duplicates collapse, the highest id winning, as the layout's name map does);
    Redis ids identify runs and predictions (their origin in Postgres).
    """

    def records(entity: str, index: str | None) -> dict[int, dict]:
        ids = _ids(client, prefix, entity, index)
        return {
            i: h
            for i, h in zip(ids, _hgetall_many(client, [f"{prefix}{entity}:{i}" for i in ids]))
            if h
        }

    models, versions = records("model", "idx:models"), records("version", None)
    datasets, runs = records("dataset", "idx:datasets"), records("run", "idx:runs")
    experiments = records("experiment", "idx:experiments")
    model_name = {i: h["name"] for i, h in models.items()}
    version_of = {
        i: (model_name[int(h["model_id"])], h["version"])
        for i, h in versions.items()
        if int(h["model_id"]) in model_name
    }
    dataset_name = {i: h["name"] for i, h in datasets.items()}
    truth: dict[str, Counter] = {t: Counter() for t in TABLES}
    truth["models"] = Counter({(name,): 1 for name in model_name.values()})
    truth["model_versions"] = Counter({v: 1 for v in version_of.values()})
    truth["datasets"] = Counter({(name,): 1 for name in dataset_name.values()})
    truth["experiments"] = Counter({(h["name"],): 1 for h in experiments.values()})
    for i, h in runs.items():
        dataset = int(h.get("dataset_id") or 0)
        truth["training_runs"][
            (
                i,
                h["run_name"],
                h["status"],
                *version_of[int(h["model_version_id"])],
                dataset_name.get(dataset) if dataset else None,
                h["started_at"],
            )
        ] += 1
    params = _hgetall_many(client, [f"{prefix}hyperparam:{i}" for i in runs])
    for run_id, hash_ in zip(runs, params):
        for name, value in hash_.items():
            truth["hyperparameters"][(run_id, name, value)] += 1
    metric_keys = sorted(client.scan_iter(match=f"{prefix}metric:*", count=10_000))
    pipe = client.pipeline(transaction=False)
    for key in metric_keys:
        pipe.zrange(key, 0, -1)
    for key, members in zip(metric_keys, pipe.execute()):
        run_id = int(key[len(prefix) + len("metric:") :].split(":", 1)[0])
        for member in members:
            p = json.loads(member)
            truth["metrics"][
                (
                    run_id,
                    p["metric_name"],
                    p["split"],
                    p["epoch"],
                    p["step"],
                    float(p["metric_value"]),
                    p["timestamp"],
                )
            ] += 1
    experiment_name = {i: h["name"] for i, h in experiments.items()}
    for e in experiments:
        for r in sorted(client.smembers(f"{prefix}exprun:{e}:runs")):
            member = client.hgetall(f"{prefix}exprun:{e}:{r}")
            truth["experiment_runs"][
                (
                    experiment_name[e],
                    int(r),
                    member.get("variant_name") or None,
                    member.get("notes") or None,
                )
            ] += 1  # '' is NULL
    ids = list(range(1, int(client.get(f"{prefix}counter:prediction") or 0) + 1))
    for i, h in zip(ids, _hgetall_many(client, [f"{prefix}prediction:{i}" for i in ids])):
        if h:
            truth["predictions"][
                (
                    i,
                    *version_of[int(h["model_version_id"])],
                    h["timestamp"],
                    json_value(h["input"]),
                    json_value(h["output"]),
                )
            ] += 1
    return truth


def postgres_truth(conn: psycopg.Connection, schema: str) -> dict[str, Counter]:
    """The analytics tables as multisets of the same identities `redis_truth` builds."""
    s = f'"{schema}"'

    def query(sql: str) -> list[tuple]:
        return conn.execute(sql.replace("{s}", s)).fetchall()

    truth: dict[str, Counter] = {}
    truth["models"] = Counter((n,) for (n,) in query("SELECT name FROM {s}.models"))
    truth["model_versions"] = Counter(
        query(
            "SELECT m.name, v.version FROM {s}.model_versions v JOIN {s}.models m ON m.id = v.model_id"
        )
    )
    truth["datasets"] = Counter((n,) for (n,) in query("SELECT name FROM {s}.datasets"))
    truth["experiments"] = Counter((n,) for (n,) in query("SELECT name FROM {s}.experiments"))
    truth["training_runs"] = Counter(
        (r, name, status, model, version, dataset, iso(started))
        for r, name, status, model, version, dataset, started in query(
            "SELECT r.origin_redis_id, r.run_name, r.status, m.name, v.version, d.name, r.started_at "
            "FROM {s}.training_runs r JOIN {s}.model_versions v ON v.id = r.model_version_id "
            "JOIN {s}.models m ON m.id = v.model_id LEFT JOIN {s}.datasets d ON d.id = r.dataset_id"
        )
    )
    truth["hyperparameters"] = Counter(
        query(
            "SELECT r.origin_redis_id, h.param_name, h.param_value FROM {s}.hyperparameters h "
            "JOIN {s}.training_runs r ON r.id = h.training_run_id"
        )
    )
    truth["metrics"] = Counter(
        (r, name, split, epoch, step, value, iso(ts))
        for r, name, split, epoch, step, value, ts in query(
            'SELECT r.origin_redis_id, x.metric_name, x.split, x.epoch, x.step, x.metric_value, x."timestamp" '
            "FROM {s}.metrics x JOIN {s}.training_runs r ON r.id = x.training_run_id"
        )
    )
    truth["experiment_runs"] = Counter(
        query(
            "SELECT e.name, r.origin_redis_id, x.variant_name, x.notes FROM {s}.experiment_runs x "
            "JOIN {s}.experiments e ON e.id = x.experiment_id JOIN {s}.training_runs r ON r.id = x.training_run_id"
        )
    )
    truth["predictions"] = Counter(
        (r, model, version, iso(ts), json_value(i), json_value(o))
        for r, model, version, ts, i, o in query(
            'SELECT p.origin_redis_id, m.name, v.version, p."timestamp", p.input_data::text, '
            "p.output_data::text FROM {s}.predictions p JOIN {s}.model_versions v ON v.id = p.model_version_id "
            "JOIN {s}.models m ON m.id = v.model_id"
        )
    )
    return truth


def table_counts(conn: psycopg.Connection, schema: str) -> dict[str, int]:
    return {t: conn.execute(f'SELECT count(*) FROM "{schema}".{t}').fetchone()[0] for t in TABLES}


def dangling_foreign_keys(conn: psycopg.Connection, schema: str) -> dict[str, int]:
    """Rows whose foreign key points at no row, per child.column (all zero when consistent)."""
    s = f'"{schema}"'
    return {
        f"{child}.{column}": conn.execute(
            f"SELECT count(*) FROM {s}.{child} c LEFT JOIN {s}.{parent} p ON p.id = c.{column} "
            f"WHERE c.{column} IS NOT NULL AND p.id IS NULL"
        ).fetchone()[0]
        for child, column, parent in FOREIGN_KEYS
    }


def differences(
    expected: dict[str, Counter], actual: dict[str, Counter], examples: int = 3
) -> dict[str, dict]:
    """Per table: how many identities are missing, duplicated or unexpected (empty when equal)."""
    diff = {}
    for table in TABLES:
        want, have = expected.get(table, Counter()), actual.get(table, Counter())
        missing, extra = want - have, have - want
        duplicated = {k: n for k, n in have.items() if n > 1}
        if missing or extra or duplicated:
            diff[table] = {
                "expected": sum(want.values()),
                "found": sum(have.values()),
                "missing": sum(missing.values()),
                "unexpected": sum(extra.values()),
                "duplicated": len(duplicated),
                "e.g. missing": list(missing)[:examples],
                "e.g. unexpected": list(extra)[:examples],
            }
    return diff


def watermark(conn: psycopg.Connection, sync_schema: str, entity: str) -> int | None:
    row = conn.execute(
        f'SELECT last_id FROM "{sync_schema}".watermarks WHERE entity = %s', (entity,)
    ).fetchone()
    return row[0] if row else None


def bookkeeping_count(conn: psycopg.Connection, sync_schema: str, table: str) -> int:
    return conn.execute(f'SELECT count(*) FROM "{sync_schema}".{table}').fetchone()[0]


# -- data ------------------------------------------------------------------------------------------------


def fill(
    writer,
    *,
    models: int = 3,
    runs_per_version: int = 2,
    points: int = 10,
    predictions: int = 1000,
    tag: str = "",
) -> dict[str, list[int]]:
    """A little of every entity through the hot-path writer; returns the version and run ids."""
    experiment = writer.create_experiment(f"exp{tag}")
    dataset = writer.create_dataset(f"data{tag}", size_bytes=150_000_000_000)
    versions, runs = [], []
    for m in range(models):
        model = writer.create_model(f"model{tag}-{m}", description="d")
        version = writer.create_model_version(model, "1.0")
        versions.append(version)
        for r in range(runs_per_version):
            run = writer.create_training_run(
                version, dataset_id=dataset if r % 2 else None, run_name=f"run{tag}-{m}-{r}"
            )
            runs.append(run)
            writer.log_hyperparameters(run, {"lr": 0.01 * (r + 1), "seed": r})
            for step in range(points):
                writer.log_metric(run, "loss", 1.0 / (step + 1), step=step)
            writer.add_experiment_run(experiment, run, variant_name=f"v{r}")
            writer.update_training_run(run, status="completed", final_loss=0.5)
    log_predictions(writer, versions, predictions, tag)
    return {"versions": versions, "runs": runs}


def log_predictions(
    writer, versions: list[int], count: int, tag: str = "", batch: int = 500
) -> list[int]:
    ids = []
    for start in range(0, count, batch):
        ids += writer.log_predictions(
            [
                {
                    "model_version_id": versions[i % len(versions)],
                    "input_data": {"i": i, "tag": tag, "x": [i * 0.5, -i]},
                    "output_data": {"label": i % 7, "p": 0.125 * (i % 8)},
                    "confidence": 0.9,
                }
                for i in range(start, min(count, start + batch))
            ]
        )
    return ids


def utc_iso(unix_time: float) -> str:
    return datetime.fromtimestamp(unix_time, timezone.utc).replace(tzinfo=None).isoformat()


def write_prediction_by_hand(
    client: redis.Redis,
    prefix: str,
    version_id: int,
    logged_at: float | None = None,
    pause: float = 0.0,
    new_id: int | None = None,
    **fields,
) -> int:
    """A prediction in the old adapter's order: INCR the counter, (pause,) then HSET the hash and ZADD its index.
    With `new_id`, the counter was already INCRed (by the caller, some time before)."""
    logged_at = time.time() if logged_at is None else logged_at
    if new_id is None:
        new_id = client.incr(f"{prefix}counter:prediction")
    if pause:
        time.sleep(pause)
    record = {
        "id": new_id,
        "model_version_id": version_id,
        "input": json.dumps({"n": new_id}),
        "output": json.dumps({"data": new_id % 3}),
        "confidence": "0.5",
        "inference_time_ms": "3.5",
        "timestamp": utc_iso(logged_at),
        "metadata": "{}",
        **fields,
    }
    pipe = client.pipeline(transaction=False)
    pipe.hset(f"{prefix}prediction:{new_id}", mapping=record)
    pipe.zadd(f"{prefix}idx:predictions:{version_id}", {new_id: -logged_at})
    pipe.execute()
    return new_id


# -- writer processes (multiprocessing targets; module level so that spawn can import them) --------------------


def atomic_writer_process(
    redis_url: str,
    prefix: str,
    seed: int,
    seconds: float,
    rate: float,
    versions: list[int],
    runs: list[int],
    out,
) -> None:
    """Log predictions (batches) and metric points at about `rate` records/s with the hot-path RedisWriter.

    Midway it starts a run of its own and logs hyperparameters and metrics for it,
    so children of a run created during the sync cycles are covered too.
    """
    import_without_dagster()
    from rp_pipeline.writer import RedisWriter

    rng = random.Random(seed)
    writer = RedisWriter.from_url(redis_url, key_prefix=prefix)
    predictions: list[int] = []
    points: list[tuple] = []
    own_runs: list[int] = []
    batch, tick = 20, 0
    start = time.monotonic()
    deadline = start + seconds
    while time.monotonic() < deadline:
        tick += 1
        predictions += writer.log_predictions(
            [
                {
                    "model_version_id": rng.choice(versions),
                    "input_data": {"w": seed, "t": tick, "k": k},
                    "output_data": rng.random(),
                    "confidence": rng.random() or 0.5,
                }
                for k in range(batch)
            ]
        )
        if tick == 40:
            run = writer.create_training_run(rng.choice(versions), run_name=f"w{seed}-live")
            writer.log_hyperparameters(run, {"lr": 0.001, "writer": seed})
            own_runs.append(run)
        run = own_runs[0] if own_runs and tick % 2 else rng.choice(runs)
        split = rng.choice(["train", "val:clean"])
        writer.log_metric(run, "acc:top1", rng.random(), step=seed * 1_000_000 + tick, split=split)
        points.append((run, "acc:top1", split, seed * 1_000_000 + tick))
        # Pace to the rate: records written so far vs. time elapsed.
        ahead = (len(predictions) + len(points)) / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
    writer.close()
    out.put(
        {
            "kind": "atomic",
            "seed": seed,
            "predictions": predictions,
            "points": points,
            "runs": own_runs,
        }
    )


def old_adapter_writer_process(
    redis_url: str, prefix: str, seed: int, seconds: float, versions: list[int], out
) -> None:
    """The old adapter's non-atomic order: INCR, a few ms later HSET + ZADD; sometimes a run the same way."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    rng = random.Random(seed)
    predictions: list[int] = []
    runs: list[int] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        # Long enough that a cycle often reads the counter, then the id, inside the gap (the sync
        # re-reads an empty id once, a few ms later, before it decides the record is not written yet).
        predictions.append(
            write_prediction_by_hand(
                client, prefix, rng.choice(versions), pause=rng.uniform(0.01, 0.04)
            )
        )
        if len(predictions) % 100 == 0:
            run_id = client.incr(f"{prefix}counter:run")
            time.sleep(rng.uniform(0.01, 0.04))
            client.hset(
                f"{prefix}run:{run_id}",
                mapping={
                    "id": run_id,
                    "model_version_id": rng.choice(versions),
                    "dataset_id": 0,
                    "run_name": f"old-{run_id}",
                    "status": "started",
                    "started_at": utc_iso(time.time()),
                    "completed_at": "",
                    "duration_seconds": 0,
                    "final_loss": 0,
                    "best_metric_value": 0,
                    "artifacts": "{}",
                },
            )
            client.zadd(f"{prefix}idx:runs", {run_id: run_id})
            runs.append(run_id)
    client.close()
    out.put({"kind": "old", "seed": seed, "predictions": predictions, "points": [], "runs": runs})


def delete_prefix(client: redis.Redis, prefix: str) -> None:
    """Remove every key under a prefix (never FLUSHDB: other tests share the server)."""
    batch = []
    for key in client.scan_iter(match=prefix.replace("[", "\\[") + "*", count=5000):
        batch.append(key)
        if len(batch) >= 5000:
            client.delete(*batch)
            batch = []
    if batch:
        client.delete(*batch)


def environment_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def run_cycle(config, run_id: str = "cycle", migrate_first: bool = True) -> dict:
    """One sync cycle as a scheduled run does it: migrate, open both connections, sync every entity."""
    from rp_pipeline.connections import connect_postgres, connect_redis
    from rp_pipeline.engine import sync_all
    from rp_pipeline.schema import migrate

    if migrate_first:
        migrate(config)
    client = connect_redis(config)
    try:
        conn = connect_postgres(config)
        try:
            return sync_all(client, conn, config, run_id=run_id)
        finally:
            conn.close()
    finally:
        client.close()


def traceback_text(exc: BaseException) -> str:
    """Everything a logger would print for this exception (message, chained causes, frames)."""
    import traceback

    return "".join(traceback.format_exception(exc))
