"""Every quirk of real aidb data (docs/redis-layout.md, "Quirks"), as a user finds it in Postgres afterwards.

Covers: duplicate model names collapsing into one row that owns the versions of
both; one (model, version) pair under two version ids; children whose parent has
no hash waiting in `pending`, then rejected after `pending_max_age_seconds`, or
loading once the parent appears; metric names and splits containing ':';
arbitrary text (Persian, quotes, backslashes, tabs, newlines, SQL) round-tripping
unchanged; an id allocated by INCR whose hash is written after a cycle; and
hand-written corrupt records (invalid JSON, non-numbers, missing names, wrong key
types, invalid UTF-8, NUL bytes) landing in rejected_records while everything
else loads.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
import redis
from psycopg.rows import dict_row

from rp_pipeline.engine import stats_from_results
from rp_pipeline.schema import migrate

NASTY = "مدل تشخیص «چهره»\u200cها \"quoted\" it's \\ back\\slash\ttab\nnew line\r\n'); DROP TABLE models; --"


def rows(conn, sql: str, *params) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(sql, params or None).fetchall()


def scalar(conn, sql: str, *params):
    return conn.execute(sql, params or None).fetchone()[0]


def bookkeeping(pg_schemas, table: str) -> str:
    return f'"{pg_schemas[1]}".{table}'


def hand_write(client, prefix: str, entity: str, fields: dict, index: str | None = None) -> int:
    """Write a record the way a foreign writer does: INCR the counter, then HSET (and maybe ZADD)."""
    new_id = client.incr(f"{prefix}counter:{entity}")
    client.hset(f"{prefix}{entity}:{new_id}", mapping={"id": new_id, **fields})
    if index:
        client.zadd(prefix + index, {new_id: new_id})
    return new_id


# -- duplicate names and pairs ---------------------------------------------------------------------------


def test_duplicate_model_names_collapse_into_one_row_owning_both_models_versions(
    writer, run_sync, pg_conn
):
    first = writer.create_model("detector", description="first")
    second = writer.create_model("detector", description="second")
    writer.create_model_version(first, "1.0")
    writer.create_model_version(second, "2.0")

    results = run_sync()

    models = rows(pg_conn, "SELECT id, name, description FROM models")
    assert models == [
        {"id": models[0]["id"], "name": "detector", "description": "second"}
    ]  # the later one wins
    assert rows(pg_conn, "SELECT model_id, version FROM model_versions ORDER BY version") == [
        {"model_id": models[0]["id"], "version": "1.0"},
        {"model_id": models[0]["id"], "version": "2.0"},
    ]
    assert stats_from_results(results.values())["errors"] == 0


def test_same_version_of_duplicate_models_is_one_row(writer, run_sync, pg_conn):
    writer.create_model_version(writer.create_model("detector"), "1.0")
    writer.create_model_version(writer.create_model("detector"), "1.0")

    run_sync()

    assert scalar(pg_conn, "SELECT count(*) FROM model_versions") == 1


def test_same_model_version_under_two_version_ids_is_one_row_owning_both_children(
    writer, run_sync, pg_conn
):
    model = writer.create_model("resnet")
    v_a = writer.create_model_version(model, "1.0", checkpoint_path="/a.pt")
    v_b = writer.create_model_version(model, "1.0", checkpoint_path="/b.pt")
    writer.create_training_run(v_a, run_name="on-a")
    writer.create_training_run(v_b, run_name="on-b")
    writer.log_prediction(v_a, "x", "a")
    writer.log_prediction(v_b, "x", "b")

    results = run_sync()

    versions = rows(pg_conn, "SELECT id, version, checkpoint_path FROM model_versions")
    assert versions == [{"id": versions[0]["id"], "version": "1.0", "checkpoint_path": "/b.pt"}]
    assert rows(
        pg_conn, "SELECT run_name, model_version_id FROM training_runs ORDER BY run_name"
    ) == [
        {"run_name": "on-a", "model_version_id": versions[0]["id"]},
        {"run_name": "on-b", "model_version_id": versions[0]["id"]},
    ]
    assert [
        r["model_version_id"] for r in rows(pg_conn, "SELECT model_version_id FROM predictions")
    ] == [versions[0]["id"]] * 2
    assert stats_from_results(results.values())["errors"] == 0


def test_duplicate_names_across_chunks_settle_instead_of_updating_every_cycle(
    writer, run_sync, pg_conn
):
    writer.create_model("detector", description="first")
    writer.create_model("detector", description="second")
    run_sync(chunk_size=1)

    again = run_sync(chunk_size=1)

    assert scalar(pg_conn, "SELECT description FROM models") == "second"
    assert (again["models"].inserted, again["models"].updated) == (0, 0)


# -- parents without a hash ----------------------------------------------------------------------------------


@pytest.fixture
def orphans(writer):
    """A version, a run and a prediction whose parents (model 99, version 77) have no hash."""
    model = writer.create_model("kept")
    version = writer.create_model_version(model, "1.0")
    return {
        "version": writer.create_model_version(99, "orphan"),
        "run": writer.create_training_run(77, run_name="orphan-run"),
        "prediction": writer.log_prediction(77, "x", "y"),
        "kept_version": version,
        "kept_run": writer.create_training_run(version, run_name="kept-run"),
        "kept_prediction": writer.log_prediction(version, "x", "kept"),
    }


def test_child_of_a_missing_parent_waits_in_pending(
    orphans, run_sync, pg_conn, pg_schemas, key_prefix
):
    results = run_sync()

    pending = rows(
        pg_conn,
        f"SELECT entity, redis_key, reason FROM {bookkeeping(pg_schemas, 'pending')} "
        "ORDER BY entity",
    )
    assert pending == [
        {
            "entity": "model_versions",
            "redis_key": f"{key_prefix}version:{orphans['version']}",
            "reason": "models Redis id 99 is not in Postgres",
        },
        {
            "entity": "predictions",
            "redis_key": f"{key_prefix}prediction:{orphans['prediction']}",
            "reason": "model_versions Redis id 77 is not in Postgres",
        },
        {
            "entity": "training_runs",
            "redis_key": f"{key_prefix}run:{orphans['run']}",
            "reason": "model_versions Redis id 77 is not in Postgres",
        },
    ]
    assert (
        scalar(pg_conn, f"SELECT count(*) FROM {bookkeeping(pg_schemas, 'rejected_records')}") == 0
    )
    assert [r["version"] for r in rows(pg_conn, "SELECT version FROM model_versions")] == ["1.0"]
    assert [r["run_name"] for r in rows(pg_conn, "SELECT run_name FROM training_runs")] == [
        "kept-run"
    ]
    assert [r["o"] for r in rows(pg_conn, "SELECT output_data->>'data' AS o FROM predictions")] == [
        "kept"
    ]
    assert (
        results["model_versions"].pending,
        results["training_runs"].pending,
        results["predictions"].pending,
    ) == (1, 1, 1)
    assert stats_from_results(results.values())["errors"] == 0


def test_child_that_waited_too_long_is_rejected_with_the_reason(
    orphans, run_sync, pg_conn, pg_schemas, key_prefix
):
    run_sync()

    results = run_sync(pending_max_age_seconds=0)

    rejected = rows(
        pg_conn,
        f"SELECT entity, redis_key, reason FROM {bookkeeping(pg_schemas, 'rejected_records')} "
        "ORDER BY entity",
    )
    assert [(r["entity"], r["redis_key"]) for r in rejected] == [
        ("model_versions", f"{key_prefix}version:{orphans['version']}"),
        ("predictions", f"{key_prefix}prediction:{orphans['prediction']}"),
        ("training_runs", f"{key_prefix}run:{orphans['run']}"),
    ]
    assert "models Redis id 99 is not in Postgres" in rejected[0]["reason"]
    assert "model_versions Redis id 77 is not in Postgres" in rejected[1]["reason"]
    assert "model_versions Redis id 77 is not in Postgres" in rejected[2]["reason"]
    assert all("waited" in r["reason"] for r in rejected)
    assert scalar(pg_conn, f"SELECT count(*) FROM {bookkeeping(pg_schemas, 'pending')}") == 0
    assert stats_from_results(results.values())["errors"] == 3
    assert scalar(pg_conn, "SELECT count(*) FROM predictions") == 1


def test_child_whose_parent_appears_later_loads_next_cycle(writer, run_sync, pg_conn, pg_schemas):
    # Children first, pointing at ids 1 that their parents will get only later.
    writer.create_model_version(1, "1.0")
    writer.create_training_run(1, run_name="early-run")
    writer.log_hyperparameters(1, {"lr": 0.1})
    writer.log_metric(1, "loss", 0.5, epoch=1)
    writer.log_prediction(1, "early", "prediction")
    first = run_sync()
    assert sum(r.inserted for r in first.values()) == 0
    assert scalar(pg_conn, f"SELECT count(*) FROM {bookkeeping(pg_schemas, 'pending')}") >= 3

    writer.create_model("late-model")
    results = run_sync()

    model_id = scalar(pg_conn, "SELECT id FROM models WHERE name = 'late-model'")
    version_id = scalar(
        pg_conn, "SELECT id FROM model_versions WHERE model_id = %s AND version = '1.0'", model_id
    )
    run_id = scalar(pg_conn, "SELECT id FROM training_runs WHERE model_version_id = %s", version_id)
    assert (
        scalar(
            pg_conn, "SELECT param_value FROM hyperparameters WHERE training_run_id = %s", run_id
        )
        == "0.1"
    )
    assert (
        scalar(pg_conn, "SELECT metric_value FROM metrics WHERE training_run_id = %s", run_id)
        == 0.5
    )
    assert scalar(
        pg_conn, "SELECT input_data FROM predictions WHERE model_version_id = %s", version_id
    ) == {"data": "early"}
    assert scalar(pg_conn, f"SELECT count(*) FROM {bookkeeping(pg_schemas, 'pending')}") == 0
    assert (
        scalar(pg_conn, f"SELECT count(*) FROM {bookkeeping(pg_schemas, 'rejected_records')}") == 0
    )
    assert stats_from_results(results.values()) | {"errors": 0} == {
        "models": 1,
        "versions": 1,
        "datasets": 0,
        "runs": 1,
        "hyperparams": 1,
        "metrics": 1,
        "experiments": 0,
        "predictions": 1,
        "errors": 0,
        "experiment_runs": 0,
    }


# -- names, text and numbers ---------------------------------------------------------------------------------


def test_metric_names_and_splits_containing_colons_are_read_from_the_member(
    writer, run_sync, pg_conn
):
    version = writer.create_model_version(writer.create_model("m"), "1")
    run = writer.create_training_run(version)
    writer.log_metric(run, "val:top-1:acc", 0.75, epoch=1, split="holdout:2025:a")
    writer.log_metric(run, "loss", 0.25, step=10, split="eval:x")

    run_sync()

    run_pg = scalar(pg_conn, "SELECT id FROM training_runs")
    assert rows(
        pg_conn,
        "SELECT training_run_id, metric_name, split, epoch, step, metric_value FROM metrics "
        "ORDER BY metric_name",
    ) == [
        {
            "training_run_id": run_pg,
            "metric_name": "loss",
            "split": "eval:x",
            "epoch": None,
            "step": 10,
            "metric_value": 0.25,
        },
        {
            "training_run_id": run_pg,
            "metric_name": "val:top-1:acc",
            "split": "holdout:2025:a",
            "epoch": 1,
            "step": None,
            "metric_value": 0.75,
        },
    ]


@pytest.mark.parametrize(
    "text",
    [
        NASTY,
        "\\N",  # COPY's NULL marker, as a literal value
        "\\.",  # COPY's end-of-data marker
        "line one\nline two\ttabbed\rreturn",
        "ایمیج‌نت ۲۰۲۵ 🚀 naïve café",
        "Robert'); DROP TABLE training_runs;--",
    ],
    ids=["mixed", "copy-null-marker", "copy-end-marker", "control-chars", "persian-emoji", "sql"],
)
def test_arbitrary_text_round_trips_unchanged(text, writer, run_sync, pg_conn):
    model = writer.create_model(text, description=text, architecture=text)
    version = writer.create_model_version(model, text, checkpoint_path=text, config={text: text})
    dataset = writer.create_dataset(text, description=text, split_info={"note": text})
    run = writer.create_training_run(version, dataset_id=dataset, run_name=text)
    writer.log_hyperparameters(run, {text: text})
    writer.log_metric(run, text, 1.5, epoch=1, split=text)
    experiment = writer.create_experiment(text, description=text, hypothesis=text)
    writer.add_experiment_run(experiment, run, variant_name=text, notes=text)
    writer.log_prediction(version, text, {"label": text}, metadata={text: [text]})

    results = run_sync()

    assert stats_from_results(results.values())["errors"] == 0
    assert rows(pg_conn, "SELECT name, description, architecture FROM models") == [
        {"name": text, "description": text, "architecture": text}
    ]
    assert rows(pg_conn, "SELECT version, checkpoint_path, config FROM model_versions") == [
        {"version": text, "checkpoint_path": text, "config": {text: text}}
    ]
    assert rows(pg_conn, "SELECT name, description, split_info FROM datasets") == [
        {"name": text, "description": text, "split_info": {"note": text}}
    ]
    assert scalar(pg_conn, "SELECT run_name FROM training_runs") == text
    assert rows(pg_conn, "SELECT param_name, param_value FROM hyperparameters") == [
        {"param_name": text, "param_value": text}
    ]
    assert rows(pg_conn, "SELECT metric_name, split FROM metrics") == [
        {"metric_name": text, "split": text}
    ]
    assert rows(pg_conn, "SELECT name, description, hypothesis FROM experiments") == [
        {"name": text, "description": text, "hypothesis": text}
    ]
    assert rows(pg_conn, "SELECT variant_name, notes FROM experiment_runs") == [
        {"variant_name": text, "notes": text}
    ]
    assert rows(pg_conn, "SELECT input_data, output_data, metadata FROM predictions") == [
        {"input_data": {"data": text}, "output_data": {"label": text}, "metadata": {text: [text]}}
    ]


# -- a counter ahead of its record ---------------------------------------------------------------------------


def test_prediction_whose_hash_is_written_after_a_cycle_is_synced_next_cycle(
    writer, redis_client, key_prefix, run_sync, pg_conn, pg_schemas
):
    version = writer.create_model_version(writer.create_model("m"), "1")
    writer.log_prediction(version, "first", "a")
    # An old-style writer: INCR allocated the id, the HSET has not happened yet when the sync runs.
    late_id = redis_client.incr(f"{key_prefix}counter:prediction")
    first = run_sync()
    assert scalar(pg_conn, "SELECT count(*) FROM predictions") == 1
    assert first["predictions"].pending == 1
    assert (
        scalar(pg_conn, f"SELECT redis_key FROM {bookkeeping(pg_schemas, 'pending')}")
        == f"{key_prefix}prediction:{late_id}"
    )

    redis_client.hset(
        f"{key_prefix}prediction:{late_id}",
        mapping={
            "id": late_id,
            "model_version_id": version,
            "input": json.dumps({"data": "late"}),
            "output": json.dumps({"data": "b"}),
            "confidence": "0.5",
            "inference_time_ms": "3",
            "timestamp": "2025-11-22T10:30:00",
            "metadata": "{}",
        },
    )
    redis_client.zadd(f"{key_prefix}idx:predictions:{version}", {late_id: -1763807400})
    writer.log_prediction(version, "after", "c")
    second = run_sync()

    assert rows(
        pg_conn,
        "SELECT input_data->>'data' AS input, confidence, inference_time_ms, timestamp "
        "FROM predictions ORDER BY origin_redis_id",
    )[1] == {
        "input": "late",
        "confidence": 0.5,
        "inference_time_ms": 3.0,
        "timestamp": datetime(2025, 11, 22, 10, 30, tzinfo=timezone.utc),
    }
    assert [
        r["i"]
        for r in rows(
            pg_conn, "SELECT input_data->>'data' AS i FROM predictions ORDER BY origin_redis_id"
        )
    ] == ["first", "late", "after"]
    assert (second["predictions"].inserted, second["predictions"].pending) == (2, 0)
    assert scalar(pg_conn, f"SELECT count(*) FROM {bookkeeping(pg_schemas, 'pending')}") == 0
    assert (
        scalar(pg_conn, f"SELECT count(*) FROM {bookkeeping(pg_schemas, 'rejected_records')}") == 0
    )


# -- corrupt, hand-written records -----------------------------------------------------------------------------


@pytest.fixture
def corrupt(writer, redis_client, redis_url, key_prefix):
    """Good records of every kind, and beside them the bad ones real data has: {what: (key, reason fragment)}."""
    p, c = key_prefix, redis_client
    model = writer.create_model("good-model")
    version = writer.create_model_version(model, "1.0")
    dataset = writer.create_dataset("good-dataset")
    run = writer.create_training_run(version, dataset_id=dataset, run_name="good-run")
    writer.log_hyperparameters(run, {"lr": 0.1})
    writer.log_metric(run, "loss", 0.5, epoch=1)
    writer.log_prediction(version, "good", "prediction")
    bad: dict[str, tuple[str, str]] = {}

    nameless = hand_write(c, p, "model", {"description": "no name here"}, index="idx:models")
    bad["nameless model"] = (f"{p}model:{nameless}", "missing field 'name'")
    string_model = c.incr(f"{p}counter:model")
    c.set(f"{p}model:{string_model}", "I am a string, not a hash")
    bad["string key"] = (f"{p}model:{string_model}", "WRONGTYPE")
    bytes_client = redis.Redis.from_url(redis_url)  # no decoding: writes raw bytes
    latin1 = bytes_client.incr(f"{p}counter:model")
    bytes_client.hset(
        f"{p}model:{latin1}", mapping={b"id": latin1, b"name": b"caf\xe9 \xff\xfe model"}
    )
    bytes_client.close()
    bad["invalid utf-8"] = (f"{p}model:{latin1}", "not valid UTF-8")
    nul = hand_write(
        c, p, "dataset", {"name": "nul\x00dataset", "size_bytes": "1"}, index="idx:datasets"
    )
    bad["nul byte"] = (f"{p}dataset:{nul}", "NUL")
    bad_config = hand_write(
        c, p, "version", {"model_id": model, "version": "2.0", "config": "{not json"}
    )
    bad["invalid json config"] = (f"{p}version:{bad_config}", "config")
    bad_date = hand_write(
        c,
        p,
        "run",
        {
            "model_version_id": version,
            "dataset_id": "0",
            "run_name": "bad-date",
            "status": "started",
            "started_at": "22/11/2025 ten past",
            "completed_at": "",
        },
        index="idx:runs",
    )
    bad["unparseable timestamp"] = (f"{p}run:{bad_date}", "started_at")
    abc = hand_write(
        c,
        p,
        "prediction",
        {
            "model_version_id": version,
            "input": "{}",
            "output": "{}",
            "confidence": "abc",
            "timestamp": "2025-11-22T10:30:00",
        },
    )
    bad["confidence abc"] = (f"{p}prediction:{abc}", "confidence")
    bad_input = hand_write(
        c,
        p,
        "prediction",
        {
            "model_version_id": version,
            "input": "{'single': quotes}",
            "output": "{}",
            "timestamp": "2025-11-22T10:30:01",
        },
    )
    bad["invalid json input"] = (f"{p}prediction:{bad_input}", "input")
    other_run = writer.create_training_run(version, run_name="run-with-list-params")
    c.rpush(f"{p}hyperparam:{other_run}", "lr=0.1")
    bad["list key"] = (f"{p}hyperparam:{other_run}", "WRONGTYPE")
    # More good records after the bad ones: a bad record must not stop the rest of its chunk.
    writer.create_model("good-model-2")
    writer.log_prediction(version, "good-2", "prediction")
    return bad


def test_corrupt_records_are_rejected_with_key_raw_and_reason(
    corrupt, run_sync, pg_conn, pg_schemas
):
    results = run_sync()

    rejected = {
        r["redis_key"]: r
        for r in rows(
            pg_conn,
            f"SELECT redis_key, raw, reason FROM {bookkeeping(pg_schemas, 'rejected_records')}",
        )
    }
    assert set(rejected) == {key for key, _ in corrupt.values()}
    for key, fragment in corrupt.values():
        assert fragment.lower() in rejected[key]["reason"].lower(), (key, rejected[key]["reason"])
        assert rejected[key]["raw"], key
    assert stats_from_results(results.values())["errors"] == len(corrupt)
    assert sum(r.rejected for r in results.values()) == len(corrupt)


def test_rejected_raw_keeps_the_offending_value(corrupt, run_sync, pg_conn, pg_schemas):
    run_sync()

    by_key = {
        r["redis_key"]: r["raw"]
        for r in rows(
            pg_conn, f"SELECT redis_key, raw FROM {bookkeeping(pg_schemas, 'rejected_records')}"
        )
    }
    raw = {what: json.loads(by_key[key]) for what, (key, _) in corrupt.items()}
    assert raw["nameless model"] == {"description": "no name here"}
    assert "{not json" in raw["invalid json config"].values()
    assert "abc" in raw["confidence abc"].values()
    assert "{'single': quotes}" in raw["invalid json input"].values()
    assert "nul\x00dataset" in raw["nul byte"].values()
    assert "22/11/2025 ten past" in raw["unparseable timestamp"].values()
    assert (
        "caf\udce9 \udcff\udcfe model" in raw["invalid utf-8"].values()
    )  # undecodable bytes kept, escaped


def test_raw_of_a_record_refused_by_postgres_keeps_its_redis_values(
    writer, redis_client, key_prefix, sync_config, run_sync, pg_conn, pg_schemas
):
    migrate(sync_config)
    pg_conn.execute("ALTER TABLE model_versions ALTER COLUMN id RESTART WITH 500")
    version = writer.create_model_version(writer.create_model("m"), "1")
    run = hand_write(
        redis_client,
        key_prefix,
        "run",
        {
            "model_version_id": version,
            "dataset_id": "0",
            "run_name": "bad-date",
            "status": "started",
            "started_at": "not a date",
            "completed_at": "",
        },
        index="idx:runs",
    )

    run_sync()

    raw = json.loads(
        scalar(
            pg_conn,
            f"SELECT raw FROM {bookkeeping(pg_schemas, 'rejected_records')} WHERE redis_key = %s",
            f"{key_prefix}run:{run}",
        )
    )
    assert (raw["model_version_id"], raw["dataset_id"]) == (str(version), "0")


def test_every_good_record_loads_beside_corrupt_ones(corrupt, run_sync, pg_conn):
    run_sync()

    assert [r["name"] for r in rows(pg_conn, "SELECT name FROM models ORDER BY name")] == [
        "good-model",
        "good-model-2",
    ]
    assert [r["name"] for r in rows(pg_conn, "SELECT name FROM datasets")] == ["good-dataset"]
    assert [r["version"] for r in rows(pg_conn, "SELECT version FROM model_versions")] == ["1.0"]
    assert [
        r["run_name"] for r in rows(pg_conn, "SELECT run_name FROM training_runs ORDER BY run_name")
    ] == ["good-run", "run-with-list-params"]
    assert scalar(pg_conn, "SELECT count(*) FROM hyperparameters") == 1
    assert rows(pg_conn, "SELECT metric_name, metric_value FROM metrics") == [
        {"metric_name": "loss", "metric_value": 0.5}
    ]
    assert [
        r["i"] for r in rows(pg_conn, "SELECT input_data->>'data' AS i FROM predictions ORDER BY i")
    ] == ["good", "good-2"]


def test_corrupt_records_seen_again_are_not_duplicated(corrupt, run_sync, pg_conn, pg_schemas):
    run_sync()
    run_sync()

    by_key = rows(
        pg_conn,
        f"SELECT redis_key, count(*) AS n, max(times_seen) AS seen "
        f"FROM {bookkeeping(pg_schemas, 'rejected_records')} GROUP BY redis_key",
    )
    assert len(by_key) == len(corrupt)
    assert all(r["n"] == 1 for r in by_key)
    # Fully re-read entities meet their bad records again; predictions are read once (watermark).
    assert {r["seen"] for r in by_key} <= {1, 2}


@pytest.mark.parametrize("damage", ["invalid JSON member", "series key of the wrong type"])
def test_corrupt_metric_series_is_rejected_and_everything_else_loads(
    damage, writer, redis_client, key_prefix, run_sync, pg_conn, pg_schemas
):
    version = writer.create_model_version(writer.create_model("m"), "1")
    run = writer.create_training_run(version)
    writer.log_metric(run, "loss", 0.5, epoch=1)
    bad_key = f"{key_prefix}metric:{run}:acc:val"
    if damage == "invalid JSON member":
        redis_client.zadd(bad_key, {"not json at all": 1})
    else:
        redis_client.set(bad_key, "a string where a sorted set belongs")
    writer.log_prediction(version, "after", "metrics")

    results = run_sync()

    assert rows(
        pg_conn, f"SELECT redis_key FROM {bookkeeping(pg_schemas, 'rejected_records')}"
    ) == [{"redis_key": bad_key}]
    assert rows(pg_conn, "SELECT metric_name, metric_value FROM metrics") == [
        {"metric_name": "loss", "metric_value": 0.5}
    ]
    assert scalar(pg_conn, "SELECT count(*) FROM predictions") == 1
    assert stats_from_results(results.values())["errors"] == 1


def test_run_with_a_word_for_started_at_is_rejected_not_duplicated_every_cycle(
    writer, redis_client, key_prefix, run_sync, pg_conn, pg_schemas
):
    version = writer.create_model_version(writer.create_model("m"), "1")
    hand_write(
        redis_client,
        key_prefix,
        "run",
        {
            "model_version_id": version,
            "dataset_id": "0",
            "run_name": "x",
            "status": "started",
            "started_at": "now",
            "completed_at": "",
        },
        index="idx:runs",
    )

    for _ in range(3):
        run_sync()

    assert scalar(pg_conn, "SELECT count(*) FROM training_runs") == 0
    assert [
        r["reason"]
        for r in rows(pg_conn, f"SELECT reason FROM {bookkeeping(pg_schemas, 'rejected_records')}")
        if "started_at" in r["reason"]
    ]
