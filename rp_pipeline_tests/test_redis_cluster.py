"""Redis Cluster as a source, and the REDIS_URL forms the sync refuses.

A real 3-primary Redis Cluster runs on loopback (scripts/services.sh `start_redis_cluster`;
scripts/test.sh starts it once for the run, else this module does). Covers: the sync detects
the cluster from the server itself (no setting) and reads every entity and the layout's quirks
exactly as from a single node — the same application calls, through the original adapter's
way of writing (spec_writer.py), go into the cluster and into a single Redis, both are synced
into their own schemas and all nine tables compare equal except ids and origins; predictions
written over all three primaries; a slot moved between cycles while the sync keeps its slot map
(MOVED) and a slot half-migrated during a cycle (ASK), every prediction in Postgres exactly
once; a primary that dies before a cycle reads it (the sync's slot map still names it): the
predictions entity fails with a message naming the node, nothing of it committed; retention on a cluster (hash and index in different slots); the README's sync ACL user,
refused with one line naming `+cluster|slots` until the README's cluster line is applied;
`RedisWriter` against the cluster (ordered single-key writes) with writer processes logging
while sync cycles run back to back — every record in Postgres exactly once, nothing left
pending; a database other than 0 on a cluster node, a comma-separated REDIS_URL and a db path
that is not a number, each refused by the CLI with exit 2 and one line.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import re
import shlex
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from rp_pipeline.connections import connect_postgres, connect_redis
from rp_pipeline.engine import sync_all
from rp_pipeline.entities import PREDICTIONS
from rp_pipeline.errors import PermissionProblem, SyncFailed
from rp_pipeline.schema import migrate
from rp_pipeline.settings import ConfigError, SyncConfig
from rp_pipeline.writer import RedisWriter

from .acl_support import README, SYNC_ACL
from .cli_support import REPO, clean_env, run_cli
from .faults import TABLES, atomic_writer_process, fill
from .spec_writer import SpecWriter

# Foreign keys → the table they name: compared through the referenced row's values, never its id.
REFERENCES = {
    "model_id": "models",
    "model_version_id": "model_versions",
    "dataset_id": "datasets",
    "training_run_id": "training_runs",
    "experiment_id": "experiments",
}
CLOCK = "2025-11-22T10:30:00.123456"


def _services(function: str, directory: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", f'source scripts/services.sh && {function} "$1"', "_", str(directory)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="session")
def cluster_ports():
    """The ports of the running cluster's primaries: scripts/test.sh's, or started here for this session."""
    given = os.environ.get("TEST_REDIS_CLUSTER_DIR")
    if given:
        yield [int(p) for p in (Path(given) / "ports").read_text().split()]
        return
    directory = Path(tempfile.mkdtemp(prefix="rp_pipeline_cluster_"))
    started = _services("start_redis_cluster", directory)
    if started.returncode != 0:
        _services("stop_redis_cluster", directory)
        pytest.fail(f"could not start the Redis Cluster: {started.stderr.strip()}")
    yield [int(p) for p in (directory / "ports").read_text().split()]
    _services("stop_redis_cluster", directory)


@pytest.fixture
def cluster_url(cluster_ports) -> str:
    return f"redis://127.0.0.1:{cluster_ports[0]}"


@pytest.fixture
def cluster(cluster_url, key_prefix):
    """A RedisCluster client; every key of this test's prefix is deleted afterwards, on every primary."""
    client = RedisCluster.from_url(cluster_url, decode_responses=True)
    yield client
    for key in list(
        client.scan_iter(match=f"{key_prefix}*", count=5000, target_nodes=RedisCluster.PRIMARIES)
    ):
        client.delete(key)
    client.close()


@pytest.fixture
def cluster_config(sync_config, cluster_url, postgres_url):
    """The test's config with the cluster as its source and a second pair of schemas of its own."""
    tag = uuid.uuid4().hex[:10]
    config = dataclasses.replace(
        sync_config, redis_url=cluster_url, schema=f"c_{tag}", sync_schema=f"cs_{tag}"
    )
    yield config
    with connect_postgres(config) as conn:
        for schema in (config.schema, config.sync_schema):
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def sync_once(config: SyncConfig, client=None, **options) -> dict:
    migrate(config)
    own = client is None
    client = connect_redis(config) if own else client
    try:
        with connect_postgres(config) as conn:
            return sync_all(client, conn, config, run_id=uuid.uuid4().hex, **options)
    finally:
        if own:
            client.close()


