"""TLS for real: the sync and the writer against TLS-only Redis servers, with the README's URLs.

A throwaway CA and certificates are made with openssl and two TLS-only redis-servers
run on loopback (scripts/services.sh `start_tls_redis`; scripts/test.sh starts them once
for the run, else this module does): one verifies the server only, one also requires a
client certificate. Covers: the README's `rediss://…?ssl_ca_certs=…` URL with the README's
sync and writer ACL users — every entity written and synced (pipelined and raw-socket reads
over TLS); the README's mutual-TLS URL, and the same URL without the client certificate
refused with a line saying so; the CLI exiting 2 with one clear line for a CA that did not
sign the server's certificate, a certificate file that does not exist, and a missing client
certificate.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
import redis

from rp_pipeline.connections import connect_postgres, connect_redis
from rp_pipeline.engine import sync_all
from rp_pipeline.errors import ConnectionProblem
from rp_pipeline.schema import migrate
from rp_pipeline.settings import SyncConfig
from rp_pipeline.writer import RedisWriter

from .acl_support import SYNC_ACL, WRITER_ACL, acl_users, readme_tls_urls
from .cli_support import REPO, clean_env, run_cli
from .faults import fill

TLS_URL, MTLS_URL = readme_tls_urls()


def _services(function: str, directory: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", f'source scripts/services.sh && {function} "$1"', "_", str(directory)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="session")
def tls_dir():
    """The directory of the running TLS servers: scripts/test.sh's, or started here for this session."""
    given = os.environ.get("TEST_REDIS_TLS_DIR")
    if given:
        yield Path(given)
        return
    directory = Path(tempfile.mkdtemp(prefix="rp_pipeline_tls_"))
    started = _services("start_tls_redis", directory)
    if started.returncode != 0:
        _services("stop_tls_redis", directory)
        pytest.fail(f"could not start the TLS Redis servers: {started.stderr.strip()}")
    yield directory
    _services("stop_tls_redis", directory)


def port(tls_dir: Path, mode: str) -> int:
    return int((tls_dir / f"{mode}.port").read_text())


def admin_url(tls_dir: Path, mode: str) -> str:
    """The servers' default user (no password: the servers live for this test run only)."""
    tail = (
        f"&ssl_certfile={tls_dir / 'client.crt'}&ssl_keyfile={tls_dir / 'client.key'}"
        if mode == "mtls"
        else ""
    )
    return f"rediss://127.0.0.1:{port(tls_dir, mode)}/0?ssl_ca_certs={tls_dir / 'ca.crt'}{tail}"


def from_readme(template: str, tls_dir: Path, mode: str, user: str, password: str) -> str:
    """The README's URL with this machine's server, files and user put in its placeholders."""
    return (
        template.replace("rp_sync:CHANGE-ME", f"{user}:{password}")
        .replace("redis.example.com:6380", f"127.0.0.1:{port(tls_dir, mode)}")
        .replace("/etc/rp_pipeline/redis-ca.crt", str(tls_dir / "ca.crt"))
        .replace("/etc/rp_pipeline/client.crt", str(tls_dir / "client.crt"))
        .replace("/etc/rp_pipeline/client.key", str(tls_dir / "client.key"))
    )


@pytest.fixture(params=["tls", "mtls"])
def mode(request):
    return request.param


@pytest.fixture
def tls_users(tls_dir, mode, key_prefix):
    """README users on the TLS server; the test's keys there are deleted afterwards."""
    with acl_users(admin_url(tls_dir, mode), key_prefix) as users:
        yield users
        for key in users.admin.scan_iter(match=f"{key_prefix}*", count=5000):
            users.admin.delete(key)


def test_sync_and_writer_over_tls_with_the_readme_urls_and_users(
    mode, tls_dir, tls_users, key_prefix, sync_config, pg_conn
):
    template = {"tls": TLS_URL, "mtls": MTLS_URL}[mode]
    writer_user, _ = tls_users.create(WRITER_ACL)
    sync_user, _ = tls_users.create(SYNC_ACL)
    writer_url = from_readme(template, tls_dir, mode, writer_user, tls_users.passwords[writer_user])
    sync_url = from_readme(template, tls_dir, mode, sync_user, tls_users.passwords[sync_user])

    with RedisWriter.from_url(writer_url, key_prefix=key_prefix) as writer:
        fill(writer, models=2, runs_per_version=2, points=3, predictions=3000)
    config = dataclasses.replace(sync_config, redis_url=sync_url)
    migrate(config)
    client, conn = connect_redis(config), connect_postgres(config)
    try:
        assert client.connection_pool.connection_class is redis.connection.SSLConnection
        results = sync_all(client, conn, config)
    finally:
        client.close()
        conn.close()

    assert {name: r.inserted for name, r in results.items()} == {
        "models": 2,
        "model_versions": 2,
        "datasets": 1,
        "training_runs": 4,
        "hyperparameters": 8,
        "metrics": 12,
        "experiments": 1,
        "experiment_runs": 4,
        "predictions": 3000,
    }
    assert all(r.rejected == 0 for r in results.values())
    assert pg_conn.execute("SELECT count(*) FROM predictions").fetchone()[0] == 3000


def test_mutual_tls_without_a_client_certificate_is_refused_with_a_clear_line(tls_dir):
    url = from_readme(MTLS_URL, tls_dir, "mtls", "default", "unused")
    without_certificate = url.split("&ssl_certfile=")[0]

    with pytest.raises(ConnectionProblem) as failure:
        connect_redis(SyncConfig(redis_url=without_certificate))

    assert "requires a client certificate" in str(failure.value)
    assert "ssl_certfile=/path/client.crt&ssl_keyfile=/path/client.key" in str(failure.value)


@pytest.mark.parametrize(
    "case, expected",
    [
        ("a CA that did not sign it", "presented a TLS certificate this client does not trust"),
        (
            "a CA file that does not exist",
            "REDIS_URL names a TLS file that does not exist: ssl_ca_certs=",
        ),
        ("no client certificate for mutual TLS", "requires a client certificate"),
    ],
)
def test_cli_exits_2_with_one_line_for_a_tls_setup_that_fails(
    case, expected, tls_dir, key_prefix, postgres_url, work_dir
):
    tls = f"rediss://127.0.0.1:{port(tls_dir, 'tls')}/0?ssl_ca_certs="
    url = {
        "a CA that did not sign it": tls + str(tls_dir / "other-ca.crt"),
        "a CA file that does not exist": tls + str(tls_dir / "no-such-ca.crt"),
        "no client certificate for mutual TLS": admin_url(tls_dir, "mtls").split("&ssl_certfile=")[
            0
        ],
    }[case]
    env = clean_env(REDIS_URL=url, REDIS_KEY_PREFIX=key_prefix, POSTGRES_URL=postgres_url)

    done = run_cli(["--once"], env, work_dir, timeout=60)

    assert done.returncode == 2, done.stdout + done.stderr
    errors = done.stderr.splitlines()
    assert len(errors) == 1 and errors[0].startswith("Error: ") and expected in errors[0], errors
    assert "Traceback" not in done.stdout + done.stderr
