"""RedisWriter against a real Redis: the aidb layout of docs/redis-layout.md key by key.

Covers every write method (key names and types, every field and its string
value, index scores, the model name map, defaults for unset values), in-place
updates, metric scores and names containing ':', arbitrary text, the batch
prediction path writing the same layout as single calls, the counter never
running ahead of the records under concurrent writers, and get_statistics.
"""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import redis

from rp_pipeline.writer import BATCH_CHUNK, RedisWriter

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?$")
NASTY_TEXT = "مدل تشخیص «چهره» \"quoted\" it's \\ back\tslash\nnew line'); DROP TABLE models; --"


@pytest.fixture
def writer(redis_url, key_prefix):
    with RedisWriter.from_url(redis_url, key_prefix=key_prefix) as writer:
        yield writer


def layout(client, prefix) -> dict[str, str]:
    """Every key under the prefix (prefix stripped) and its Redis type."""
    return {
        key[len(prefix) :]: client.type(key)
        for key in client.scan_iter(match=f"{prefix}*", count=1000)
    }


def pop_timestamp(record: dict, field: str) -> str:
    """Remove a timestamp field, asserting it is naive UTC ISO-8601 from just now."""
    value = record.pop(field)
    assert TIMESTAMP.match(value), value
    age = datetime.now(timezone.utc).replace(tzinfo=None) - datetime.fromisoformat(value)
    assert timedelta(0) <= age < timedelta(seconds=30), value
    return value


def test_create_model_writes_hash_index_and_name_map(writer, redis_client, key_prefix):
    model_id = writer.create_model(
        "resnet",
        description="image classifier",
        architecture="ResNet-50",
        framework="pytorch",
        task_type="classification",
        input_shape="[3, 224, 224]",
        output_shape="[1000]",
    )

    assert model_id == 1
    assert layout(redis_client, key_prefix) == {
        "counter:model": "string",
        "model:1": "hash",
        "idx:models": "zset",
        "model:name_to_id": "hash",
    }
    assert redis_client.get(f"{key_prefix}counter:model") == "1"
    record = redis_client.hgetall(f"{key_prefix}model:1")
    created_at = pop_timestamp(record, "created_at")
    assert pop_timestamp(record, "updated_at") == created_at
    assert record == {
        "id": "1",
        "name": "resnet",
        "description": "image classifier",
        "architecture": "ResNet-50",
        "framework": "pytorch",
        "task_type": "classification",
        "input_shape": "[3, 224, 224]",
        "output_shape": "[1000]",
    }
    assert redis_client.zrange(f"{key_prefix}idx:models", 0, -1, withscores=True) == [("1", 1.0)]
    assert redis_client.hgetall(f"{key_prefix}model:name_to_id") == {"resnet": "1"}


def test_create_model_defaults_are_empty_strings(writer, redis_client, key_prefix):
    writer.create_model("bare")

    record = redis_client.hgetall(f"{key_prefix}model:1")
    pop_timestamp(record, "created_at")
    pop_timestamp(record, "updated_at")
    assert record == {
        "id": "1",
        "name": "bare",
        "description": "",
        "architecture": "",
        "framework": "",
        "task_type": "",
        "input_shape": "",
        "output_shape": "",
    }


def test_duplicate_model_name_keeps_both_hashes_and_maps_to_the_later(
    writer, redis_client, key_prefix
):
    first = writer.create_model("bert", description="one")
    second = writer.create_model("bert", description="two")

    assert (first, second) == (1, 2)
    assert redis_client.hget(f"{key_prefix}model:1", "description") == "one"
    assert redis_client.hget(f"{key_prefix}model:2", "description") == "two"
    assert redis_client.hgetall(f"{key_prefix}model:name_to_id") == {"bert": "2"}
    assert redis_client.zrange(f"{key_prefix}idx:models", 0, -1, withscores=True) == [
        ("1", 1.0),
        ("2", 2.0),
    ]