def write_everything(client, prefix: str) -> None:
    """Every entity and the layout's quirks, through the original adapter's separate commands."""
    w = SpecWriter(client, prefix, clock=lambda: CLOCK)
    resnet = w.create_model(
        "ResNet",
        description='مدل «چهره» "q" \\ tab\t; DROP TABLE models; --',
        architecture="ResNet-50",
        framework="pytorch",
    )
    twin = w.create_model(
        "ResNet", description="same name, later id"
    )  # names are not unique in Redis
    bert = w.create_model("bert")
    versions = [
        w.create_model_version(resnet, "1.0", config={"lr": float("nan"), "layers": [3, 4]}),
        w.create_model_version(twin, "1.0"),  # the same (model, version) under a second id
        w.create_model_version(twin, "2.0", status="staging"),
        w.create_model_version(bert, "0.1"),
    ]
    imagenet = w.create_dataset(
        "ImageNet",
        size_bytes=150_000_000_000,
        num_samples=14_197_122,
        split_info={"train": 0.9},
        preprocessing={"std": float("inf")},
    )
    runs = []
    for n, version in enumerate(versions * 3):
        run = w.create_training_run(
            version, dataset_id=dataset_or_none(imagenet, n), run_name=f"run {n}"
        )
        if n % 2:
            w.update_training_run(
                run,
                status="completed",
                completed_at="2025-11-22T14:00:00+03:30",
                duration_seconds=10.5 + n,
                final_loss=0.25,
                best_metric_value=0.75,
                artifacts={"curve": [1.0, float("-inf")]},
            )
        w.log_hyperparameters(run, {"lr": 0.1 * n, "optimizer": "sgd", "layers": [1, n]})
        for epoch in range(3):
            w.log_metric(run, "loss", 1.0 / (epoch + 1), epoch=epoch, split="train")
            w.log_metric(run, "acc:top1", 0.5 + epoch / 10, step=100 * epoch, split="val:clean")
        runs.append(run)
    experiment = w.create_experiment("augmentations", hypothesis="more aug helps")
    for run in runs[:5]:
        w.add_experiment_run(experiment, run, variant_name=f"v{run}", notes="n")
    for n in range(300):  # spread over every primary's slots
        w.log_prediction(
            versions[n % 4],
            {"x": n},
            [n, float("nan")],
            confidence=(n % 10) / 10,
            inference_time_ms=n % 7,
            metadata={"n": n} if n % 3 else None,
        )
    # Quirks: a version whose model has no hash (waits in pending), corrupt values (rejected).
    w.create_model_version(9_999, "orphan")
    bad = w.log_prediction(versions[0], {"x": "bad"}, "y")
    client.hset(f"{prefix}prediction:{bad}", "confidence", "abc")
    broken = w.create_dataset("broken JSON")
    client.hset(f"{prefix}dataset:{broken}", "split_info", "{not json")


def dataset_or_none(dataset_id: int, n: int) -> int | None:
    return dataset_id if n % 3 else None


def tables(conn, schema: str) -> dict[str, list[str]]:
    """Every row of the nine tables, with ids and origins left out and each foreign key replaced by the
    referenced row's own values, sorted: two schemas synced from the same data compare equal."""
    fingerprints: dict[str, dict[int, str]] = {}
    contents = {}
    for table in (
        "models",
        "datasets",
        "experiments",
        "model_versions",
        "training_runs",
        "hyperparameters",
        "metrics",
        "experiment_runs",
        "predictions",
    ):
        cursor = conn.execute(f'SELECT * FROM "{schema}"."{table}"')
        names = [c.name for c in cursor.description]
        rows = {}
        for number, row in enumerate(cursor.fetchall()):
            values = dict(zip(names, row))
            kept = tuple(
                (
                    name,
                    fingerprints[REFERENCES[name]].get(value)
                    if name in REFERENCES and value is not None
                    else value,
                )
                for name, value in values.items()
                if name != "id"
                and not name.startswith("origin")
                and name not in REFERENCES.values()
            )
            rows[values.get("id", number)] = repr(kept)
        fingerprints[table] = rows
        contents[table] = sorted(rows.values())
    return contents


