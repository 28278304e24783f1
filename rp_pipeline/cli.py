"""The guide's command line: `python -m rp_pipeline --once` or `--interval SECONDS` (also `rp-pipeline`),
and `python -m rp_pipeline metrics`, the Prometheus exporter (exporter.py).

Each cycle is the Dagster job `redis_to_postgres_sync`, run in this process by
`RedisPgSync` (api.py) and recorded in the instance `dagster dev` shows.
Exit codes: 0 success (rejected records do not fail a sync), 1 a sync failed,
2 configuration or connection problem (found before syncing, or a missing Redis ACL
right or Postgres grant found by the sync), 130 aborted. ("The guide": docs/architecture.md.)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .settings import ConfigError, SyncConfig

DEFAULT_METRICS_HOST, DEFAULT_METRICS_PORT = (
    "127.0.0.1",
    9188,
)  # as exporter.py; not imported, to start fast

EXIT_OK, EXIT_SYNC_FAILED, EXIT_PROBLEM, EXIT_ABORTED = 0, 1, 2, 130

# Import name → what to pip install, for the "package missing" message.
PIP_NAMES = {
    "psycopg": "psycopg[binary]",
    "psycopg2": "psycopg2-binary",
    "dotenv": "python-dotenv",
    "dagster_postgres": "dagster-postgres",
    "dagster_webserver": "dagster-webserver",
    "yaml": "pyyaml",
    "prometheus_client": "prometheus-client",
}

ENVIRONMENT_HELP = """\
environment (a .env file in the working directory fills what is not set):
  REDIS_URL           Redis to read (default redis://localhost:6379/0); several sources: URLs separated
                      by commas, each optionally with ?key_prefix=...&label=... (README, Configuration)
  POSTGRES_URL        Postgres to write, e.g. postgresql://user:password@localhost:5432/ai_models (required)
  REDIS_KEY_PREFIX    key prefix of the aidb layout (default aidb:)
  SYNC_INTERVAL       seconds between syncs when neither --once nor --interval is given (default 300)
  POSTGRES_SCHEMA     schema of the analytics tables (default public)
  SYNC_SCHEMA         schema of the sync's bookkeeping (default rp_sync)
  SYNC_MEMORY_BUDGET_MB  MB the sync holds in flight at once (default 256); set it well under the
                      container's memory limit (see the README's operations section)
  SYNC_CONFLICT_POLICY, SYNC_RETENTION_HOURS, SYNC_LOCK_TIMEOUT_MS, ...  see deploy/dagster-production.md
  DAGSTER_HOME        Dagster instance to record runs in (default: ./dagster.yaml, storage in ./.dagster_home)
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="rp-pipeline" if Path(sys.argv[0]).name == "rp-pipeline" else "python -m rp_pipeline",
        description="Sync Redis (aidb layout) into PostgreSQL by running the Dagster job redis_to_postgres_sync "
        "in process: once, or every N seconds until Ctrl+C / SIGTERM (the current cycle finishes first). "
        "`%(prog)s metrics --help`: the Prometheus exporter; `%(prog)s warm --help`: write Postgres rows "
        "back into Redis after a flush or a restart.",
        epilog=ENVIRONMENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="run one sync and exit")
    mode.add_argument(
        "--interval",
        type=float,
        metavar="SECONDS",
        help="sync continuously, every SECONDS (default: SYNC_INTERVAL, else 300)",
    )
    parser.add_argument("--redis-url", help="Redis URL (overrides REDIS_URL)")
    parser.add_argument("--postgres-url", help="PostgreSQL URL (overrides POSTGRES_URL)")
    parser.add_argument("--key-prefix", help="Redis key prefix (overrides REDIS_KEY_PREFIX)")
    parser.add_argument(
        "--source",
        action="append",
        metavar="LABEL",
        help="sync only this source (a label from REDIS_URL; repeat for several; default: all)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="also serve Prometheus metrics on this port while syncing (see the metrics command)",
    )
    parser.add_argument(
        "--metrics-host",
        default=DEFAULT_METRICS_HOST,
        metavar="HOST",
        help=f"address for --metrics-port (default {DEFAULT_METRICS_HOST})",
    )
    return parser.parse_args(argv)


def parse_metrics_args(argv: list[str]) -> argparse.Namespace:
    prog = "rp-pipeline" if Path(sys.argv[0]).name == "rp-pipeline" else "python -m rp_pipeline"
    parser = argparse.ArgumentParser(
        prog=f"{prog} metrics",
        description="Serve /metrics in the Prometheus text format, read at each scrape from the sync's state in "
        "Postgres and the counters in Redis. Runs until Ctrl+C / SIGTERM.",
        epilog=ENVIRONMENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_METRICS_PORT, help=f"default {DEFAULT_METRICS_PORT}"
    )
    parser.add_argument(
        "--host",
        default=DEFAULT_METRICS_HOST,
        help=f"address to listen on (default {DEFAULT_METRICS_HOST}; 0.0.0.0 for every interface)",
    )
    parser.add_argument("--redis-url", help="Redis URL (overrides REDIS_URL)")
    parser.add_argument("--postgres-url", help="PostgreSQL URL (overrides POSTGRES_URL)")
    parser.add_argument("--key-prefix", help="Redis key prefix (overrides REDIS_KEY_PREFIX)")
    return parser.parse_args(argv)