def test_create_model_version_layout(writer, redis_client, key_prefix):
    first = writer.create_model_version(7, "1.0")
    second = writer.create_model_version(
        7,
        "2.0",
        checkpoint_path="/ckpt/v2.pt",
        config={"lr": 0.001, "layers": [1, 2]},
        status="archived",
    )
    other = writer.create_model_version(8, "1.0")

    assert (first, second, other) == (1, 2, 3)
    assert layout(redis_client, key_prefix) == {
        "counter:version": "string",
        "version:1": "hash",
        "version:2": "hash",
        "version:3": "hash",
        "idx:versions:7": "zset",
        "idx:versions:8": "zset",
    }
    record = redis_client.hgetall(f"{key_prefix}version:1")
    pop_timestamp(record, "created_at")
    assert record == {
        "id": "1",
        "model_id": "7",
        "version": "1.0",
        "checkpoint_path": "",
        "config": "{}",
        "status": "active",
    }
    record = redis_client.hgetall(f"{key_prefix}version:2")
    pop_timestamp(record, "created_at")
    assert record == {
        "id": "2",
        "model_id": "7",
        "version": "2.0",
        "checkpoint_path": "/ckpt/v2.pt",
        "config": '{"lr": 0.001, "layers": [1, 2]}',
        "status": "archived",
    }
    assert redis_client.zrange(f"{key_prefix}idx:versions:7", 0, -1, withscores=True) == [
        ("1", 1.0),
        ("2", 2.0),
    ]
    assert redis_client.zrange(f"{key_prefix}idx:versions:8", 0, -1, withscores=True) == [
        ("3", 3.0)
    ]


def test_create_dataset_layout(writer, redis_client, key_prefix):
    writer.create_dataset("empty")
    writer.create_dataset(
        "imagenet",
        description="ILSVRC",
        source_path="s3://data/imagenet",
        format="jpeg",
        size_bytes=150_000_000_000,
        num_samples=1_281_167,
        split_info={"train": 0.9, "val": 0.1},
        preprocessing={"resize": 224, "since": datetime(2024, 1, 2, 3, 4, 5)},
    )

    assert layout(redis_client, key_prefix) == {
        "counter:dataset": "string",
        "dataset:1": "hash",
        "dataset:2": "hash",
        "idx:datasets": "zset",
    }
    record = redis_client.hgetall(f"{key_prefix}dataset:1")
    pop_timestamp(record, "created_at")
    assert record == {
        "id": "1",
        "name": "empty",
        "description": "",
        "source_path": "",
        "format": "",
        "size_bytes": "0",
        "num_samples": "0",
        "split_info": "{}",
        "preprocessing": "{}",
    }
    record = redis_client.hgetall(f"{key_prefix}dataset:2")
    pop_timestamp(record, "created_at")
    assert record == {
        "id": "2",
        "name": "imagenet",
        "description": "ILSVRC",
        "source_path": "s3://data/imagenet",
        "format": "jpeg",
        "size_bytes": "150000000000",
        "num_samples": "1281167",
        "split_info": '{"train": 0.9, "val": 0.1}',
        "preprocessing": '{"resize": 224, "since": "2024-01-02 03:04:05"}',
    }
    assert redis_client.zrange(f"{key_prefix}idx:datasets", 0, -1, withscores=True) == [
        ("1", 1.0),
        ("2", 2.0),
    ]


def test_create_training_run_stores_unset_values_as_zero_and_empty(
    writer, redis_client, key_prefix
):
    run_id = writer.create_training_run(5)
    with_dataset = writer.create_training_run(5, dataset_id=3, run_name="baseline", status="queued")

    assert (run_id, with_dataset) == (1, 2)
    assert layout(redis_client, key_prefix) == {
        "counter:run": "string",
        "run:1": "hash",
        "run:2": "hash",
        "idx:runs": "zset",
    }
    record = redis_client.hgetall(f"{key_prefix}run:1")
    pop_timestamp(record, "started_at")
    assert record == {
        "id": "1",
        "model_version_id": "5",
        "dataset_id": "0",
        "run_name": "",
        "status": "started",
        "completed_at": "",
        "duration_seconds": "0",
        "final_loss": "0",
        "best_metric_value": "0",
        "artifacts": "{}",
    }
    record = redis_client.hgetall(f"{key_prefix}run:2")
    assert (record["dataset_id"], record["run_name"], record["status"]) == (
        "3",
        "baseline",
        "queued",
    )
    assert redis_client.zrange(f"{key_prefix}idx:runs", 0, -1, withscores=True) == [
        ("1", 1.0),
        ("2", 2.0),
    ]