def test_every_entity_syncs_from_a_cluster_exactly_as_from_a_single_node(
    cluster, cluster_config, cluster_ports, redis_client, key_prefix, sync_config, postgres_url
):
    write_everything(cluster, key_prefix)
    write_everything(redis_client, key_prefix)
    per_node = [len(redis.Redis(port=p).keys(f"{key_prefix}prediction:*")) for p in cluster_ports]
    assert all(per_node), f"predictions not spread over the three primaries: {per_node}"

    from_cluster, from_node = sync_once(cluster_config), sync_once(sync_config)

    assert isinstance(connect_redis(cluster_config), RedisCluster)

    def counts(results):
        return {name: (r.read, r.inserted, r.rejected, r.pending) for name, r in results.items()}

    assert counts(from_cluster) == counts(from_node)
    with connect_postgres(sync_config) as conn:
        expected, actual = tables(conn, sync_config.schema), tables(conn, cluster_config.schema)
        rejected = [
            conn.execute(f'SELECT count(*) FROM "{s}".rejected_records').fetchone()[0]
            for s in (sync_config.sync_schema, cluster_config.sync_schema)
        ]
    assert len(expected["predictions"]) == 300 and len(expected["metrics"]) == 72
    for table in TABLES:
        assert actual[table] == expected[table], table
    assert rejected[0] == rejected[1] >= 2


def key_slot(client: RedisCluster, key: str) -> tuple[int, redis.Redis, str]:
    """(slot, the primary serving it as a plain client, its node id)."""
    slot = client.keyslot(key)
    node = client.nodes_manager.get_node_from_slot(slot)
    plain = redis.Redis(host=node.host, port=node.port, decode_responses=True)
    return slot, plain, plain.execute_command("CLUSTER MYID")


def start_migration(
    client: RedisCluster, key: str, ports: list[int]
) -> tuple[int, redis.Redis, redis.Redis, str]:
    """Put the key's slot in MIGRATING/IMPORTING state and move every key of it to another primary."""
    slot, source, _ = key_slot(client, key)
    target = next(
        redis.Redis(port=p, decode_responses=True)
        for p in ports
        if p != source.connection_pool.connection_kwargs["port"]
    )
    target_id = target.execute_command("CLUSTER MYID")
    target.execute_command(
        "CLUSTER SETSLOT", slot, "IMPORTING", source.execute_command("CLUSTER MYID")
    )
    source.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
    port = target.connection_pool.connection_kwargs["port"]
    while keys := source.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
        for moving in keys:
            source.execute_command("MIGRATE", "127.0.0.1", port, moving, 0, 5000)
    return slot, source, target, target_id


def finish_migration(slot: int, target_id: str, ports: list[int]) -> None:
    for p in ports:
        redis.Redis(port=p).execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)


def prediction_origins(conn, schema: str) -> list[int]:
    return [
        r for (r,) in conn.execute(f'SELECT origin_redis_id FROM "{schema}".predictions ORDER BY 1')
    ]


