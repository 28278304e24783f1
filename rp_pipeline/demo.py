"""The guide's demo: populate Redis through RedisWriter, sync once, verify in PostgreSQL, show the statistics.

    python demo_redis_postgres_sync.py [--redis-url URL] [--postgres-url URL] [--key-prefix aidb:]

Safe to run again: when the demo's models are already in Redis under the prefix
(or were synced to Postgres before Redis was emptied) nothing is written twice,
and the sync adds nothing new. The verification counts this demo's rows, so a
duplicate would fail it. ("The guide": docs/architecture.md.)
"""

from __future__ import annotations

import argparse
import logging
import math

from psycopg import sql

from .api import RedisPgSync
from .cli import EXIT_OK, EXIT_SYNC_FAILED, configure_logging, run_guarded
from .connections import connect_postgres
from .errors import SyncFailed
from .layout import MODEL
from .settings import DEFAULT_KEY_PREFIX, SyncConfig, redact_url
from .writer import RedisWriter

# (name, description, architecture, framework, task_type, input_shape, output_shape, versions):
# RedisWriter.create_model's arguments, then the versions to create
MODELS = (
    (
        "ResNet50-Redis",
        "Image classifier (demo)",
        "ResNet-50",
        "pytorch",
        "classification",
        "[3, 224, 224]",
        "[1000]",
        ("1.0.0", "1.1.0"),
    ),
    (
        "BERT-Redis",
        "Sentence encoder (demo)",
        "BERT-base",
        "transformers",
        "nlp",
        "[512]",
        "[768]",
        ("1.0.0",),
    ),
    (
        "مدل-تشخیص-نقشه",
        "تشخیص اجزای نقشه‌های معماری (demo)",
        "U-Net",
        "pytorch",
        "segmentation",
        "[1, 512, 512]",
        "[12, 512, 512]",
        ("0.1.0",),
    ),
)
# (name, description, source_path, format, size_bytes, num_samples, split_info): the first
# arguments of RedisWriter.create_dataset, in its order
DATASETS = (
    (
        "ImageNet-Redis",
        "ILSVRC-2012 (demo)",
        "/data/imagenet",
        "jpeg",
        150_000_000_000,
        14_197_122,
        {"train": 0.9, "val": 0.1},
    ),
    (
        "نقشه‌های-معماری",
        "Architectural floor plans (demo)",
        "/data/plans",
        "dxf",
        2_500_000_000,
        12_000,
        {"train": 0.8, "val": 0.1, "test": 0.1},
    ),
)
# (model, version, dataset, run_name, completed, epochs)
RUNS = (
    ("ResNet50-Redis", "1.0.0", "ImageNet-Redis", "resnet50-baseline", True, 5),
    ("ResNet50-Redis", "1.1.0", "ImageNet-Redis", "resnet50-lr-0.05", True, 5),
    ("BERT-Redis", "1.0.0", None, "bert-finetune", True, 5),
    ("مدل-تشخیص-نقشه", "0.1.0", "نقشه‌های-معماری", "plans-unet-first-try", False, 2),
)
METRIC_SERIES = (("loss", "train"), ("loss", "val"), ("accuracy", "val"))
EXPERIMENTS = (
    (
        "lr-sweep-Redis",
        "Does a lower learning rate help ResNet-50?",
        ("resnet50-baseline", "resnet50-lr-0.05"),
    ),
    ("نقشه-baseline", "First models for floor plans", ("plans-unet-first-try", "bert-finetune")),
)
BATCH_PREDICTIONS, SINGLE_PREDICTIONS = 300, 3

# What the demo puts in Postgres, per table; verify() expects exactly this.
EXPECTED = {
    "models": len(MODELS),
    "model_versions": sum(len(m[7]) for m in MODELS),
    "datasets": len(DATASETS),
    "training_runs": len(RUNS),
    "hyperparameters": 4 * len(RUNS),
    "metrics": sum(epochs * len(METRIC_SERIES) for *_, epochs in RUNS),
    "experiments": len(EXPERIMENTS),
    "experiment_runs": sum(len(members) for *_, members in EXPERIMENTS),
    "predictions": BATCH_PREDICTIONS + SINGLE_PREDICTIONS,
}


class DemoCheckFailed(RuntimeError):
    """Postgres does not hold exactly what the demo wrote."""


def run_demo(
    redis_url: str | None = None,
    postgres_url: str | None = None,
    key_prefix: str = DEFAULT_KEY_PREFIX,
    **settings,
) -> dict[str, int]:
    """Populate, sync, verify, show; returns the sync's statistics (`settings` as for RedisPgSync)."""
    return run_demo_with(RedisPgSync(redis_url, postgres_url, key_prefix, **settings))