def test_update_training_run_rewrites_only_given_fields(writer, redis_client, key_prefix):
    run_id = writer.create_training_run(5, dataset_id=2, run_name="r")
    before = redis_client.hgetall(f"{key_prefix}run:{run_id}")

    assert writer.update_training_run(run_id, status="running") is True
    after = redis_client.hgetall(f"{key_prefix}run:{run_id}")
    assert after == {**before, "status": "running"}

    finished = datetime(
        2025, 11, 22, 12, 0, 0, 250000, tzinfo=timezone(timedelta(hours=3, minutes=30))
    )
    assert writer.update_training_run(
        run_id,
        status="completed",
        completed_at=finished,
        duration_seconds=3600.5,
        final_loss=0.125,
        best_metric_value=0.93,
        artifacts={"model": "/out/model.pt"},
    )
    assert redis_client.hgetall(f"{key_prefix}run:{run_id}") == {
        **before,
        "status": "completed",
        "completed_at": "2025-11-22T08:30:00.250000",
        "duration_seconds": "3600.5",
        "final_loss": "0.125",
        "best_metric_value": "0.93",
        "artifacts": '{"model": "/out/model.pt"}',
    }

    writer.update_training_run(run_id, completed_at="2025-11-22T09:00:00", final_loss=0)
    record = redis_client.hgetall(f"{key_prefix}run:{run_id}")
    assert (record["completed_at"], record["final_loss"], record["status"]) == (
        "2025-11-22T09:00:00",
        "0",
        "completed",
    )


def test_update_of_a_missing_run_writes_nothing(writer, redis_client, key_prefix):
    assert writer.update_training_run(42, status="failed") is False
    assert writer.update_training_run(42) is False
    assert layout(redis_client, key_prefix) == {}


def test_log_hyperparameters_stores_str_of_each_value_and_overwrites(
    writer, redis_client, key_prefix
):
    writer.log_hyperparameters(
        3, {"lr": 0.001, "batch_size": 32, "layers": [64, 32], "amp": True, "decay": None}
    )
    writer.log_hyperparameters(3, {"lr": 0.01, "optimizer": "adam"})
    writer.log_hyperparameters(3, {})

    assert layout(redis_client, key_prefix) == {"hyperparam:3": "hash"}
    assert redis_client.hgetall(f"{key_prefix}hyperparam:3") == {
        "lr": "0.01",
        "batch_size": "32",
        "layers": "[64, 32]",
        "amp": "True",
        "decay": "None",
        "optimizer": "adam",
    }


def test_metric_score_is_epoch_else_step_else_zero(writer, redis_client, key_prefix):
    writer.log_metric(4, "loss", 0.9, epoch=3, step=300)
    writer.log_metric(4, "loss", 0.8, step=450)
    writer.log_metric(4, "loss", 0.7)
    writer.log_metric(4, "loss", 0.5, epoch=1, split="val")

    assert layout(redis_client, key_prefix) == {
        "metric:4:loss:train": "zset",
        "metric:4:loss:val": "zset",
    }
    points = redis_client.zrange(f"{key_prefix}metric:4:loss:train", 0, -1, withscores=True)
    assert [score for _, score in points] == [0.0, 3.0, 450.0]
    members = [json.loads(member) for member, _ in points]
    for member in members:
        assert list(member) == [
            "epoch",
            "step",
            "metric_name",
            "metric_value",
            "split",
            "timestamp",
        ]
        pop_timestamp(member, "timestamp")
    assert members == [
        {"epoch": None, "step": None, "metric_name": "loss", "metric_value": 0.7, "split": "train"},
        {"epoch": 3, "step": 300, "metric_name": "loss", "metric_value": 0.9, "split": "train"},
        {"epoch": None, "step": 450, "metric_name": "loss", "metric_value": 0.8, "split": "train"},
    ]
    [(val_member, val_score)] = redis_client.zrange(
        f"{key_prefix}metric:4:loss:val", 0, -1, withscores=True
    )
    assert val_score == 1.0 and json.loads(val_member)["split"] == "val"


