"""Values real applications write (issue 8), as a user finds them in Postgres afterwards.

Covers: every ISO-8601 timestamp form (offsets, Z, a space, milliseconds, microseconds,
naive = UTC, and rarer ISO forms) loading as the same instant in UTC — into mutable
entities (runs, models) and append-only ones (predictions, metric points) on both the
direct COPY path and the staging fallback; non-timestamps rejected with a reason
naming the field; NaN/Infinity that Python's json.dumps writes stored as JSON null
and counted, a string "NaN" untouched; the "not set" zeros becoming NULL; a bad
record counted as an error only in the cycle that first rejects it, listed until a
fixed version loads; and `merge` filling the '' the old sync wrote.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from psycopg.rows import dict_row

from rp_pipeline.engine import stats_from_results
from rp_pipeline.schema import migrate

UTC = timezone.utc
# (as written, the instant it names)
TIMESTAMP_FORMS = [
    (
        "2025-11-22T10:30:00+00:00",
        datetime(2025, 11, 22, 10, 30, tzinfo=UTC),
    ),  # datetime.now(timezone.utc).isoformat()
    ("2025-11-22T10:31:00.250000+00:00", datetime(2025, 11, 22, 10, 31, 0, 250000, tzinfo=UTC)),
    ("2025-11-22T14:02:00+03:30", datetime(2025, 11, 22, 10, 32, tzinfo=UTC)),
    ("2025-11-22T05:33:00-05:00", datetime(2025, 11, 22, 10, 33, tzinfo=UTC)),
    ("2025-11-22T10:34:00Z", datetime(2025, 11, 22, 10, 34, tzinfo=UTC)),
    ("2025-11-22 10:35:00", datetime(2025, 11, 22, 10, 35, tzinfo=UTC)),
    ("2025-11-22T10:36:00.123", datetime(2025, 11, 22, 10, 36, 0, 123000, tzinfo=UTC)),
    ("2025-11-22T10:37:00.123456", datetime(2025, 11, 22, 10, 37, 0, 123456, tzinfo=UTC)),
    ("2025-11-22T10:38:00", datetime(2025, 11, 22, 10, 38, tzinfo=UTC)),  # naive = UTC
    (
        "2025-11-22T10:39",
        datetime(2025, 11, 22, 10, 39, tzinfo=UTC),
    ),  # isoformat(timespec="minutes")
    ("2025-11-22T10", datetime(2025, 11, 22, 10, tzinfo=UTC)),  # isoformat(timespec="hours")
    ("2025-11-22T12:40:00+0200", datetime(2025, 11, 22, 10, 40, tzinfo=UTC)),
    ("2025-11-22T15:41:00+05", datetime(2025, 11, 22, 10, 41, tzinfo=UTC)),
    (
        "2025-11-22T16:12:15+05:30:15",
        datetime(2025, 11, 22, 10, 42, tzinfo=UTC),
    ),  # a tz with seconds
    ("2025-11-22T10:43:00,5", datetime(2025, 11, 22, 10, 43, 0, 500000, tzinfo=UTC)),  # ISO's comma
    ("20251122T104400Z", datetime(2025, 11, 22, 10, 44, tzinfo=UTC)),  # basic format
    ("2025-W47-6T10:45:00", datetime(2025, 11, 22, 10, 45, tzinfo=UTC)),  # week date
    ("2025-326T10:46:00", datetime(2025, 11, 22, 10, 46, tzinfo=UTC)),  # ordinal date
    (
        "2025-11-22T10:47:00.1234567",
        datetime(2025, 11, 22, 10, 47, 0, 123457, tzinfo=UTC),
    ),  # .NET's 7 digits
    (
        "2025-11-22t10:48:00z",
        datetime(2025, 11, 22, 10, 48, tzinfo=UTC),
    ),  # RFC 3339 allows lower case
    ("2025-11-22T23:49:00-13:00", datetime(2025, 11, 23, 12, 49, tzinfo=UTC)),
    (
        "2025-11-22T10:50:00+18:00",
        datetime(2025, 11, 21, 16, 50, tzinfo=UTC),
    ),  # beyond Postgres's ±15:59
    ("2025-11-22", datetime(2025, 11, 22, tzinfo=UTC)),
]
NOT_TIMESTAMPS = [
    "yesterday",
    "2025-13-45",
    "11/22/2025",
    "now",
    "2025-11-22T10:30:00 PST",
    "2025-11-22T25:00",
]


def rows(conn, sql: str, *params) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(sql, params or None).fetchall()


def scalar(conn, sql: str, *params):
    return conn.execute(sql, params or None).fetchone()[0]


def rejected(conn, pg_schemas) -> dict[str, dict]:
    return {
        r["redis_key"]: r
        for r in rows(
            conn, f'SELECT redis_key, reason, times_seen FROM "{pg_schemas[1]}".rejected_records'
        )
    }


def hand_write(client, prefix: str, entity: str, fields: dict, index: str | None = None) -> int:
    """Write a record the way a foreign writer does: INCR the counter, then HSET (and ZADD its index)."""
    new_id = client.incr(f"{prefix}counter:{entity}")
    client.hset(f"{prefix}{entity}:{new_id}", mapping={"id": new_id, **fields})
    if index:
        client.zadd(prefix + index, {new_id: new_id})
    return new_id


def hand_run(client, prefix: str, version: int, **fields) -> int:
    record = {
        "model_version_id": version,
        "dataset_id": "0",
        "run_name": "r",
        "status": "started",
        "started_at": "2025-11-22T10:30:00",
        "completed_at": "",
        "duration_seconds": "0",
        "final_loss": "0",
        "best_metric_value": "0",
        "artifacts": "{}",
        **fields,
    }
    return hand_write(client, prefix, "run", record, index="idx:runs")


def hand_prediction(client, prefix: str, version: int, **fields) -> int:
    record = {
        "model_version_id": version,
        "input": "{}",
        "output": "{}",
        "confidence": "0.5",
        "inference_time_ms": "1",
        "timestamp": "2025-11-22T10:30:00",
        "metadata": "{}",
        **fields,
    }
    return hand_write(client, prefix, "prediction", record)


def metric_point(
    client, prefix: str, run: int, name: str, value, timestamp: str, epoch=None, step=None
) -> str:
    key = f"{prefix}metric:{run}:{name}:train"
    point = {
        "epoch": epoch,
        "step": step,
        "metric_name": name,
        "metric_value": value,
        "split": "train",
        "timestamp": timestamp,
    }
    client.zadd(key, {json.dumps(point): epoch or 0})
    return key


@pytest.fixture
def version(writer) -> int:
    return writer.create_model_version(writer.create_model("m"), "1.0")


# -- timestamps ------------------------------------------------------------------------------------------------


def test_every_iso_timestamp_form_loads_into_runs_and_models_as_its_utc_instant(
    writer, version, redis_client, key_prefix, run_sync, pg_conn, pg_schemas
):
    for n, (text, _) in enumerate(TIMESTAMP_FORMS):
        hand_write(
            redis_client,
            key_prefix,
            "model",
            {"name": f"model-{n}", "created_at": text, "updated_at": text},
            index="idx:models",
        )
        hand_run(
            redis_client,
            key_prefix,
            version,
            run_name=f"run-{n}",
            started_at=text,
            completed_at=text,
        )

    results = run_sync()

    assert rejected(pg_conn, pg_schemas) == {}
    assert stats_from_results(results.values())["errors"] == 0
    runs = {
        r["run_name"]: r
        for r in rows(pg_conn, "SELECT run_name, started_at, completed_at FROM training_runs")
    }
    models = {
        r["name"]: r for r in rows(pg_conn, "SELECT name, created_at, updated_at FROM models")
    }
    for n, (text, instant) in enumerate(TIMESTAMP_FORMS):
        assert (runs[f"run-{n}"]["started_at"], runs[f"run-{n}"]["completed_at"]) == (
            instant,
            instant,
        ), text
        assert (models[f"model-{n}"]["created_at"], models[f"model-{n}"]["updated_at"]) == (
            instant,
            instant,
        ), text


@pytest.mark.parametrize("path", ["direct COPY", "staging fallback"])
def test_every_iso_timestamp_form_loads_into_predictions_and_metric_points(
    path, writer, version, redis_client, key_prefix, run_sync, pg_conn, pg_schemas
):
    run = writer.create_training_run(version, run_name="r")
    predictions = {
        hand_prediction(redis_client, key_prefix, version, timestamp=text): instant
        for text, instant in TIMESTAMP_FORMS
    }
    for n, (text, _) in enumerate(TIMESTAMP_FORMS):
        metric_point(redis_client, key_prefix, run, "loss", n / 10, text, step=n)
    refused = set()
    if (
        path == "staging fallback"
    ):  # one record in each chunk that only Postgres refuses sends it through staging
        refused.add(
            f"{key_prefix}prediction:{hand_prediction(redis_client, key_prefix, version, input='{bad')}"
        )
        refused.add(
            metric_point(
                redis_client, key_prefix, run, "acc", 0.5, "2025-11-22T10:30:00", epoch="1.5"
            )
        )
        metric_point(redis_client, key_prefix, run, "acc", 0.6, TIMESTAMP_FORMS[2][0], epoch=2)

    results = run_sync()

    assert set(rejected(pg_conn, pg_schemas)) == refused
    assert results["predictions"].inserted == len(TIMESTAMP_FORMS)
    stored = dict(pg_conn.execute("SELECT origin_redis_id, timestamp FROM predictions").fetchall())
    assert stored == predictions
    points = dict(
        pg_conn.execute("SELECT step, timestamp FROM metrics WHERE metric_name = 'loss'").fetchall()
    )
    assert points == {n: instant for n, (_, instant) in enumerate(TIMESTAMP_FORMS)}
    if path == "staging fallback":
        assert rows(pg_conn, "SELECT epoch, timestamp FROM metrics WHERE metric_name = 'acc'") == [
            {"epoch": 2, "timestamp": TIMESTAMP_FORMS[2][1]}
        ]


def test_records_already_synced_are_found_again_whatever_their_timestamp_form(
    writer, version, redis_client, key_prefix, run_sync, pg_conn
):
    """Identity includes the timestamp: a second cycle must match, not duplicate, every form."""
    run = writer.create_training_run(version)
    for n, (text, _) in enumerate(TIMESTAMP_FORMS):
        hand_run(redis_client, key_prefix, version, run_name=f"run-{n}", started_at=text)
        metric_point(redis_client, key_prefix, run, "loss", n, text, step=n)
    run_sync()
    writer.log_metric(run, "loss", 99.0, step=99)  # the series grew: all of it is read again

    again = run_sync()

    assert (again["training_runs"].inserted, again["training_runs"].updated) == (0, 0)
    assert again["metrics"].inserted == 1
    assert scalar(pg_conn, "SELECT count(*) FROM metrics") == len(TIMESTAMP_FORMS) + 1


@pytest.mark.parametrize("text", NOT_TIMESTAMPS)
def test_text_that_is_not_a_timestamp_is_rejected_with_a_reason_naming_the_field(
    text, writer, version, redis_client, key_prefix, run_sync, pg_conn, pg_schemas
):
    run = hand_run(redis_client, key_prefix, version, started_at=text)
    prediction = hand_prediction(redis_client, key_prefix, version, timestamp=text)
    good = hand_prediction(redis_client, key_prefix, version)

    run_sync()

    reasons = {key: r["reason"] for key, r in rejected(pg_conn, pg_schemas).items()}
    assert set(reasons) == {f"{key_prefix}run:{run}", f"{key_prefix}prediction:{prediction}"}
    assert "'started_at'" in reasons[f"{key_prefix}run:{run}"]
    assert "'timestamp'" in reasons[f"{key_prefix}prediction:{prediction}"]
    assert scalar(pg_conn, "SELECT count(*) FROM training_runs") == 0
    assert pg_conn.execute("SELECT origin_redis_id FROM predictions").fetchall() == [(good,)]


# -- NaN and Infinity in JSON ----------------------------------------------------------------------------------

NON_FINITE = {
    "score": float("nan"),
    "bounds": [float("-inf"), 1.5, float("inf")],
    "label": "NaN",
    "NaN": "Infinity is a word here",
    "nested": {"x": [{"y": float("nan")}]},
}
NON_FINITE_NULLED = {
    "score": None,
    "bounds": [None, 1.5, None],
    "label": "NaN",
    "NaN": "Infinity is a word here",
    "nested": {"x": [{"y": None}]},
}
NON_FINITE_COUNT = 4


@pytest.mark.parametrize("path", ["direct COPY", "staging fallback"])
def test_nan_and_infinity_in_prediction_json_are_stored_as_null_and_counted(
    path, writer, version, redis_client, key_prefix, run_sync, pg_conn
):
    for _ in range(2):
        writer.log_prediction(version, NON_FINITE, [float("nan")], metadata=NON_FINITE)
    hand_prediction(
        redis_client, key_prefix, version, input=json.dumps({"plain": 'NaN "Infinity"'})
    )
    if path == "staging fallback":
        hand_prediction(redis_client, key_prefix, version, input="{bad")

    results = run_sync()

    stored = rows(
        pg_conn,
        "SELECT input_data, output_data, metadata FROM predictions ORDER BY origin_redis_id",
    )
    assert (
        stored[:2]
        == [
            {
                "input_data": NON_FINITE_NULLED,
                "output_data": {"data": [None]},
                "metadata": NON_FINITE_NULLED,
            }
        ]
        * 2
    )
    assert stored[2]["input_data"] == {
        "plain": 'NaN "Infinity"'
    }  # words inside JSON strings are kept
    assert results["predictions"].json_non_finite_nulled == 2 * (2 * NON_FINITE_COUNT + 1)


def test_nan_in_the_json_of_mutable_entities_is_null_and_counted_only_when_written(
    writer, version, redis_client, key_prefix, run_sync, pg_conn
):
    writer.create_model_version(writer.create_model("m2"), "1.0", config=NON_FINITE)
    writer.create_dataset("d", split_info={"train": float("nan")}, preprocessing=NON_FINITE)
    run = writer.create_training_run(version)
    writer.update_training_run(run, artifacts=NON_FINITE)
    experiment = hand_write(
        redis_client,
        key_prefix,
        "experiment",
        {
            "name": "e",
            "created_at": "2025-11-22T10:30:00",
            "completed_at": "",
            "results": json.dumps(NON_FINITE),
        },
        index="idx:experiments",
    )

    first = run_sync()

    assert (
        scalar(
            pg_conn, "SELECT config FROM model_versions WHERE version = '1.0' AND config <> '{}'"
        )
        == NON_FINITE_NULLED
    )
    assert rows(pg_conn, "SELECT split_info, preprocessing FROM datasets") == [
        {"split_info": {"train": None}, "preprocessing": NON_FINITE_NULLED}
    ]
    assert scalar(pg_conn, "SELECT artifacts FROM training_runs") == NON_FINITE_NULLED
    assert scalar(pg_conn, "SELECT results FROM experiments") == NON_FINITE_NULLED
    assert {
        name: r.json_non_finite_nulled for name, r in first.items() if r.json_non_finite_nulled
    } == {
        "model_versions": NON_FINITE_COUNT,
        "datasets": NON_FINITE_COUNT + 1,
        "training_runs": NON_FINITE_COUNT,
        "experiments": NON_FINITE_COUNT,
    }

    redis_client.hset(f"{key_prefix}experiment:{experiment}", "description", "changed")
    again = run_sync()

    # Re-read every cycle, written only when changed: only the changed experiment counts again.
    assert {
        name: r.json_non_finite_nulled for name, r in again.items() if r.json_non_finite_nulled
    } == {"experiments": NON_FINITE_COUNT}


def test_non_finite_count_is_in_the_materialization_metadata(
    writer, version, run_sync, sync_config
):
    from rp_pipeline.assets import materialization_metadata

    writer.log_prediction(version, {"x": float("nan")}, {})
    results = run_sync()

    assert (
        materialization_metadata(results["predictions"], sync_config, "db")[
            "json_non_finite_nulled"
        ]
        == 1
    )
    assert (
        materialization_metadata(results["models"], sync_config, "db")["json_non_finite_nulled"]
        == 0
    )


# -- "not set" zeros ---------------------------------------------------------------------------------------------

ZEROS = ["0", "0.0", "0e0", "-0", "0.000", " 0 "]


@pytest.mark.parametrize("path", ["direct COPY", "staging fallback"])
def test_unset_zeros_become_null(
    path, writer, version, redis_client, key_prefix, run_sync, pg_conn
):
    writer.create_training_run(version, run_name="created")  # the writer's own zeros
    for zero in ZEROS:
        hand_run(
            redis_client,
            key_prefix,
            version,
            run_name=zero,
            duration_seconds=zero,
            final_loss=zero,
            best_metric_value=zero,
        )
        hand_prediction(redis_client, key_prefix, version, confidence=zero, inference_time_ms=zero)
    writer.log_prediction(version, {}, {}, confidence=0.25, inference_time_ms=3.5)
    if path == "staging fallback":
        hand_prediction(redis_client, key_prefix, version, input="{bad")

    run_sync()

    assert rows(
        pg_conn,
        "SELECT DISTINCT duration_seconds, final_loss, best_metric_value FROM training_runs",
    ) == [{"duration_seconds": None, "final_loss": None, "best_metric_value": None}]
    assert rows(
        pg_conn, "SELECT confidence, inference_time_ms FROM predictions ORDER BY origin_redis_id"
    ) == [{"confidence": None, "inference_time_ms": None}] * len(ZEROS) + [
        {"confidence": 0.25, "inference_time_ms": 3.5}
    ]


def test_numbers_that_are_set_stay_numbers(writer, version, run_sync, pg_conn):
    run = writer.create_training_run(version)
    writer.update_training_run(run, duration_seconds=12.5, final_loss=-0.5, best_metric_value=1e-9)

    run_sync()

    assert rows(
        pg_conn, "SELECT duration_seconds, final_loss, best_metric_value FROM training_runs"
    ) == [{"duration_seconds": 12.5, "final_loss": -0.5, "best_metric_value": 1e-9}]


# -- errors: one per rejection, listed until fixed --------------------------------------------------------------


def test_a_bad_run_is_one_error_in_the_first_cycle_and_listed_until_fixed(
    writer, version, redis_client, key_prefix, run_sync, pg_conn, pg_schemas
):
    run = hand_run(redis_client, key_prefix, version, started_at="yesterday")
    writer.log_hyperparameters(run, {"lr": 0.1})
    key = f"{key_prefix}run:{run}"

    errors = [stats_from_results(run_sync().values())["errors"] for _ in range(3)]

    assert errors == [
        1,
        0,
        0,
    ]  # the run; its hyperparameters wait for it (pending), they are no error
    assert rejected(pg_conn, pg_schemas)[key]["times_seen"] == 3

    redis_client.hset(key, "started_at", datetime.now(UTC).isoformat())  # the application fixes it
    fixed = run_sync()

    assert key not in rejected(pg_conn, pg_schemas)
    assert stats_from_results(fixed.values())["errors"] == 0
    assert scalar(pg_conn, "SELECT count(*) FROM training_runs") == 1
    assert scalar(pg_conn, "SELECT count(*) FROM hyperparameters") == 1


def test_a_changed_but_still_bad_record_is_a_new_error(
    writer, version, redis_client, key_prefix, run_sync, pg_conn, pg_schemas
):
    key = f"{key_prefix}run:{hand_run(redis_client, key_prefix, version, started_at='yesterday')}"
    run_sync()
    redis_client.hset(key, "started_at", "tomorrow")

    again = run_sync()

    assert again["training_runs"].rejected == 1
    assert (
        len(
            rows(
                pg_conn,
                f'SELECT 1 FROM "{pg_schemas[1]}".rejected_records WHERE redis_key = %s',
                key,
            )
        )
        == 2
    )


def test_a_bad_prediction_is_one_error_and_stays_listed(
    writer, version, redis_client, key_prefix, run_sync, pg_conn, pg_schemas
):
    key = f"{key_prefix}prediction:{hand_prediction(redis_client, key_prefix, version, timestamp='yesterday')}"

    first, second = run_sync(), run_sync()

    assert (first["predictions"].rejected, second["predictions"].rejected) == (1, 0)
    assert key in rejected(pg_conn, pg_schemas)


def test_a_bad_metric_point_stays_listed_while_its_series_grows(
    writer, version, redis_client, key_prefix, run_sync, pg_conn, pg_schemas
):
    run = writer.create_training_run(version)
    key = metric_point(redis_client, key_prefix, run, "loss", 0.5, "yesterday", epoch=1)
    first = run_sync()
    metric_point(redis_client, key_prefix, run, "loss", 0.4, "2025-11-22T10:30:00", epoch=2)

    second = run_sync()

    assert (first["metrics"].rejected, second["metrics"].rejected) == (1, 0)
    assert key in rejected(pg_conn, pg_schemas)
    assert scalar(pg_conn, "SELECT count(*) FROM metrics") == 1


# -- merge over the old sync's '' ----------------------------------------------------------------------------------


def test_merge_fills_the_empty_strings_the_old_sync_wrote(writer, sync_config, run_sync, pg_conn):
    """The README's repair of the old sync's rows, with its SYNC_CONFLICT_POLICY value."""
    from rp_pipeline.settings import SyncConfig

    migrate(sync_config)
    pg_conn.execute(
        "INSERT INTO models (name, description, architecture, framework, task_type) "
        "VALUES ('resnet', '', '', 'tensorflow', '')"
    )
    pg_conn.execute(
        "INSERT INTO datasets (name, description, format) VALUES ('imagenet', '', 'jpeg')"
    )
    writer.create_model(
        "resnet", description="from redis", framework="pytorch", task_type="classification"
    )
    writer.create_dataset("imagenet", description="ILSVRC", format="png", source_path="")
    conflict = SyncConfig.from_env(
        {
            "SYNC_CONFLICT_POLICY": "models=merge,datasets=merge,model_versions=merge,experiments=merge"
        }
    ).conflict

    first = run_sync(conflict=conflict)
    again = run_sync(conflict=conflict)

    assert rows(pg_conn, "SELECT description, architecture, framework, task_type FROM models") == [
        {
            "description": "from redis",
            "architecture": "",
            "framework": "tensorflow",
            "task_type": "classification",
        }
    ]
    assert rows(pg_conn, "SELECT description, format, source_path FROM datasets") == [
        {"description": "ILSVRC", "format": "jpeg", "source_path": None}
    ]
    assert (first["models"].updated, first["datasets"].updated) == (1, 1)
    assert (again["models"].updated, again["datasets"].updated) == (0, 0)


# -- what Redis keeps: raw values as read, retention that recognises what it synced ---------------------------


def test_a_refused_record_keeps_its_timestamp_as_written_in_rejected_records(
    version, redis_client, key_prefix, run_sync, pg_conn, pg_schemas
):
    refused = hand_prediction(
        redis_client, key_prefix, version, input="{bad", timestamp="2025-W47-6T10:30"
    )
    key = f"{key_prefix}prediction:{refused}"

    run_sync()

    raw = json.loads(
        scalar(
            pg_conn, f'SELECT raw FROM "{pg_schemas[1]}".rejected_records WHERE redis_key = %s', key
        )
    )
    assert (raw["timestamp"], raw["input"]) == ("2025-W47-6T10:30", "{bad")


def test_retention_deletes_synced_records_whatever_their_timestamp_form_and_nan(
    writer, version, redis_client, key_prefix, run_sync, pg_conn
):
    """Retention compares Redis with Postgres exactly: it must see the same normalized values as the load."""
    run = writer.create_training_run(version)
    old = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    forms = [
        old.isoformat(),
        old.astimezone(timezone(timedelta(hours=3, minutes=30))).isoformat(),
        old.strftime("%G-W%V-%uT%H:%M:%S"),
        old.replace(tzinfo=None).isoformat() + "Z",
    ]
    for n, text in enumerate(forms):
        prediction = hand_prediction(
            redis_client,
            key_prefix,
            version,
            timestamp=text,
            output=json.dumps({"logits": [float("nan"), n]}),
            confidence="0",
        )
        redis_client.zadd(f"{key_prefix}idx:predictions:{version}", {prediction: -old.timestamp()})
        metric_point(redis_client, key_prefix, run, "loss", n, text, step=n)

    results = run_sync(retention_hours={"predictions": 1, "metrics": 1})

    assert (results["predictions"].deleted, results["metrics"].deleted) == (len(forms), len(forms))
    assert not list(redis_client.scan_iter(match=f"{key_prefix}prediction:*"))
    assert redis_client.zcard(f"{key_prefix}metric:{run}:loss:train") == 0
    assert scalar(pg_conn, "SELECT count(*) FROM predictions") == len(forms)
    assert scalar(pg_conn, "SELECT count(DISTINCT timestamp) FROM metrics") == 1


def test_the_dagster_run_counts_an_error_once_and_its_check_warns_until_the_record_is_fixed(
    writer, version, redis_client, key_prefix, sync_config
):
    import dagster as dg

    from rp_pipeline import defs
    from rp_pipeline.resources import resources_for
    from rp_pipeline.schedules import JOB_NAME

    key = f"{key_prefix}run:{hand_run(redis_client, key_prefix, version, started_at='yesterday')}"
    job, instance = defs.resolve_job_def(JOB_NAME), dg.DagsterInstance.ephemeral()

    def cycle():
        result = job.execute_in_process(resources=resources_for(sync_config), instance=instance)
        assert result.success
        check = next(
            e
            for e in result.get_asset_check_evaluations()
            if e.asset_key.to_user_string() == "training_runs"
            and e.check_name == "no_rejected_records"
        )
        tags = instance.get_run_by_id(result.run_id).tags
        return (
            int(tags["rp_pipeline/errors"]),
            check.passed,
            check.metadata["rejected_last_sync"].value,
            check.metadata["rejected_seen_last_sync"].value,
        )

    assert cycle() == (
        1,
        False,
        1,
        1,
    )  # errors, check passed, newly rejected, still met by the sync
    assert cycle() == (0, False, 0, 1)
    redis_client.hset(key, "started_at", "2025-11-22T10:30:00+00:00")
    assert cycle() == (0, True, 0, 0)


def test_rejected_predictions_queued_again_as_the_readme_shows_load_and_leave_the_table(
    writer, version, redis_client, key_prefix, run_sync, pg_conn, pg_schemas
):
    bad = hand_prediction(redis_client, key_prefix, version, input="{bad")
    key = f"{key_prefix}prediction:{bad}"
    writer.log_prediction(version, {"later": True}, {})
    run_sync()  # rejected, and the watermark has passed it
    redis_client.hset(
        key, "input", json.dumps({"x": float("nan")})
    )  # what a newer sync now accepts
    sync = pg_schemas[1]
    pg_conn.execute(  # the README's statement, in this test's bookkeeping schema
        f'INSERT INTO "{sync}".pending (source, entity, redis_key, generation, reason) '
        "SELECT r.source, r.entity, r.redis_key, w.generation, 'retry after a fix' "
        f'FROM "{sync}".rejected_records r JOIN "{sync}".watermarks w USING (source, entity) '
        "WHERE r.entity = 'predictions' ON CONFLICT DO NOTHING"
    )

    again = run_sync()

    assert (again["predictions"].inserted, again["predictions"].pending) == (1, 0)
    assert scalar(
        pg_conn, "SELECT input_data FROM predictions WHERE origin_redis_id = %s", bad
    ) == {"x": None}
    assert rejected(pg_conn, pg_schemas) == {}