def test_slots_moved_between_and_during_cycles_lose_and_duplicate_nothing(
    cluster, cluster_config, cluster_ports, key_prefix
):
    w = SpecWriter(cluster, key_prefix, clock=lambda: CLOCK)
    model = w.create_model("m")
    version = w.create_model_version(model, "1")
    for n in range(100):
        w.log_prediction(version, {"n": n}, n)
    client = connect_redis(cluster_config)  # kept across cycles: its slot map goes stale
    try:
        assert sync_once(cluster_config, client)["predictions"].inserted == 100
        for n in range(100, 200):
            w.log_prediction(version, {"n": n}, n)
        # Between cycles: a slot holding a new prediction moves for good (the kept client's map says otherwise).
        moved, _, _, moved_to = start_migration(
            cluster, f"{key_prefix}prediction:150", cluster_ports
        )
        finish_migration(moved, moved_to, cluster_ports)
        # During the next cycle: another slot is half-way (keys moved, slot still MIGRATING: ASK).
        half = start_migration(cluster, f"{key_prefix}prediction:170", cluster_ports)
        assert half[0] != moved
        try:
            assert sync_once(cluster_config, client)["predictions"].inserted == 100
            with connect_postgres(cluster_config) as conn:
                assert prediction_origins(conn, cluster_config.schema) == list(range(1, 201))
        finally:
            finish_migration(half[0], half[3], cluster_ports)
        for n in range(200, 250):
            w.log_prediction(version, {"n": n}, n)
        sync_once(cluster_config, client)
        with connect_postgres(cluster_config) as conn:
            assert prediction_origins(conn, cluster_config.schema) == list(range(1, 251))
    finally:
        client.close()


@pytest.fixture
def own_cluster_ports():
    """A cluster of this test's own, for a test that stops one of its nodes."""
    directory = Path(tempfile.mkdtemp(prefix="rp_pipeline_cluster_"))
    started = _services("start_redis_cluster", directory)
    if started.returncode != 0:
        _services("stop_redis_cluster", directory)
        pytest.fail(f"could not start the Redis Cluster: {started.stderr.strip()}")
    yield [int(p) for p in (directory / "ports").read_text().split()]
    _services("stop_redis_cluster", directory)


def test_a_node_lost_during_a_cycle_fails_the_entity_with_nothing_committed(
    own_cluster_ports, cluster_config
):
    config = dataclasses.replace(
        cluster_config, redis_url=f"redis://127.0.0.1:{own_cluster_ports[0]}"
    )
    client = connect_redis(config)
    w = SpecWriter(client, config.key_prefix, clock=lambda: CLOCK)
    version = w.create_model_version(w.create_model("m"), "1")
    for n in range(60):
        w.log_prediction(version, {"n": n}, n)
    sync_once(config, client)
    for n in range(60, 200):
        w.log_prediction(version, {"n": n}, n)
    # A primary that holds new predictions but neither the marker nor the counter, so the failure meets the reads.
    needed = {
        client.get_node_from_key(config.key_prefix + k).port
        for k in ("rp_pipeline:generation", "counter:prediction")
    }
    lost = next(p for p in own_cluster_ports if p not in needed)
    redis.Redis(port=lost).shutdown(nosave=True)

    with pytest.raises(SyncFailed) as failed:
        sync_once(config, client, entities=(PREDICTIONS,))

    assert f"Redis Cluster node 127.0.0.1:{lost} failed while answering HMGET" in str(failed.value)
    assert "nothing committed" in str(failed.value)
    with connect_postgres(config) as conn:
        assert prediction_origins(conn, config.schema) == list(range(1, 61))
    client.close()


def test_retention_on_a_cluster_deletes_each_synced_hash_and_its_index_entry(
    cluster, cluster_config, key_prefix
):
    w = SpecWriter(cluster, key_prefix, clock=lambda: CLOCK)
    version = w.create_model_version(w.create_model("m"), "1")
    old = [w.log_prediction(version, {"n": n}, n) for n in range(20)]
    index = f"{key_prefix}idx:predictions:{version}"
    cluster.zadd(index, {str(i): -(time.time() - 7200) for i in old})  # logged two hours ago
    kept = w.log_prediction(version, {"n": "new"}, 0)
    assert cluster.keyslot(index) != cluster.keyslot(f"{key_prefix}prediction:{old[0]}")

    results = sync_once(dataclasses.replace(cluster_config, retention_hours={"predictions": 1}))

    assert results["predictions"].inserted == 21 and results["predictions"].deleted == 20
    assert [cluster.exists(f"{key_prefix}prediction:{i}") for i in old] == [0] * 20
    assert cluster.zrange(index, 0, -1) == [str(kept)]
    with connect_postgres(cluster_config) as conn:
        assert prediction_origins(conn, cluster_config.schema) == [*old, kept]