def test_metric_names_and_splits_may_contain_colons(writer, redis_client, key_prefix):
    writer.log_metric(9, "acc:top:5", 0.75, epoch=2, split="eval:holdout")

    assert layout(redis_client, key_prefix) == {"metric:9:acc:top:5:eval:holdout": "zset"}
    [member] = redis_client.zrange(f"{key_prefix}metric:9:acc:top:5:eval:holdout", 0, -1)
    point = json.loads(member)
    assert (point["metric_name"], point["split"], point["epoch"]) == (
        "acc:top:5",
        "eval:holdout",
        2,
    )


def test_create_experiment_layout(writer, redis_client, key_prefix):
    writer.create_experiment("lr sweep")
    writer.create_experiment(
        "aug", description="augmentations", hypothesis="mixup helps", status="completed"
    )

    assert layout(redis_client, key_prefix) == {
        "counter:experiment": "string",
        "experiment:1": "hash",
        "experiment:2": "hash",
        "idx:experiments": "zset",
    }
    record = redis_client.hgetall(f"{key_prefix}experiment:1")
    pop_timestamp(record, "created_at")
    assert record == {
        "id": "1",
        "name": "lr sweep",
        "description": "",
        "hypothesis": "",
        "status": "active",
        "completed_at": "",
        "results": "{}",
    }
    record = redis_client.hgetall(f"{key_prefix}experiment:2")
    assert (record["description"], record["hypothesis"], record["status"]) == (
        "augmentations",
        "mixup helps",
        "completed",
    )
    assert redis_client.zrange(f"{key_prefix}idx:experiments", 0, -1, withscores=True) == [
        ("1", 1.0),
        ("2", 2.0),
    ]


def test_add_experiment_run_writes_membership_hash_and_run_set(writer, redis_client, key_prefix):
    writer.add_experiment_run(2, 11, variant_name="lr=0.1", notes="fast")
    writer.add_experiment_run(2, 12)
    writer.add_experiment_run(2, 11, variant_name="lr=0.1", notes="rerun")

    assert layout(redis_client, key_prefix) == {
        "exprun:2:11": "hash",
        "exprun:2:12": "hash",
        "exprun:2:runs": "set",
    }
    assert redis_client.hgetall(f"{key_prefix}exprun:2:11") == {
        "experiment_id": "2",
        "training_run_id": "11",
        "variant_name": "lr=0.1",
        "notes": "rerun",
    }
    assert redis_client.hgetall(f"{key_prefix}exprun:2:12") == {
        "experiment_id": "2",
        "training_run_id": "12",
        "variant_name": "",
        "notes": "",
    }
    assert redis_client.smembers(f"{key_prefix}exprun:2:runs") == {"11", "12"}


