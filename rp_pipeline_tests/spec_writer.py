"""A test-only writer that follows docs/redis-layout.md the way the original Redis adapter does.

Not the project's `RedisWriter`: this one reproduces the old adapter's habits, which
real data carries — the id is allocated with INCR and the record written afterwards
by separate, non-atomic commands; JSON is `json.dumps(obj, default=str)`, so NaN and
Infinity pass through as bare tokens; timestamps are `datetime.utcnow().isoformat()`
(or whatever `clock` returns, to play another client), and a timestamp the
application passes in is written as it is given; a run is created with
`duration_seconds`, `final_loss` and `best_metric_value` all `0`; hyperparameters are
`str(value)`; a non-dict prediction input or output is stored as `{"data": x}`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import redis


def utcnow_isoformat() -> str:
    """What the original adapter writes for "now"."""
    return datetime.utcnow().isoformat()


class SpecWriter:
    """The original adapter's public methods, writing the aidb layout with its separate commands."""

    def __init__(
        self,
        client: redis.Redis,
        key_prefix: str = "aidb:",
        clock: Callable[[], str] = utcnow_isoformat,
    ):
        self.client, self.prefix, self.clock = client, key_prefix, clock

    def _key(self, suffix: str) -> str:
        return self.prefix + suffix

    def _new_record(
        self, counter: str, record: str, fields: dict, index: str | None, score=None
    ) -> int:
        new_id = self.client.incr(self._key(f"counter:{counter}"))
        self.client.hset(self._key(f"{record}:{new_id}"), mapping={"id": new_id, **fields})
        if index:
            self.client.zadd(self._key(index), {str(new_id): new_id if score is None else score})
        return new_id

    # -- entities with an id -------------------------------------------------------------------

    def create_model(
        self,
        name: str,
        description: str = "",
        architecture: str = "",
        framework: str = "",
        task_type: str = "",
        input_shape: str = "",
        output_shape: str = "",
    ) -> int:
        now = self.clock()
        model_id = self._new_record(
            "model",
            "model",
            {
                "name": name,
                "description": description,
                "architecture": architecture,
                "framework": framework,
                "task_type": task_type,
                "input_shape": input_shape,
                "output_shape": output_shape,
                "created_at": now,
                "updated_at": now,
            },
            "idx:models",
        )
        self.client.hset(self._key("model:name_to_id"), name, model_id)
        return model_id

    def create_model_version(
        self,
        model_id: int,
        version: str,
        checkpoint_path: str = "",
        config: dict | None = None,
        status: str = "active",
    ) -> int:
        return self._new_record(
            "version",
            "version",
            {
                "model_id": model_id,
                "version": version,
                "checkpoint_path": checkpoint_path,
                "config": json.dumps(config or {}, default=str),
                "status": status,
                "created_at": self.clock(),
            },
            f"idx:versions:{model_id}",
        )

    def create_dataset(
        self,
        name: str,
        description: str = "",
        source_path: str = "",
        format: str = "",
        size_bytes: int = 0,
        num_samples: int = 0,
        split_info: dict | None = None,
        preprocessing: dict | None = None,
    ) -> int:
        return self._new_record(
            "dataset",
            "dataset",
            {
                "name": name,
                "description": description,
                "source_path": source_path,
                "format": format,
                "size_bytes": size_bytes,
                "num_samples": num_samples,
                "split_info": json.dumps(split_info or {}, default=str),
                "preprocessing": json.dumps(preprocessing or {}, default=str),
                "created_at": self.clock(),
            },
            "idx:datasets",
        )

    def create_training_run(
        self,
        model_version_id: int,
        dataset_id: int | None = None,
        run_name: str = "",
        status: str = "started",
    ) -> int:
        return self._new_record(
            "run",
            "run",
            {
                "model_version_id": model_version_id,
                "dataset_id": dataset_id or 0,
                "run_name": run_name,
                "status": status,
                "started_at": self.clock(),
                "completed_at": "",
                "duration_seconds": 0,
                "final_loss": 0,
                "best_metric_value": 0,
                "artifacts": json.dumps({}),
            },
            "idx:runs",
        )

    def create_experiment(
        self, name: str, description: str = "", hypothesis: str = "", status: str = "active"
    ) -> int:
        return self._new_record(
            "experiment",
            "experiment",
            {
                "name": name,
                "description": description,
                "hypothesis": hypothesis,
                "status": status,
                "created_at": self.clock(),
                "completed_at": "",
                "results": json.dumps({}),
            },
            "idx:experiments",
        )

    def log_prediction(
        self,
        model_version_id: int,
        input_data: Any,
        output_data: Any,
        confidence: float | None = None,
        inference_time_ms: float | None = None,
        metadata: dict | None = None,
    ) -> int:
        wrap = lambda x: x if isinstance(x, dict) else {"data": x}  # noqa: E731
        return self._new_record(
            "prediction",
            "prediction",
            {
                "model_version_id": model_version_id,
                "input": json.dumps(wrap(input_data), default=str),
                "output": json.dumps(wrap(output_data), default=str),
                "confidence": confidence or 0,
                "inference_time_ms": inference_time_ms or 0,
                "timestamp": self.clock(),
                "metadata": json.dumps(metadata or {}, default=str),
            },
            f"idx:predictions:{model_version_id}",
            score=-time.time(),
        )

    # -- writes without an id ------------------------------------------------------------------

    def update_training_run(
        self,
        run_id: int,
        status: str | None = None,
        completed_at: str | datetime | None = None,
        duration_seconds: float | None = None,
        final_loss: float | None = None,
        best_metric_value: float | None = None,
        artifacts: dict | None = None,
    ) -> bool:
        given = {
            "status": status,
            "completed_at": completed_at.isoformat()
            if isinstance(completed_at, datetime)
            else completed_at,
            "duration_seconds": duration_seconds,
            "final_loss": final_loss,
            "best_metric_value": best_metric_value,
            "artifacts": None if artifacts is None else json.dumps(artifacts, default=str),
        }
        key = self._key(f"run:{run_id}")
        if not self.client.exists(key):
            return False
        for field, value in given.items():  # one command per field, as the adapter does
            if value is not None:
                self.client.hset(key, field, value)
        return True

    def log_hyperparameters(self, training_run_id: int, params: Mapping[str, Any]) -> None:
        for name, value in params.items():
            self.client.hset(self._key(f"hyperparam:{training_run_id}"), name, str(value))

    def log_metric(
        self,
        training_run_id: int,
        metric_name: str,
        metric_value: float,
        epoch: int | None = None,
        step: int | None = None,
        split: str = "train",
    ) -> None:
        point = {
            "epoch": epoch,
            "step": step,
            "metric_name": metric_name,
            "metric_value": metric_value,
            "split": split,
            "timestamp": self.clock(),
        }
        score = epoch if epoch is not None else step if step is not None else 0
        self.client.zadd(
            self._key(f"metric:{training_run_id}:{metric_name}:{split}"),
            {json.dumps(point, default=str): score},
        )

    def add_experiment_run(
        self, experiment_id: int, training_run_id: int, variant_name: str = "", notes: str = ""
    ) -> None:
        self.client.hset(
            self._key(f"exprun:{experiment_id}:{training_run_id}"),
            mapping={
                "experiment_id": experiment_id,
                "training_run_id": training_run_id,
                "variant_name": variant_name,
                "notes": notes,
            },
        )
        self.client.sadd(self._key(f"exprun:{experiment_id}:runs"), training_run_id)