def test_the_metrics_exporter_reads_every_node_of_a_cluster(cluster, cluster_config, key_prefix):
    """The counters live in different slots: the exporter must read them all, not the first node's only."""
    from prometheus_client import CollectorRegistry, generate_latest

    from rp_pipeline.exporter import SyncCollector

    w = SpecWriter(cluster, key_prefix, clock=lambda: CLOCK)
    model = w.create_model("m")
    version = w.create_model_version(model, "1")
    for n in range(5):
        w.log_prediction(version, {"n": n}, n)
    sync_once(cluster_config)
    for n in range(3):
        w.log_prediction(version, {"n": n}, n)
    counters = [f"{key_prefix}counter:{name}" for name in ("model", "version", "prediction")]
    assert len({cluster.keyslot(k) for k in counters}) > 1
    collector = SyncCollector(cluster_config)
    registry = CollectorRegistry()
    registry.register(collector)
    try:
        text = generate_latest(registry).decode()
    finally:
        collector.close()
    backlog = {
        line.split("{")[1].split(",")[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("rp_pipeline_backlog_records{")
    }
    assert backlog['entity="predictions"'] == 3
    assert backlog['entity="models"'] == 0 and backlog['entity="model_versions"'] == 0
    assert 'rp_pipeline_up{target="redis"} 1.0' in text


def test_the_cache_warm_refuses_a_cluster_before_writing_anything(
    cluster, cluster_config, key_prefix
):
    from rp_pipeline.settings import ConfigError
    from rp_pipeline.warm import warm

    w = SpecWriter(cluster, key_prefix, clock=lambda: CLOCK)
    w.create_model_version(w.create_model("m"), "1")
    sync_once(cluster_config)
    counters = {
        k: cluster.get(k) for k in (f"{key_prefix}counter:model", f"{key_prefix}counter:version")
    }
    client = connect_redis(cluster_config)
    try:
        with (
            connect_postgres(cluster_config) as conn,
            pytest.raises(ConfigError, match="Redis Cluster"),
        ):
            warm(client, conn, cluster_config)
    finally:
        client.close()
    assert {k: cluster.get(k) for k in counters} == counters  # no id allocated


def test_the_backlog_sensor_counts_every_node_of_a_cluster(cluster, cluster_url, key_prefix):
    from rp_pipeline.schedules import records_waiting

    w = SpecWriter(cluster, key_prefix, clock=lambda: CLOCK)
    version = w.create_model_version(w.create_model("m"), "1")
    for n in range(4):
        w.log_prediction(version, {"n": n}, n)
    resource = SyncConfig(redis_url=cluster_url, key_prefix=key_prefix)
    assert records_waiting(resource, {}) == 1 + 1 + 4  # model, version, predictions
    assert records_waiting(resource, {"models": 1, "model_versions": 1, "predictions": 3}) == 1


def cluster_acl_lines() -> list[str]:
    """The README's sync ACL line and its cluster line (`ACL SETUSER rp_sync +cluster|slots`)."""
    lines = re.findall(r"^ACL SETUSER rp_sync \+cluster\|slots$", README, re.M)
    assert len(lines) == 1, "README should have one 'ACL SETUSER rp_sync +cluster|slots' line"
    return [SYNC_ACL, lines[0]]


def test_the_readme_sync_user_needs_its_cluster_line_and_then_reads_the_cluster(
    cluster, cluster_config, cluster_ports, key_prefix
):
    user, password = f"rp_acl_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    nodes = [redis.Redis(port=p) for p in cluster_ports]

    def apply(line: str) -> None:  # ACL users are per node: every node gets every line
        words = shlex.split(line.replace("CHANGE-ME", password).replace("aidb:", key_prefix))
        for node in nodes:
            node.execute_command("ACL", "SETUSER", user, *words[3:])

    w = SpecWriter(cluster, key_prefix, clock=lambda: CLOCK)
    version = w.create_model_version(w.create_model("m"), "1")
    for n in range(50):
        w.log_prediction(version, {"n": n}, n)
    config = dataclasses.replace(
        cluster_config, redis_url=f"redis://{user}:{password}@127.0.0.1:{cluster_ports[1]}"
    )
    base, cluster_line = cluster_acl_lines()
    try:
        apply(base)
        with pytest.raises(PermissionProblem) as refused:
            connect_redis(config)
        assert f"ACL SETUSER {user} +cluster|slots" in str(refused.value) and password not in str(
            refused.value
        )
        apply(cluster_line)
        results = sync_once(config)
        assert results["predictions"].inserted == 50 and results["models"].inserted == 1
    finally:
        for node in nodes:
            node.execute_command("ACL", "DELUSER", user)


def test_writer_processes_on_a_cluster_lose_and_duplicate_nothing_across_cycles(
    cluster, cluster_url, cluster_config, key_prefix
):
    with RedisWriter.from_url(cluster_url, key_prefix=key_prefix) as writer:
        assert writer.on_cluster
        setup = fill(writer, models=3, runs_per_version=1, points=3, predictions=100)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(
            target=atomic_writer_process,
            args=(cluster_url, key_prefix, seed, 5.0, 400, setup["versions"], setup["runs"], out),
        )
        for seed in (1, 2)
    ]
    migrate(cluster_config)
    client = connect_redis(cluster_config)
    reports, cycles = [], 0
    try:
        for proc in procs:
            proc.start()
        deadline = time.monotonic() + 90
        while len(reports) < len(procs):  # cycles back to back until every writer has reported
            sync_once(cluster_config, client)
            cycles += 1
            while not out.empty():
                reports.append(out.get())
            assert time.monotonic() < deadline, "writers did not finish"
        for proc in procs:
            proc.join(timeout=30)
            assert proc.exitcode == 0
        sync_once(cluster_config, client)
    finally:
        client.close()
    assert cycles >= 2
    written = sorted(i for r in reports for i in r["predictions"])
    points = sorted(
        (run, name, split, step) for r in reports for run, name, split, step in r["points"]
    )
    with connect_postgres(cluster_config) as conn:
        s = cluster_config.schema
        assert prediction_origins(conn, s) == list(range(1, 101)) + written
        assert (
            sorted(
                conn.execute(
                    f'SELECT r.origin_redis_id, m.metric_name, m.split, m.step FROM "{s}".metrics m '
                    f'JOIN "{s}".training_runs r ON r.id = m.training_run_id WHERE m.metric_name = %s',
                    ("acc:top1",),
                ).fetchall()
            )
            == points
        )
        assert (
            conn.execute(f'SELECT count(*) FROM "{cluster_config.sync_schema}".pending').fetchone()[
                0
            ]
            == 0
        )
        assert (
            conn.execute(
                f'SELECT count(*) FROM "{cluster_config.sync_schema}".rejected_records'
            ).fetchone()[0]
            == 0
        )