def test_log_prediction_layout_and_index_score_is_minus_logging_time(
    writer, redis_client, key_prefix
):
    before = time.time()
    pred_id = writer.log_prediction(
        3,
        {"pixels": [0.1, 0.2]},
        {"label": "cat"},
        confidence=0.97,
        inference_time_ms=4.5,
        metadata={"client": "web"},
    )
    after = time.time()

    assert pred_id == 1
    assert layout(redis_client, key_prefix) == {
        "counter:prediction": "string",
        "prediction:1": "hash",
        "idx:predictions:3": "zset",
    }
    record = redis_client.hgetall(f"{key_prefix}prediction:1")
    timestamp = pop_timestamp(record, "timestamp")
    assert record == {
        "id": "1",
        "model_version_id": "3",
        "input": '{"pixels": [0.1, 0.2]}',
        "output": '{"label": "cat"}',
        "confidence": "0.97",
        "inference_time_ms": "4.5",
        "metadata": '{"client": "web"}',
    }
    [(member, score)] = redis_client.zrange(
        f"{key_prefix}idx:predictions:3", 0, -1, withscores=True
    )
    assert member == "1"
    assert -after <= score <= -before
    logged_at = datetime.fromisoformat(timestamp).replace(tzinfo=timezone.utc).timestamp()
    assert abs(logged_at + score) < 1e-3


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        ([1, 2, 3], '{"data": [1, 2, 3]}'),
        ("cat", '{"data": "cat"}'),
        (7, '{"data": 7}'),
        (None, '{"data": null}'),
        ({"already": "a dict"}, '{"already": "a dict"}'),
    ],
)
def test_non_dict_input_and_output_are_wrapped_in_data(
    writer, redis_client, key_prefix, value, stored
):
    writer.log_prediction(1, value, value)

    record = redis_client.hgetall(f"{key_prefix}prediction:1")
    assert (record["input"], record["output"]) == (stored, stored)


def test_unset_prediction_numbers_are_zero_and_metadata_empty(writer, redis_client, key_prefix):
    writer.log_prediction(1, {}, {})

    record = redis_client.hgetall(f"{key_prefix}prediction:1")
    assert (record["confidence"], record["inference_time_ms"], record["metadata"]) == (
        "0",
        "0",
        "{}",
    )


def test_numpy_scalars_are_stored_as_plain_numbers(writer, redis_client, key_prefix):
    writer.log_prediction(
        np.int64(2), {}, {}, confidence=np.float64(0.5), inference_time_ms=np.float32(1.5)
    )
    writer.create_dataset("d", size_bytes=np.int64(150_000_000_000))

    record = redis_client.hgetall(f"{key_prefix}prediction:1")
    assert (record["model_version_id"], record["confidence"], record["inference_time_ms"]) == (
        "2",
        "0.5",
        "1.5",
    )
    assert redis_client.exists(f"{key_prefix}idx:predictions:2")
    assert redis_client.hget(f"{key_prefix}dataset:1", "size_bytes") == "150000000000"


def test_persian_and_quoted_text_round_trips(writer, redis_client, key_prefix):
    writer.create_model(NASTY_TEXT, description=NASTY_TEXT)
    writer.log_metric(1, NASTY_TEXT, 1.0, split=NASTY_TEXT)
    writer.log_prediction(1, NASTY_TEXT, {"text": NASTY_TEXT}, metadata={NASTY_TEXT: NASTY_TEXT})

    model = redis_client.hgetall(f"{key_prefix}model:1")
    assert (model["name"], model["description"]) == (NASTY_TEXT, NASTY_TEXT)
    assert redis_client.hgetall(f"{key_prefix}model:name_to_id") == {NASTY_TEXT: "1"}
    [member] = redis_client.zrange(f"{key_prefix}metric:1:{NASTY_TEXT}:{NASTY_TEXT}", 0, -1)
    assert json.loads(member)["metric_name"] == NASTY_TEXT
    prediction = redis_client.hgetall(f"{key_prefix}prediction:1")
    assert json.loads(prediction["input"]) == {"data": NASTY_TEXT}
    assert json.loads(prediction["output"]) == {"text": NASTY_TEXT}
    assert json.loads(prediction["metadata"]) == {NASTY_TEXT: NASTY_TEXT}
    assert prediction["input"] == json.dumps({"data": NASTY_TEXT}, default=str)


