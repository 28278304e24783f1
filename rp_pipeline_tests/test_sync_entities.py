"""Every one of the nine entities, end to end: written by RedisWriter, synced, read back from Postgres.

Covers exact rows and values per table; column types (BIGINT ids and size_bytes,
JSONB, TIMESTAMPTZ read as UTC); '' and the "not set" zeros becoming NULL
(completed_at, dataset_id, duration_seconds, final_loss, best_metric_value, confidence,
inference_time_ms);
input/output landing in input_data/output_data with the `{"data": x}` wrapping
kept as JSON; foreign keys mapped by name to Postgres's own ids (which differ from
the Redis ids here); and the guide's statistics from `stats_from_results`.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest
from psycopg.rows import dict_row

from rp_pipeline.engine import stats_from_results
from rp_pipeline.schema import migrate

from .faults import TABLES

IMAGENET_BYTES = 150_000_000_000


def rows(conn, sql: str, *params) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(sql, params or None).fetchall()


def one(conn, sql: str, *params) -> dict:
    found = rows(conn, sql, *params)
    assert len(found) == 1, found
    return found[0]


def utc(redis_timestamp: str) -> datetime:
    """What a naive-UTC Redis timestamp must read back as from TIMESTAMPTZ."""
    return datetime.fromisoformat(redis_timestamp).replace(tzinfo=timezone.utc)


def fill_tree(w) -> SimpleNamespace:
    """A small but complete tree of all nine entities; returns the Redis ids."""
    ids = SimpleNamespace()
    ids.resnet = w.create_model(
        "resnet-50",
        description="image classifier",
        architecture="ResNet-50",
        framework="pytorch",
        task_type="classification",
        input_shape="[3, 224, 224]",
        output_shape="[1000]",
    )
    ids.bert = w.create_model("bert-base", framework="transformers", task_type="nlp")
    ids.v_resnet = w.create_model_version(
        ids.resnet,
        "1.0.0",
        checkpoint_path="/ckpt/resnet/1.pt",
        config={"lr": 0.1, "layers": [3, 4, 6, 3], "head": {"dropout": 0.5}},
    )
    ids.v_bert = w.create_model_version(ids.bert, "2.1", status="staging")
    ids.imagenet = w.create_dataset(
        "imagenet",
        description="ILSVRC-2012",
        source_path="/data/imagenet",
        format="jpeg",
        size_bytes=IMAGENET_BYTES,
        num_samples=14_197_122,
        split_info={"train": 0.9, "val": 0.1},
        preprocessing={"resize": 224, "normalize": True},
    )
    ids.run_done = w.create_training_run(
        ids.v_resnet, dataset_id=ids.imagenet, run_name="resnet-imagenet"
    )
    w.update_training_run(
        ids.run_done,
        status="completed",
        completed_at=datetime(2025, 11, 22, 12, 0, 0, 123456),
        duration_seconds=3600.5,
        final_loss=0.123,
        best_metric_value=0.765,
        artifacts={"weights": "s3://bucket/resnet.pt"},
    )
    ids.run_open = w.create_training_run(ids.v_bert, run_name="bert-no-dataset")
    w.log_hyperparameters(ids.run_done, {"lr": 0.1, "batch_size": 256, "optimizer": "sgd"})
    w.log_metric(ids.run_done, "loss", 0.9, epoch=1)
    w.log_metric(ids.run_done, "loss", 0.5, epoch=2)
    w.log_metric(ids.run_done, "accuracy", 0.7, step=100, split="val")
    w.log_metric(ids.run_open, "loss", 1.5)
    ids.experiment = w.create_experiment(
        "augmentations", description="aug study", hypothesis="more aug helps"
    )
    w.add_experiment_run(ids.experiment, ids.run_done, variant_name="baseline", notes="no aug")
    w.add_experiment_run(ids.experiment, ids.run_open, variant_name="heavy")
    ids.p_dict = w.log_prediction(
        ids.v_resnet,
        {"image": "cat.jpg"},
        {"label": "cat", "p": 0.98},
        confidence=0.98,
        inference_time_ms=12.5,
        metadata={"client": "web"},
    )
    ids.p_list = w.log_prediction(ids.v_resnet, [1, 2, 3], "cat")
    ids.p_text = w.log_prediction(ids.v_bert, "some text", 0.5, confidence=0.5)
    return ids


@pytest.fixture
def synced(writer, redis_client, key_prefix, sync_config, pg_conn, run_sync):
    """The tree, synced once; Postgres ids start far from the Redis ids so that a mix-up shows."""
    migrate(sync_config)
    for n, table in enumerate(TABLES, start=1):
        pg_conn.execute(f"ALTER TABLE {table} ALTER COLUMN id RESTART WITH {n * 1000}")
    ids = fill_tree(writer)
    results = run_sync()
    return SimpleNamespace(
        ids=ids, results=results, raw=lambda key: redis_client.hgetall(key_prefix + key)
    )


def pg_id(conn, table: str, where: str, *params) -> int:
    return one(conn, f"SELECT id FROM {table} WHERE {where}", *params)["id"]


def test_models_sync_every_field_with_postgres_ids(synced, pg_conn):
    raw = synced.raw(f"model:{synced.ids.resnet}")
    found = rows(pg_conn, "SELECT * FROM models ORDER BY name DESC")
    assert [r["name"] for r in found] == ["resnet-50", "bert-base"]
    resnet = found[0]
    assert resnet["id"] >= 1000 and resnet["id"] != synced.ids.resnet
    assert {
        k: resnet[k]
        for k in (
            "description",
            "architecture",
            "framework",
            "task_type",
            "input_shape",
            "output_shape",
        )
    } == {
        "description": "image classifier",
        "architecture": "ResNet-50",
        "framework": "pytorch",
        "task_type": "classification",
        "input_shape": "[3, 224, 224]",
        "output_shape": "[1000]",
    }
    assert resnet["created_at"] == utc(raw["created_at"])
    assert resnet["updated_at"] == utc(raw["updated_at"])
    assert found[1]["description"] is None  # '' (nothing given) becomes NULL, as every '' does


def test_model_versions_map_model_id_by_name_and_keep_config_as_jsonb(synced, pg_conn):
    raw = synced.raw(f"version:{synced.ids.v_resnet}")
    resnet_pg = pg_id(pg_conn, "models", "name = %s", "resnet-50")
    bert_pg = pg_id(pg_conn, "models", "name = %s", "bert-base")
    v = one(
        pg_conn,
        "SELECT *, jsonb_typeof(config) AS config_type FROM model_versions WHERE version = '1.0.0'",
    )
    assert v["model_id"] == resnet_pg != synced.ids.resnet
    assert v["checkpoint_path"] == "/ckpt/resnet/1.pt"
    assert v["config"] == {"lr": 0.1, "layers": [3, 4, 6, 3], "head": {"dropout": 0.5}}
    assert v["config_type"] == "object"
    assert v["status"] == "active"
    assert v["created_at"] == utc(raw["created_at"])
    bert_v = one(pg_conn, "SELECT * FROM model_versions WHERE version = '2.1'")
    assert (bert_v["model_id"], bert_v["status"], bert_v["config"]) == (bert_pg, "staging", {})


def test_datasets_keep_150_gb_size_as_bigint_and_json_fields(synced, pg_conn):
    raw = synced.raw(f"dataset:{synced.ids.imagenet}")
    d = one(pg_conn, "SELECT * FROM datasets")
    assert d == {
        "id": d["id"],
        "name": "imagenet",
        "description": "ILSVRC-2012",
        "source_path": "/data/imagenet",
        "format": "jpeg",
        "size_bytes": IMAGENET_BYTES,
        "num_samples": 14_197_122,
        "split_info": {"train": 0.9, "val": 0.1},
        "preprocessing": {"resize": 224, "normalize": True},
        "created_at": utc(raw["created_at"]),
        "origin_source": d["origin_source"],
    }
    assert one(pg_conn, "SELECT size_bytes > 2^32 AS big FROM datasets")["big"]


def test_training_runs_map_parents_and_turn_not_set_values_into_null(synced, pg_conn):
    done_raw, open_raw = (
        synced.raw(f"run:{synced.ids.run_done}"),
        synced.raw(f"run:{synced.ids.run_open}"),
    )
    assert (done_raw["dataset_id"], open_raw["dataset_id"]) == (str(synced.ids.imagenet), "0")
    assert (open_raw["completed_at"], open_raw["best_metric_value"]) == ("", "0")
    done = one(pg_conn, "SELECT * FROM training_runs WHERE run_name = 'resnet-imagenet'")
    assert done["model_version_id"] == pg_id(pg_conn, "model_versions", "version = '1.0.0'")
    assert done["dataset_id"] == pg_id(pg_conn, "datasets", "name = 'imagenet'")
    assert done["status"] == "completed"
    assert done["started_at"] == utc(done_raw["started_at"])
    assert done["completed_at"] == datetime(2025, 11, 22, 12, 0, 0, 123456, tzinfo=timezone.utc)
    assert (done["duration_seconds"], done["final_loss"], done["best_metric_value"]) == (
        3600.5,
        0.123,
        0.765,
    )
    assert done["artifacts"] == {"weights": "s3://bucket/resnet.pt"}

    running = one(pg_conn, "SELECT * FROM training_runs WHERE run_name = 'bert-no-dataset'")
    assert running["model_version_id"] == pg_id(pg_conn, "model_versions", "version = '2.1'")
    assert running["status"] == "started"
    assert running["dataset_id"] is None  # '0' = no dataset
    assert running["completed_at"] is None  # '' = not completed
    assert running["best_metric_value"] is None  # '0' = not set
    assert (running["duration_seconds"], running["final_loss"]) == (
        None,
        None,
    )  # '0' = not set, as the spec says
    assert running["artifacts"] == {}


def test_hyperparameters_become_one_row_per_parameter_of_the_mapped_run(synced, pg_conn):
    run_pg = pg_id(pg_conn, "training_runs", "run_name = 'resnet-imagenet'")
    found = rows(
        pg_conn,
        "SELECT training_run_id, param_name, param_value FROM hyperparameters ORDER BY param_name",
    )
    assert found == [
        {"training_run_id": run_pg, "param_name": "batch_size", "param_value": "256"},
        {"training_run_id": run_pg, "param_name": "lr", "param_value": "0.1"},
        {"training_run_id": run_pg, "param_name": "optimizer", "param_value": "sgd"},
    ]


def test_metrics_become_one_row_per_logged_point(synced, pg_conn, redis_client, key_prefix):
    done_pg = pg_id(pg_conn, "training_runs", "run_name = 'resnet-imagenet'")
    open_pg = pg_id(pg_conn, "training_runs", "run_name = 'bert-no-dataset'")
    found = rows(
        pg_conn,
        "SELECT training_run_id, epoch, step, metric_name, metric_value, split, timestamp "
        "FROM metrics ORDER BY training_run_id, metric_name, epoch",
    )
    stamps = [p["timestamp"] for p in found]
    assert all(s.tzinfo is not None for s in stamps)
    assert [{k: v for k, v in p.items() if k != "timestamp"} for p in found] == [
        {
            "training_run_id": done_pg,
            "epoch": None,
            "step": 100,
            "metric_name": "accuracy",
            "metric_value": 0.7,
            "split": "val",
        },
        {
            "training_run_id": done_pg,
            "epoch": 1,
            "step": None,
            "metric_name": "loss",
            "metric_value": 0.9,
            "split": "train",
        },
        {
            "training_run_id": done_pg,
            "epoch": 2,
            "step": None,
            "metric_name": "loss",
            "metric_value": 0.5,
            "split": "train",
        },
        {
            "training_run_id": open_pg,
            "epoch": None,
            "step": None,
            "metric_name": "loss",
            "metric_value": 1.5,
            "split": "train",
        },
    ]
    member = json.loads(
        redis_client.zrange(f"{key_prefix}metric:{synced.ids.run_open}:loss:train", 0, -1)[0]
    )
    assert found[3]["timestamp"] == utc(member["timestamp"])


def test_experiments_sync_with_empty_completed_at_as_null(synced, pg_conn):
    raw = synced.raw(f"experiment:{synced.ids.experiment}")
    e = one(pg_conn, "SELECT * FROM experiments")
    assert {
        k: e[k] for k in ("name", "description", "hypothesis", "status", "completed_at", "results")
    } == {
        "name": "augmentations",
        "description": "aug study",
        "hypothesis": "more aug helps",
        "status": "active",
        "completed_at": None,
        "results": {},
    }
    assert e["created_at"] == utc(raw["created_at"])


def test_experiment_runs_map_both_parents(synced, pg_conn):
    exp_pg = pg_id(pg_conn, "experiments", "name = 'augmentations'")
    done_pg = pg_id(pg_conn, "training_runs", "run_name = 'resnet-imagenet'")
    open_pg = pg_id(pg_conn, "training_runs", "run_name = 'bert-no-dataset'")
    found = rows(
        pg_conn,
        "SELECT experiment_id, training_run_id, variant_name, notes FROM experiment_runs "
        "ORDER BY variant_name",
    )
    assert found == [
        {
            "experiment_id": exp_pg,
            "training_run_id": done_pg,
            "variant_name": "baseline",
            "notes": "no aug",
        },
        {
            "experiment_id": exp_pg,
            "training_run_id": open_pg,
            "variant_name": "heavy",
            "notes": None,
        },
    ]


def test_predictions_keep_input_output_json_and_null_the_not_given_numbers(synced, pg_conn):
    v_resnet = pg_id(pg_conn, "model_versions", "version = '1.0.0'")
    v_bert = pg_id(pg_conn, "model_versions", "version = '2.1'")
    found = rows(
        pg_conn,
        "SELECT model_version_id, input_data, output_data, confidence, inference_time_ms, "
        "timestamp, metadata, jsonb_typeof(input_data) AS input_type FROM predictions "
        "ORDER BY origin_redis_id",
    )
    raws = [
        synced.raw(f"prediction:{i}")
        for i in (synced.ids.p_dict, synced.ids.p_list, synced.ids.p_text)
    ]
    assert [p.pop("timestamp") for p in found] == [utc(r["timestamp"]) for r in raws]
    assert found == [
        {
            "model_version_id": v_resnet,
            "input_data": {"image": "cat.jpg"},
            "output_data": {"label": "cat", "p": 0.98},
            "confidence": 0.98,
            "inference_time_ms": 12.5,
            "metadata": {"client": "web"},
            "input_type": "object",
        },
        {
            "model_version_id": v_resnet,
            "input_data": {"data": [1, 2, 3]},
            "output_data": {"data": "cat"},
            "confidence": None,
            "inference_time_ms": None,
            "metadata": {},
            "input_type": "object",
        },
        {
            "model_version_id": v_bert,
            "input_data": {"data": "some text"},
            "output_data": {"data": 0.5},
            "confidence": 0.5,
            "inference_time_ms": None,
            "metadata": {},
            "input_type": "object",
        },
    ]


def test_columns_have_the_widened_types(synced, pg_conn, pg_schemas):
    types = {
        (r["table_name"], r["column_name"]): r["data_type"]
        for r in rows(
            pg_conn,
            "SELECT table_name, column_name, data_type FROM information_schema.columns WHERE table_schema = %s",
            pg_schemas[0],
        )
    }
    expected = {
        "bigint": [(t, "id") for t in TABLES]
        + [
            ("model_versions", "model_id"),
            ("datasets", "size_bytes"),
            ("datasets", "num_samples"),
            ("training_runs", "model_version_id"),
            ("training_runs", "dataset_id"),
            ("hyperparameters", "training_run_id"),
            ("metrics", "training_run_id"),
            ("metrics", "epoch"),
            ("metrics", "step"),
            ("experiment_runs", "experiment_id"),
            ("experiment_runs", "training_run_id"),
            ("predictions", "model_version_id"),
        ],
        "jsonb": [
            ("model_versions", "config"),
            ("datasets", "split_info"),
            ("datasets", "preprocessing"),
            ("training_runs", "artifacts"),
            ("experiments", "results"),
            ("predictions", "input_data"),
            ("predictions", "output_data"),
            ("predictions", "metadata"),
        ],
        "timestamp with time zone": [
            ("models", "created_at"),
            ("models", "updated_at"),
            ("model_versions", "created_at"),
            ("datasets", "created_at"),
            ("training_runs", "started_at"),
            ("training_runs", "completed_at"),
            ("metrics", "timestamp"),
            ("experiments", "created_at"),
            ("experiments", "completed_at"),
            ("predictions", "timestamp"),
        ],
        "double precision": [
            ("training_runs", "duration_seconds"),
            ("training_runs", "final_loss"),
            ("training_runs", "best_metric_value"),
            ("metrics", "metric_value"),
            ("predictions", "confidence"),
            ("predictions", "inference_time_ms"),
        ],
    }
    assert {col: types[col] for cols in expected.values() for col in cols} == {
        col: kind for kind, cols in expected.items() for col in cols
    }


def test_timestamps_read_as_utc_whatever_the_session_time_zone(synced, pg_conn):
    raw = synced.raw(f"model:{synced.ids.resnet}")
    pg_conn.execute("SET TIME ZONE 'Asia/Tehran'")
    local = one(
        pg_conn,
        "SELECT created_at, to_char(created_at AT TIME ZONE 'UTC', "
        "'YYYY-MM-DD\"T\"HH24:MI:SS.US') AS utc_text FROM models WHERE name = 'resnet-50'",
    )
    assert local["created_at"] == utc(raw["created_at"])
    assert local["utc_text"] == datetime.fromisoformat(raw["created_at"]).strftime(
        "%Y-%m-%dT%H:%M:%S.%f"
    )


def test_every_row_in_every_table_is_accounted_for(synced, pg_conn):
    counts = {t: one(pg_conn, f"SELECT count(*) AS n FROM {t}")["n"] for t in TABLES}
    assert counts == {
        "models": 2,
        "model_versions": 2,
        "datasets": 1,
        "training_runs": 2,
        "hyperparameters": 3,
        "metrics": 4,
        "experiments": 1,
        "experiment_runs": 2,
        "predictions": 3,
    }


def test_stats_count_synced_records_per_kind_and_no_errors(synced):
    assert stats_from_results(synced.results.values()) == {
        "models": 2,
        "versions": 2,
        "datasets": 1,
        "runs": 2,
        "hyperparams": 3,
        "metrics": 4,
        "experiments": 1,
        "predictions": 3,
        "errors": 0,
        "experiment_runs": 2,
    }
    assert {
        name: (r.read, r.inserted, r.rejected, r.pending) for name, r in synced.results.items()
    } == {
        "models": (2, 2, 0, 0),
        "datasets": (1, 1, 0, 0),
        "experiments": (1, 1, 0, 0),
        "model_versions": (2, 2, 0, 0),
        "training_runs": (2, 2, 0, 0),
        "hyperparameters": (3, 3, 0, 0),
        "metrics": (4, 4, 0, 0),
        "experiment_runs": (2, 2, 0, 0),
        "predictions": (3, 3, 0, 0),
    }


def everything(conn) -> dict[str, list[tuple]]:
    """Every table's rows with foreign keys replaced by the parent's natural key, ids left out."""
    return {
        "models": conn.execute(
            "SELECT name, description, architecture, framework, task_type, input_shape, "
            "output_shape FROM models ORDER BY name"
        ).fetchall(),
        "model_versions": conn.execute(
            "SELECT m.name, v.version, v.config FROM model_versions v "
            "JOIN models m ON m.id = v.model_id ORDER BY 1, 2"
        ).fetchall(),
        "training_runs": conn.execute(
            "SELECT r.run_name, v.version, d.name, r.status, r.best_metric_value "
            "FROM training_runs r JOIN model_versions v ON v.id = r.model_version_id "
            "LEFT JOIN datasets d ON d.id = r.dataset_id ORDER BY 1"
        ).fetchall(),
        "hyperparameters": conn.execute(
            "SELECT r.run_name, h.param_name, h.param_value FROM hyperparameters h "
            "JOIN training_runs r ON r.id = h.training_run_id ORDER BY 1, 2"
        ).fetchall(),
        "metrics": conn.execute(
            "SELECT r.run_name, x.metric_name, x.split, x.epoch, x.step, x.metric_value "
            "FROM metrics x JOIN training_runs r ON r.id = x.training_run_id "
            "ORDER BY 1, 2, 3, 4, 5"
        ).fetchall(),
        "experiment_runs": conn.execute(
            "SELECT e.name, r.run_name, er.variant_name FROM experiment_runs er "
            "JOIN experiments e ON e.id = er.experiment_id "
            "JOIN training_runs r ON r.id = er.training_run_id ORDER BY 2"
        ).fetchall(),
        "predictions": conn.execute(
            "SELECT v.version, p.input_data, p.output_data, p.confidence FROM predictions p "
            "JOIN model_versions v ON v.id = p.model_version_id "
            "ORDER BY p.origin_redis_id"
        ).fetchall(),
    }


@pytest.fixture
def other_target(pg_conn):
    """A second pair of schemas to sync the same Redis into; dropped afterwards."""
    tag = uuid.uuid4().hex[:10]
    yield {"schema": f"a2_{tag}", "sync_schema": f"s2_{tag}"}
    for schema in (f"a2_{tag}", f"s2_{tag}"):
        pg_conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_chunks_of_one_record_load_the_same_rows_as_one_big_chunk(
    writer, run_sync, pg_conn, other_target
):
    fill_tree(writer)

    small = run_sync(chunk_size=1)
    big = run_sync(**other_target)

    loaded = everything(pg_conn)
    pg_conn.execute(f'SET search_path TO "{other_target["schema"]}"')
    assert loaded == everything(pg_conn)
    assert [len(loaded[t]) for t in loaded] == [2, 2, 2, 3, 4, 2, 3]
    assert stats_from_results(small.values()) == stats_from_results(big.values())
