"""Credentials never shown, values never spliced into SQL, TLS settings passed through untouched.

Covers: with passwords in REDIS_URL and POSTGRES_URL a full sync logs, returns,
reports (Dagster metadata, run history, bookkeeping) and describes nothing that
contains them; connection errors (closed ports, an unknown database, TLS refused)
never contain them; a record made of SQL fragments loads verbatim, drops nothing,
and — read off the wire through a recording proxy — reaches Postgres only as COPY
data or bound parameters, never inside a statement's text; `rediss://` and
`sslmode=require` survive every URL helper and really make the drivers start a
TLS handshake; `redact_url` hides every password, percent-encoded or as the
drivers would read it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import threading
import uuid
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict
from redis.connection import SSLConnection, parse_url

from rp_pipeline.assets import materialization_metadata
from rp_pipeline.connections import connect_postgres, connect_redis
from rp_pipeline.engine import sync_all
from rp_pipeline.errors import ConnectionProblem
from rp_pipeline.schema import migrate
from rp_pipeline.settings import SyncConfig, psycopg_url, redact_url, sqlalchemy_url

from .faults import (
    TcpProxy,
    free_port,
    postgres_frontend_messages,
    table_counts,
    traceback_text,
    with_address,
)

PG_PASSWORD = "PgPw-9c1d-secret"
REDIS_PASSWORD = "RdPw-4b7a-secret"


def fill_some(writer, text: str = "plain") -> None:
    model = writer.create_model(f"model {text}", description=text)
    version = writer.create_model_version(model, "1.0", config={"note": text})
    dataset = writer.create_dataset(f"dataset {text}", description=text)
    run = writer.create_training_run(version, dataset_id=dataset, run_name=text)
    writer.log_hyperparameters(run, {text: text, "lr": 0.1})
    writer.log_metric(run, text, 0.5, step=1, split=text)
    experiment = writer.create_experiment(f"experiment {text}", hypothesis=text)
    writer.add_experiment_run(experiment, run, variant_name=text, notes=text)
    writer.log_prediction(version, {"q": text}, {"a": text}, confidence=0.7, metadata={"m": text})


# -- passwords --------------------------------------------------------------------------------------------


def test_passwords_never_reach_logs_results_metadata_or_bookkeeping(
    writer, redis_client, key_prefix, sync_config, caplog, pg_conn
):
    fill_some(writer)
    redis_client.hset(f"{key_prefix}model:999", mapping={"description": "no name: rejected"})
    redis_client.zadd(f"{key_prefix}idx:models", {"999": 999})
    config = dataclasses.replace(
        sync_config,
        postgres_url=with_address(sync_config.postgres_url, 5432, PG_PASSWORD, "postgres"),
        redis_url=with_address(sync_config.redis_url, 6379, REDIS_PASSWORD, "default"),
    )
    caplog.set_level(logging.DEBUG)
    logging.getLogger("rp_pipeline").info("config: %s", config.describe())

    migrate(config)
    client, conn = connect_redis(config), connect_postgres(config)
    try:
        results = sync_all(
            client, conn, config, run_id="secret-check", logger=logging.getLogger("rp_pipeline")
        )
    finally:
        client.close()
        conn.close()

    assert results["models"].rejected == 1 and results["predictions"].inserted == 1
    shown = [
        caplog.text,
        config.describe(),
        config.redis_address,
        repr(results),
        json.dumps([r.as_dict() for r in results.values()], default=str),
        repr([materialization_metadata(r, config, "ai_models") for r in results.values()]),
    ]
    for table in (
        "watermarks",
        "id_map",
        "pending",
        "rejected_records",
        "entity_runs",
        "metric_series",
        "state",
        "sources",
        "sync_status",
        "table_rows",
    ):
        shown += [
            row[0]
            for row in pg_conn.execute(f'SELECT t::text FROM "{config.sync_schema}".{table} t')
        ]
    shown += [row[0] for row in pg_conn.execute("SELECT DISTINCT origin_source FROM predictions")]
    for text in shown:
        assert PG_PASSWORD not in text and REDIS_PASSWORD not in text
    assert "***" in config.describe()


def _closed(url: str, password: str, user: str) -> str:
    return with_address(url, free_port(), password, user)


@pytest.mark.parametrize(
    "case",
    [
        "postgres closed port",
        "postgres unknown database",
        "postgres TLS refused",
        "redis closed port",
    ],
)
def test_connection_errors_never_show_the_password(case, sync_config):
    pg, rd = sync_config.postgres_url, sync_config.redis_url
    url = {
        "postgres closed port": _closed(pg, PG_PASSWORD, "postgres"),
        "postgres unknown database": with_address(pg, 5432, PG_PASSWORD, "postgres").rsplit("/", 1)[
            0
        ]
        + "/no_such_db",
        "postgres TLS refused": with_address(pg, 5432, PG_PASSWORD, "postgres")
        + "?sslmode=require",
        "redis closed port": _closed(rd, REDIS_PASSWORD, "default"),
    }[case]
    config = dataclasses.replace(
        sync_config, **({"redis_url": url} if case.startswith("redis") else {"postgres_url": url})
    )
    connect = connect_redis if case.startswith("redis") else connect_postgres
    try:
        connect(config).close()
    except ConnectionProblem as exc:
        message, text = str(exc), traceback_text(exc)
    else:  # a server with TLS enabled accepts sslmode=require: then there is no error to check
        assert case == "postgres TLS refused"
        return
    assert PG_PASSWORD not in text and REDIS_PASSWORD not in text
    assert "127.0.0.1" in message


INVALID_BUT_SECRET = [  # passwords written without percent-encoding; libpq reads the first three as given
    ("postgresql://postgres:{}@127.0.0.1:5432/db", "pa#ss-secret"),
    ("postgresql://postgres:{}@127.0.0.1:5432/db", "pa?ss-secret"),
    ("postgresql://postgres:{}@127.0.0.1:5432/db?sslmode=require", "x#y-secret"),
    ("redis://default:{}@127.0.0.1:6379/0", "pa#ss-secret"),
]


@pytest.mark.parametrize("template, password", INVALID_BUT_SECRET)
def test_redact_url_hides_passwords_with_unencoded_reserved_characters(template, password):
    assert password not in redact_url(template.format(password))


def test_invalid_redis_url_error_does_not_echo_the_password():
    secret = "pa#ss-" + "secret"  # built, so the traceback's own source lines do not spell it
    url = f"redis://default:{secret}@127.0.0.1:6379/0"
    with pytest.raises(ConnectionProblem) as failure:
        connect_redis(SyncConfig(redis_url=url))
    assert secret not in traceback_text(failure.value)


def test_postgres_error_for_a_url_libpq_accepts_is_clear_and_hides_the_password():
    url = f"postgresql://postgres:pa#ss-secret@127.0.0.1:{free_port()}/db"
    assert conninfo_to_dict(url)["password"] == "pa#ss-secret"  # the driver would use it as is
    with pytest.raises(ConnectionProblem) as failure:
        connect_postgres(SyncConfig(postgres_url=url))
    assert "pa#ss-secret" not in traceback_text(failure.value)


SECRET = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=30
).map(
    lambda s: "Zq9" + s
)  # a prefix that occurs nowhere else in the URL, so a hit is the password itself


@settings(max_examples=300, deadline=None, database=None)
@given(
    password=SECRET,
    user=st.sampled_from(["", "postgres", "app user", "u:x"]),
    scheme=st.sampled_from(["postgresql", "postgresql+psycopg", "postgres", "redis", "rediss"]),
    host=st.sampled_from(["127.0.0.1:5432", "db.example.com", "[::1]:6379", "localhost"]),
    tail=st.sampled_from(
        ["/db", "/0", "/db?sslmode=require", "", "/db?sslmode=verify-full&sslrootcert=/ca.pem"]
    ),
)
def test_redact_url_never_shows_a_percent_encoded_password(password, user, scheme, host, tail):
    url = f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{host}{tail}"
    shown = redact_url(url)
    assert password not in shown and quote(password, safe="") not in shown
    assert quote(password, safe="")[:6] not in shown.split("@")[0]


@settings(max_examples=300, deadline=None, database=None)
@given(password=SECRET)
def test_redact_url_hides_whatever_password_the_drivers_would_read(password):
    pg = f"postgresql://postgres:{password}@127.0.0.1:5432/db?sslmode=require"
    try:
        pg_password = conninfo_to_dict(pg).get("password")
    except Exception:  # libpq refuses the URL (e.g. a raw space): nothing would connect with it
        pg_password = None
    if pg_password:
        assert pg_password not in redact_url(pg)
    rd = f"redis://default:{password}@127.0.0.1:6379/0"
    try:
        rd_password = parse_url(rd).get("password")
    except ValueError:
        rd_password = None
    if rd_password:
        assert rd_password not in redact_url(rd)


# -- values only as data ------------------------------------------------------------------------------------


def test_sql_fragments_load_verbatim_and_reach_postgres_only_as_data(
    redis_url, key_prefix, sync_config, pg_conn
):
    from rp_pipeline.writer import RedisWriter

    canary = f"canary{uuid.uuid4().hex[:12]}"
    nasty = f"'); DROP TABLE models; -- \" $$; DROP SCHEMA public CASCADE; $$ \\'; {canary}"
    prefix = (
        key_prefix + "x'); DROP TABLE models; --:"
    )  # still under the fixture's prefix, so cleaned up
    with RedisWriter.from_url(redis_url, key_prefix=prefix) as writer:
        fill_some(writer, nasty)
        writer.client.hset(
            f"{prefix}model:50", mapping={"name": nasty + " bad", "created_at": nasty}
        )  # rejected
        writer.client.zadd(f"{prefix}idx:models", {"50": 50})

    with TcpProxy.to(sync_config.postgres_url, 5432, record=True) as proxy:
        config = dataclasses.replace(
            sync_config,
            key_prefix=prefix,
            source=f"src'); DROP TABLE models; -- {canary}",
            postgres_url=with_address(sync_config.postgres_url, proxy.port),
        )
        migrate(config)
        client, conn = connect_redis(config), connect_postgres(config)
        results = sync_all(client, conn, config)
        conn.close()
        client.close()

    assert results["models"].rejected == 1
    assert table_counts(pg_conn, config.schema) == {
        "models": 1,
        "model_versions": 1,
        "datasets": 1,
        "training_runs": 1,
        "hyperparameters": 2,
        "metrics": 1,
        "experiments": 1,
        "experiment_runs": 1,
        "predictions": 1,
    }
    assert pg_conn.execute("SELECT name, description FROM models").fetchone() == (
        f"model {nasty}",
        nasty,
    )
    assert pg_conn.execute("SELECT run_name FROM training_runs").fetchone() == (nasty,)
    assert pg_conn.execute(
        "SELECT param_value FROM hyperparameters WHERE param_name = %s", (nasty,)
    ).fetchone() == (nasty,)
    assert pg_conn.execute("SELECT metric_name, split FROM metrics").fetchone() == (nasty, nasty)
    assert pg_conn.execute("SELECT variant_name, notes FROM experiment_runs").fetchone() == (
        nasty,
        nasty,
    )
    assert pg_conn.execute(
        "SELECT input_data, output_data, metadata FROM predictions"
    ).fetchone() == ({"q": nasty}, {"a": nasty}, {"m": nasty})
    origin = pg_conn.execute(
        f'SELECT origin, label, last_address FROM "{config.sync_schema}".sources'
    ).fetchall()
    assert [row[1:] for row in origin] == [
        (config.source, config.redis_address)
    ]  # the label, verbatim
    assert pg_conn.execute("SELECT DISTINCT origin_source FROM predictions").fetchall() == [
        (origin[0][0],)
    ]
    assert (
        pg_conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = %s", (config.schema,)
        ).fetchone()[0]
        == 9
    )

    # On the wire: the canary is in COPY data ('d') and bound parameters ('B'), never in statement text ('Q', 'P').
    messages = [m for tape in proxy.recorded for m in postgres_frontend_messages(bytes(tape))]
    token = canary.encode()
    in_sql = [kind for kind, body in messages if kind in ("Q", "P") and token in body]
    as_data = {kind for kind, body in messages if token in body}
    assert not in_sql, f"a value was spliced into SQL text ({len(in_sql)} statements)"
    assert {"d", "B"} <= as_data


# -- TLS ------------------------------------------------------------------------------------------------------


def test_tls_urls_pass_through_every_url_helper_unchanged():
    redis_tls = f"rediss://default:{REDIS_PASSWORD}@cache.example.com:6380/2?ssl_cert_reqs=required"
    pg_tls = f"postgresql+psycopg://app:{PG_PASSWORD}@db.example.com:5432/analytics?sslmode=require&sslrootcert=/ca.pem"
    config = SyncConfig.from_env({"REDIS_URL": redis_tls, "POSTGRES_URL": pg_tls})

    assert config.redis_url == redis_tls and config.postgres_url == pg_tls
    assert psycopg_url(pg_tls) == pg_tls.replace("postgresql+psycopg://", "postgresql://")
    assert sqlalchemy_url(pg_tls) == pg_tls
    assert conninfo_to_dict(psycopg_url(pg_tls))["sslmode"] == "require"
    assert (
        redact_url(redis_tls)
        == "rediss://default:***@cache.example.com:6380/2?ssl_cert_reqs=required"
    )
    assert redact_url(pg_tls) == (
        "postgresql+psycopg://app:***@db.example.com:5432/analytics"
        "?sslmode=require&sslrootcert=/ca.pem"
    )
    assert "sslmode=require" in config.describe() and "rediss://" in config.describe()
    import redis

    assert redis.Redis.from_url(config.redis_url).connection_pool.connection_class is SSLConnection


class FirstBytes:
    """A listener that records the first bytes a client sends, then hangs up: no TLS server needed."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.received = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        conn, _ = self.server.accept()
        with conn:
            conn.settimeout(5)
            try:
                self.received = conn.recv(64)
            except OSError:
                pass
        self.server.close()


def test_tls_settings_reach_the_drivers_which_start_a_tls_handshake(sync_config):
    pg_listener, redis_listener = FirstBytes(), FirstBytes()
    pg = (
        with_address(sync_config.postgres_url, pg_listener.port, PG_PASSWORD, "postgres")
        + "?sslmode=require"
    )
    rd = with_address(
        sync_config.redis_url, redis_listener.port, REDIS_PASSWORD, "default"
    ).replace("redis://", "rediss://")

    for connect, config in (
        (connect_postgres, SyncConfig(postgres_url=pg)),
        (connect_redis, SyncConfig(redis_url=rd)),
    ):
        with pytest.raises(Exception) as failure:
            connect(config)
        assert PG_PASSWORD not in traceback_text(
            failure.value
        ) and REDIS_PASSWORD not in traceback_text(failure.value)
    pg_listener.thread.join(5)
    redis_listener.thread.join(5)
    assert pg_listener.received == (8).to_bytes(4, "big") + (80877103).to_bytes(
        4, "big"
    )  # libpq's SSLRequest
    assert (
        redis_listener.received[:1] == b"\x16"
    )  # a TLS handshake record (ClientHello), not a RESP command