def test_batch_writes_the_same_layout_as_single_calls(redis_url, key_prefix, redis_client):
    records = [
        {
            "model_version_id": 1 + i % 3,
            "input_data": {"x": i} if i % 2 else [i, NASTY_TEXT],
            "output_data": i * 0.5,
            "confidence": None if i % 5 == 0 else 0.5 + i / 10_000,
            "inference_time_ms": None if i % 7 == 0 else i / 100,
            "metadata": None if i % 4 == 0 else {"i": i},
        }
        for i in range(BATCH_CHUNK * 2 + 17)  # spans several chunks
    ]
    single_prefix, batch_prefix = f"{key_prefix}single:", f"{key_prefix}batch:"
    with (
        RedisWriter.from_url(redis_url, key_prefix=single_prefix) as single,
        RedisWriter.from_url(redis_url, key_prefix=batch_prefix) as batch,
    ):
        single_ids = [single.log_prediction(**record) for record in records]
        batch_ids = batch.log_predictions(iter(records))
        assert batch.log_predictions([]) == []

    assert batch_ids == single_ids == list(range(1, len(records) + 1))
    assert layout(redis_client, batch_prefix) == layout(redis_client, single_prefix)
    assert redis_client.get(f"{batch_prefix}counter:prediction") == str(len(records))
    for pred_id in (1, 2, 5, 7, 999, 1000, 1001, len(records)):
        single_record = redis_client.hgetall(f"{single_prefix}prediction:{pred_id}")
        batch_record = redis_client.hgetall(f"{batch_prefix}prediction:{pred_id}")
        pop_timestamp(single_record, "timestamp")
        pop_timestamp(batch_record, "timestamp")
        assert batch_record == single_record
    for version in (1, 2, 3):
        single_index = redis_client.zrange(f"{single_prefix}idx:predictions:{version}", 0, -1)
        batch_index = redis_client.zrange(
            f"{batch_prefix}idx:predictions:{version}", 0, -1, withscores=True
        )
        assert {member for member, _ in batch_index} == set(single_index)
        assert all(-time.time() <= score < -(time.time() - 60) for _, score in batch_index)