def test_a_database_other_than_0_on_a_cluster_node_is_refused(cluster_url, cluster_config):
    with pytest.raises(ConfigError, match="a cluster has only database 0"):
        connect_redis(dataclasses.replace(cluster_config, redis_url=f"{cluster_url}/3"))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis://127.0.0.1:6379,127.0.0.1:6380/0",
            "write each source as a whole URL, separated by commas",
        ),
        (
            "redis://127.0.0.1:6379/14,redis://127.0.0.1:6379/14",
            "names the same Redis and key prefix 'aidb:' twice",
        ),
        ("redis://127.0.0.1:6379/1,redis://127.0.0.1:6379/fourteen", "'fourteen' is not a number"),
        ("redis://127.0.0.1:6379/fourteen", "database 'fourteen' is not a number"),
        ("redis://127.0.0.1:6379/1/2", "database '1/2' is not a number"),
        ("http://127.0.0.1:6379/0", "must start with redis://, rediss:// or unix://"),
    ],
)
def test_a_redis_url_the_sync_would_misread_is_refused_with_one_line(
    url, expected, postgres_url, work_dir
):
    done = run_cli(
        ["--once"], clean_env(REDIS_URL=url, POSTGRES_URL=postgres_url), work_dir, timeout=60
    )

    assert done.returncode == 2, done.stdout + done.stderr
    errors = done.stderr.splitlines()
    assert len(errors) == 1 and errors[0].startswith("Error: ") and expected in errors[0], errors
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.")):
        SyncConfig(redis_url=url)