def run_demo_with(sync: RedisPgSync) -> dict[str, int]:
    log, config = sync.log, sync.config
    sync.preflight()  # both servers answer before anything is written
    log.info(
        "=== Demo 1/4: populate Redis at %s (prefix %r) ===",
        redact_url(config.redis_url),
        config.key_prefix,
    )
    with RedisWriter.from_url(config.redis_url, key_prefix=config.key_prefix) as writer:
        already = already_loaded(writer, config)
        if already:
            log.info("  Demo data %s; not writing it again.", already)
        else:
            populate(writer)
            log.info("  Wrote %s.", ", ".join(f"{n} {table}" for table, n in EXPECTED.items()))
        log.info("  Redis now holds: %s", writer.get_statistics())
    log.info("=== Demo 2/4: sync to PostgreSQL ===")
    stats = sync.full_sync()
    log.info("=== Demo 3/4: verify in PostgreSQL (schema %s) ===", config.schema)
    verify(config, log)
    log.info("=== Demo 4/4: statistics ===")
    log.info("  stats = %s", stats)
    return stats


def already_loaded(writer: RedisWriter, config: SyncConfig) -> str | None:
    """Why the demo need not write again, or None: its models are in Redis, or already in Postgres."""
    names = [m[0] for m in MODELS]
    if any(writer.client.hmget(config.key_prefix + MODEL.name_map, names)):
        return f"is already in Redis under the prefix {config.key_prefix!r}"
    with connect_postgres(config) as conn:
        exists = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL",
            (sql.Identifier(config.schema, "models").as_string(conn),),
        ).fetchone()[0]
        if (
            exists
            and conn.execute(
                sql.SQL("SELECT count(*) FROM {} WHERE name = ANY(%s)").format(
                    sql.Identifier(config.schema, "models")
                ),
                (names,),
            ).fetchone()[0]
        ):
            return "was synced to Postgres before (Redis no longer holds it)"
    return None


def populate(writer: RedisWriter) -> None:
    """The sample tree: models and versions, datasets, runs with hyperparameters and metrics,
    experiments with their runs, and predictions (one batch, plus a few one at a time)."""
    version_ids: dict[tuple[str, str], int] = {}
    for *model, versions in MODELS:  # a row is create_model's arguments, then the versions
        name = model[0]
        model_id = writer.create_model(*model)
        for version in versions:
            version_ids[name, version] = writer.create_model_version(
                model_id,
                version,
                checkpoint_path=f"/checkpoints/{name}/{version}.pt",
                config={"optimizer": "adamw", "precision": "fp16"},
            )
    dataset_ids = {
        # A row is create_dataset's arguments up to split_info; preprocessing follows the format.
        row[0]: writer.create_dataset(
            *row, preprocessing={"resize": 224} if row[3] == "jpeg" else {}
        )
        for row in DATASETS
    }
    run_ids: dict[str, int] = {}
    for n, (model, version, dataset, run_name, completed, epochs) in enumerate(RUNS):
        run_id = writer.create_training_run(
            version_ids[model, version],
            dataset_ids.get(dataset),
            run_name=run_name,
            status="running",
        )
        run_ids[run_name] = run_id
        lr = 0.1 / (n + 1)
        writer.log_hyperparameters(
            run_id,
            {
                "learning_rate": lr,
                "batch_size": 32 * (n + 1),
                "optimizer": "adamw",
                "epochs": epochs,
            },
        )
        for epoch in range(1, epochs + 1):
            loss = 2.0 * math.exp(-0.45 * epoch) + 0.05 * n
            writer.log_metric(run_id, "loss", round(loss, 4), epoch=epoch, split="train")
            writer.log_metric(run_id, "loss", round(loss * 1.1, 4), epoch=epoch, split="val")
            writer.log_metric(
                run_id, "accuracy", round(1 - loss / 2.5, 4), epoch=epoch, split="val"
            )
        if completed:
            writer.update_training_run(
                run_id,
                status="completed",
                duration_seconds=3600.0 * epochs,
                final_loss=round(loss, 4),
                best_metric_value=round(1 - loss / 2.5, 4),
                artifacts={"checkpoint": f"/checkpoints/{run_name}/best.pt"},
            )
    for name, hypothesis, members in EXPERIMENTS:
        experiment_id = writer.create_experiment(
            name, description="demo experiment", hypothesis=hypothesis
        )
        for variant, run_name in enumerate(members):
            writer.add_experiment_run(
                experiment_id, run_ids[run_name], variant_name=f"variant-{variant + 1}"
            )
    resnet, bert = version_ids["ResNet50-Redis", "1.1.0"], version_ids["BERT-Redis", "1.0.0"]
    writer.log_predictions(
        {
            "model_version_id": resnet,
            "input_data": {"image": f"img_{i:04d}.jpg"},
            "output_data": {"class_id": i % 1000, "label": f"class-{i % 1000}"},
            "confidence": round(0.5 + (i % 50) / 100, 2),
            "inference_time_ms": 3.0 + (i % 7) / 10,
        }
        for i in range(BATCH_PREDICTIONS)
    )
    for text in ("Redis is fast", "Postgres is durable", "همگام‌سازی Redis به PostgreSQL")[
        :SINGLE_PREDICTIONS
    ]:
        writer.log_prediction(
            bert,
            {"text": text},
            {"embedding_norm": len(text) / 10},
            confidence=0.99,
            inference_time_ms=12.5,
            metadata={"demo": True},
        )