def test_counter_never_ahead_of_records_under_concurrent_writers(
    writer, redis_url, key_prefix, redis_client
):
    stop = threading.Event()
    gaps: list[tuple[str, int]] = []
    checked_up_to = {"prediction": 0, "model": 0}

    def watch():
        # Records are never deleted here, so each id needs checking only once.
        reader = redis.Redis.from_url(redis_url, decode_responses=True)
        while not stop.is_set():
            for entity in checked_up_to:
                counter = int(reader.get(f"{key_prefix}counter:{entity}") or 0)
                ids = range(checked_up_to[entity] + 1, counter + 1)
                with reader.pipeline(transaction=False) as pipe:
                    for record_id in ids:
                        pipe.exists(f"{key_prefix}{entity}:{record_id}")
                    found = pipe.execute() if ids else []
                gaps.extend(
                    (entity, record_id) for record_id, exists in zip(ids, found) if not exists
                )
                checked_up_to[entity] = counter
        reader.close()

    written: list[int] = []
    models: list[int] = []

    def write(worker: int):
        for i in range(150):
            written.append(writer.log_prediction(worker, {"i": i}, i))
            if i % 25 == 0:
                batch = (
                    {"model_version_id": worker, "input_data": j, "output_data": j}
                    for j in range(40)
                )
                written.extend(writer.log_predictions(batch))
                models.append(writer.create_model(f"m{worker}"))

    watcher = threading.Thread(target=watch)
    watcher.start()
    writers = [threading.Thread(target=write, args=(worker,)) for worker in range(8)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    watcher.join()

    assert gaps == []
    assert checked_up_to["prediction"] > 0
    assert sorted(written) == list(range(1, 8 * (150 + 6 * 40) + 1))
    assert sorted(models) == list(range(1, 8 * 6 + 1))
    for entity, count in (("prediction", len(written)), ("model", len(models))):
        assert redis_client.get(f"{key_prefix}counter:{entity}") == str(count)
        with redis_client.pipeline(transaction=False) as pipe:
            for record_id in range(1, count + 1):
                pipe.exists(f"{key_prefix}{entity}:{record_id}")
            assert all(pipe.execute())
    indexed = sum(
        redis_client.zcard(f"{key_prefix}idx:predictions:{worker}") for worker in range(8)
    )
    assert indexed == len(written)


def test_get_statistics_counts_indexes_and_counters(writer):
    assert writer.get_statistics() == {
        "models": 0,
        "model_versions": 0,
        "datasets": 0,
        "training_runs": 0,
        "completed_runs": 0,
        "experiments": 0,
        "predictions": 0,
    }

    model = writer.create_model("a")
    writer.create_model("a")
    versions = [writer.create_model_version(model, v) for v in ("1", "2", "3")]
    writer.create_dataset("d")
    done = writer.create_training_run(versions[0])
    writer.create_training_run(versions[1])
    writer.update_training_run(done, status="completed")
    writer.create_experiment("e")
    writer.log_predictions(
        {"model_version_id": versions[0], "input_data": i, "output_data": i} for i in range(4)
    )
    writer.log_prediction(versions[2], 1, 1)

    assert writer.get_statistics() == {
        "models": 2,
        "model_versions": 3,
        "datasets": 1,
        "training_runs": 2,
        "completed_runs": 1,
        "experiments": 1,
        "predictions": 5,
    }


def test_writer_takes_an_existing_client_even_without_decoding(redis_url, key_prefix, redis_client):
    client = redis.Redis.from_url(redis_url)  # bytes responses
    assert RedisWriter(client).key_prefix == "aidb:"
    writer = RedisWriter(client, key_prefix=key_prefix)

    run_id = writer.create_training_run(1)
    writer.update_training_run(run_id, status="completed")

    assert redis_client.hget(f"{key_prefix}run:{run_id}", "status") == "completed"
    assert writer.get_statistics()["completed_runs"] == 1
    client.close()


def test_a_batch_after_redis_lost_its_scripts_writes_every_record_once(
    writer, redis_client, key_prefix
):
    # A restart or SCRIPT FLUSH: the chunks sent before the script is loaded again fail alike
    # (NOSCRIPT, nothing written) and are sent again, in order, each once.
    assert writer.log_prediction(1, {"x": -1}, 0) == 1
    redis_client.script_flush()
    count = BATCH_CHUNK * 2 + 5
    ids = writer.log_predictions(
        {"model_version_id": 1, "input_data": {"x": i}, "output_data": i} for i in range(count)
    )
    assert ids == list(range(2, count + 2))
    assert redis_client.get(f"{key_prefix}counter:prediction") == str(count + 1)
    assert redis_client.zcard(f"{key_prefix}idx:predictions:1") == count + 1
    for i in (0, BATCH_CHUNK - 1, BATCH_CHUNK, count - 1):
        stored = redis_client.hget(f"{key_prefix}prediction:{ids[i]}", "input")
        assert json.loads(stored) == {"x": i}
    redis_client.script_flush()
    assert writer.log_prediction(1, {"x": "after"}, 0) == count + 2


def test_a_client_set_to_another_encoding_writes_its_own_bytes(redis_url, key_prefix):
    # An application's client with encoding="latin-1" stores "é" as one byte, as redis-py would.
    client = redis.Redis.from_url(redis_url, encoding="latin-1")
    writer = RedisWriter(client, key_prefix=key_prefix)
    model = writer.create_model("modèle")
    pred = writer.log_prediction(1, {"x": 1}, 0, metadata={"note": "café"})
    raw = redis.Redis.from_url(redis_url)
    assert raw.hget(f"{key_prefix}model:{model}", "name") == "modèle".encode("latin-1")
    assert raw.hget(f"{key_prefix}model:name_to_id", "modèle".encode("latin-1")) == b"1"
    assert json.loads(raw.hget(f"{key_prefix}prediction:{pred}", "metadata")) == {"note": "café"}
    client.close()
    raw.close()