def configure_logging() -> logging.Logger:
    """The guide's log lines: `2025-11-22 10:30:00 [INFO] message`, on stdout."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        logging.Formatter("%(asctime)s [%(levelname)s] %(message)s", "%Y-%m-%d %H:%M:%S")
    )
    logger = logging.getLogger("rp_pipeline")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def load_env_file() -> None:
    """./.env fills variables the environment does not set (the real environment wins)."""
    from dotenv import load_dotenv

    load_dotenv(Path.cwd() / ".env", override=False)


def interval_from(args: argparse.Namespace, config: SyncConfig) -> float | None:
    """Seconds between cycles (--interval, else SYNC_INTERVAL), or None for --once."""
    if args.once:
        return None
    seconds = config.interval_seconds if args.interval is None else args.interval
    if seconds <= 0:
        raise ConfigError(f"the interval must be a positive number of seconds, got {seconds:g}")
    return seconds


def missing_package_message(exc: ImportError) -> str | None:
    """'No module named redis' as what to install, or None if the import error is not a missing package."""
    name = (exc.name or "").split(".")[0]
    if not name or name == "rp_pipeline":
        return None
    return (
        f"the Python package '{PIP_NAMES.get(name, name)}' is not installed in this environment "
        f"({sys.executable}): No module named {name!r}. Install the project with its dependencies: "
        f"`pip install -e .` in the repository (or `pip install {PIP_NAMES.get(name, name)}`)."
    )


def report_problem(message: str, code: int = EXIT_PROBLEM) -> int:
    """One paragraph on stderr, no traceback; the exit code (by default, a problem found before syncing)."""
    print(f"Error: {message}", file=sys.stderr, flush=True)
    return code


def run_guarded(body) -> int:
    """Load ./.env, then `body() -> exit code`, turning the user-facing errors (configuration,
    connections, Dagster's storage, a missing package) into one paragraph and exit code 2
    (1 for a failed sync)."""
    from .errors import SyncFailed, UserFacingError

    try:
        load_env_file()
        return body()
    except ImportError as exc:
        message = missing_package_message(exc)
        if message is None:
            raise
        return report_problem(message)
    except UserFacingError as exc:
        return report_problem(
            str(exc), EXIT_SYNC_FAILED if isinstance(exc, SyncFailed) else EXIT_PROBLEM
        )


def check_servers(config: SyncConfig) -> None:
    """Both servers answer; done before Dagster loads, so these problems show in well under a second."""
    from .connections import connect_postgres, connect_redis

    config.require_postgres_url()
    if len(config.sources) == 1:  # with several, a source that is down fails its own run only
        connect_redis(config).close()
    connect_postgres(config).close()


def run(args: argparse.Namespace, logger: logging.Logger) -> int:
    """Pre-flight, then one cycle or cycles every interval."""
    config = SyncConfig.from_env(
        redis_url=args.redis_url, postgres_url=args.postgres_url, key_prefix=args.key_prefix
    )
    interval = interval_from(args, config)
    if args.source:
        config.select_sources(args.source)  # an unknown label: one line naming the known ones
    try:
        check_servers(config)
        from .api import RedisPgSync

        sync = RedisPgSync.from_config(config, logger)
        sync.preflight()
    except KeyboardInterrupt:
        return EXIT_ABORTED
    logger.info("Redis → PostgreSQL sync: %s", config.describe())
    if args.metrics_port is not None:
        start_exporter(config, args.metrics_host, args.metrics_port, interval, logger)
    try:
        if interval is None:
            outcome = sync.sync_once(args.source)
            if (
                outcome.problem
            ):  # a missing right: configuration, not a failure the next run could outlive
                return report_problem(outcome.problem)
            return EXIT_OK if outcome.success else EXIT_SYNC_FAILED
        sync.run_continuous(interval, args.source)
        return EXIT_OK
    except KeyboardInterrupt:
        # A second Ctrl+C/SIGTERM: leave now, without waiting for the cycle's thread. The entity
        # being synced rolls back with its transaction when the connection drops.
        logger.warning("Aborted during a sync cycle; the entity in progress was rolled back.")
        logging.shutdown()
        os._exit(EXIT_ABORTED)


def start_exporter(
    config: SyncConfig, host: str, port: int, interval: float | None, logger: logging.Logger
):
    from .exporter import serve_metrics

    exporter = serve_metrics(config, host, port, sync_interval_seconds=interval)
    logger.info("Prometheus metrics on http://%s:%d/metrics", host, exporter.port)
    return exporter


def run_metrics(args: argparse.Namespace, logger: logging.Logger) -> int:
    """The exporter alone, until SIGINT/SIGTERM. It starts even when a server is down: that is what it reports."""
    import signal
    import threading

    config = SyncConfig.from_env(
        redis_url=args.redis_url, postgres_url=args.postgres_url, key_prefix=args.key_prefix
    )
    config.require_postgres_url()
    exporter = start_exporter(config, args.host, args.port, config.interval_seconds, logger)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    exporter.close()
    logger.info("Metrics exporter stopped.")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m rp_pipeline` and the `rp-pipeline` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["metrics"]:
        metrics_args = parse_metrics_args(argv[1:])
        logger = configure_logging()
        return run_guarded(lambda: run_metrics(metrics_args, logger))
    if argv[:1] == ["warm"]:
        from .warm_cli import main as warm_main

        return warm_main(argv[1:])
    args = parse_args(argv)
    logger = configure_logging()
    return run_guarded(lambda: run(args, logger))