def verify(config: SyncConfig, log: logging.Logger) -> dict[str, int]:
    """Count the demo's rows per table (runs and below from one Redis data set); raise unless as expected."""
    t = {name: sql.Identifier(config.schema, name) for name in EXPECTED}
    # The data set that last synced the demo: this Redis, or one it held before a restart (the demo
    # is not written again when Postgres already has it).
    origin = (
        "(SELECT origin_source FROM {training_runs} WHERE run_name = ANY(%(runs)s) "
        "ORDER BY id DESC LIMIT 1)"
    )
    runs = "FROM {training_runs} r WHERE r.run_name = ANY(%(runs)s) AND r.origin_source = " + origin
    queries = {  # this demo's rows: by name; runs and below also by origin (one Redis data set)
        "models": "SELECT count(*) FROM {models} WHERE name = ANY(%(models)s)",
        "model_versions": "SELECT count(*) FROM {model_versions} v JOIN {models} m ON m.id = v.model_id "
        "WHERE m.name = ANY(%(models)s)",
        "datasets": "SELECT count(*) FROM {datasets} WHERE name = ANY(%(datasets)s)",
        "training_runs": "SELECT count(*) " + runs,
        "hyperparameters": "SELECT count(*) FROM {hyperparameters} WHERE training_run_id IN (SELECT r.id "
        + runs
        + ")",
        "metrics": "SELECT count(*) FROM {metrics} WHERE training_run_id IN (SELECT r.id "
        + runs
        + ")",
        "experiments": "SELECT count(*) FROM {experiments} WHERE name = ANY(%(experiments)s)",
        "experiment_runs": "SELECT count(*) FROM {experiment_runs} e JOIN {experiments} x ON x.id = e.experiment_id "
        "WHERE x.name = ANY(%(experiments)s)",
        "predictions": "SELECT count(*) FROM {predictions} p JOIN {model_versions} v ON v.id = p.model_version_id "
        "JOIN {models} m ON m.id = v.model_id "
        "WHERE m.name = ANY(%(models)s) AND p.origin_source = " + origin,
    }
    params = {
        "models": [m[0] for m in MODELS],
        "datasets": [d[0] for d in DATASETS],
        "experiments": [e[0] for e in EXPERIMENTS],
        "runs": [r[3] for r in RUNS],
    }
    found, totals = {}, {}
    with connect_postgres(config) as conn:
        for table, query in queries.items():
            found[table] = conn.execute(sql.SQL(query).format(**t), params).fetchone()[0]
            totals[table] = conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(t[table])
            ).fetchone()[0]
        imagenet = conn.execute(
            sql.SQL("SELECT size_bytes FROM {} WHERE name = 'ImageNet-Redis'").format(t["datasets"])
        ).fetchone()
    log.info("  %-16s %8s %8s %10s", "table", "demo", "expected", "all rows")
    for table in EXPECTED:
        log.info(
            "  %-16s %8d %8d %10d%s",
            table,
            found[table],
            EXPECTED[table],
            totals[table],
            "" if found[table] == EXPECTED[table] else "   <-- mismatch",
        )
    problems = [
        f"{table}: {found[table]} demo rows, expected {n}"
        for table, n in EXPECTED.items()
        if found[table] != n
    ]
    if not imagenet or imagenet[0] != DATASETS[0][4]:
        problems.append(
            f"ImageNet-Redis size_bytes is {imagenet[0] if imagenet else None}, expected {DATASETS[0][4]}"
        )
    if problems:
        raise DemoCheckFailed("Postgres does not hold what the demo wrote: " + "; ".join(problems))
    log.info(
        "  All demo records are in PostgreSQL, each exactly once (ImageNet-Redis: %s bytes).",
        f"{imagenet[0]:,}",
    )
    return found


def main(argv: list[str] | None = None) -> int:
    """`python demo_redis_postgres_sync.py`: the demo against REDIS_URL / POSTGRES_URL (or the options)."""
    parser = argparse.ArgumentParser(
        prog="demo_redis_postgres_sync.py", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--redis-url", help="Redis URL (overrides REDIS_URL)")
    parser.add_argument("--postgres-url", help="PostgreSQL URL (overrides POSTGRES_URL)")
    parser.add_argument(
        "--key-prefix", help="Redis key prefix (overrides REDIS_KEY_PREFIX, default aidb:)"
    )
    args = parser.parse_args(argv)
    logger = configure_logging()

    def demo() -> int:
        config = SyncConfig.from_env(
            redis_url=args.redis_url, postgres_url=args.postgres_url, key_prefix=args.key_prefix
        )
        try:
            run_demo_with(RedisPgSync.from_config(config, logger))
        except SyncFailed:
            return EXIT_SYNC_FAILED  # the failure is already logged
        except DemoCheckFailed as exc:
            logger.error("%s", exc)
            return EXIT_SYNC_FAILED
        return EXIT_OK

    return run_guarded(demo)
