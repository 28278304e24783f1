"""`python -m rp_pipeline warm [--entities …] [--runs-days N] [--predictions-hours N] [--dry-run]`.

Writes Postgres rows back into Redis after a flush or a restart (warm.py). Exit codes as the sync's:
0 done, 1 the warm failed (run it again: it completes what was started), 2 a configuration or
connection problem, 130 aborted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cli import EXIT_ABORTED, EXIT_OK, EXIT_SYNC_FAILED, configure_logging, run_guarded
from .entities import ENTITIES
from .settings import SyncConfig

HELP = """\
what is warmed (defaults): the catalog (models, versions, datasets, experiments); runs started in the
last WARM_RUNS_DAYS (7) with their hyperparameters, metrics and experiment memberships; predictions of
the last WARM_PREDICTIONS_HOURS (0: none). Windows never reach past SYNC_RETENTION_HOURS of the same
entity. Records Redis already holds are not written again; running it twice writes nothing twice.
Connections: REDIS_URL, POSTGRES_URL, REDIS_KEY_PREFIX, POSTGRES_SCHEMA, SYNC_SCHEMA (as the sync).
"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    prog = (
        "rp-pipeline warm"
        if Path(sys.argv[0]).name == "rp-pipeline"
        else "python -m rp_pipeline warm"
    )
    parser = argparse.ArgumentParser(
        prog=prog,
        epilog=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Warm Redis from Postgres: write the rows back in the aidb layout, so applications find "
        "them after a flush or a restart, without the next sync adding them again.",
    )
    parser.add_argument(
        "--entities",
        metavar="LIST",
        help=f"comma-separated, from: {', '.join(s.name for s in ENTITIES)} (default: all)",
    )
    parser.add_argument(
        "--runs-days",
        type=float,
        metavar="N",
        help="runs started in the last N days (WARM_RUNS_DAYS)",
    )
    parser.add_argument(
        "--predictions-hours",
        type=float,
        metavar="N",
        help="predictions of the last N hours (WARM_PREDICTIONS_HOURS; 0: none)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="count what would be written; write nothing"
    )
    parser.add_argument("--redis-url", help="Redis URL (overrides REDIS_URL)")
    parser.add_argument("--postgres-url", help="PostgreSQL URL (overrides POSTGRES_URL)")
    parser.add_argument("--key-prefix", help="Redis key prefix (overrides REDIS_KEY_PREFIX)")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logger = configure_logging()

    def body() -> int:
        from .cli import check_servers
        from .errors import SyncFailed
        from .warm import WarmOptions, parse_entities, run_warm

        config = SyncConfig.from_env(
            redis_url=args.redis_url, postgres_url=args.postgres_url, key_prefix=args.key_prefix
        )
        options = WarmOptions.from_env(
            entities=parse_entities(args.entities) if args.entities else None,
            runs_days=args.runs_days,
            predictions_hours=args.predictions_hours,
            dry_run=args.dry_run,
        )
        check_servers(config)
        logger.info(
            "=== Warming Redis from PostgreSQL%s: %s ===",
            " (dry run)" if args.dry_run else "",
            config.describe(),
        )
        try:
            result = run_warm(config, options, logger)
        except SyncFailed as exc:
            logger.error("Warm failed: %s", exc)
            return EXIT_SYNC_FAILED
        except KeyboardInterrupt:
            logger.warning("Warm aborted; run it again to complete it.")
            return EXIT_ABORTED
        for name, count in result.counts().items():
            extra = [
                f"{result.reused[name]} reused" if result.reused.get(name) else "",
                f"{result.skipped[name]} left out (parent not in Redis)"
                if result.skipped.get(name)
                else "",
            ]
            logger.info(
                "  %s: %d%s",
                name.replace("_", " ").capitalize(),
                count,
                "".join(f", {e}" for e in extra if e),
            )
        for note in result.notes:
            logger.info("  note: %s", note)
        return EXIT_OK

    return run_guarded(body)
