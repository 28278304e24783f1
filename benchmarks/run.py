"""The sync benchmark: the real sync against a floor path, a pandas path and dlt, on one workload.

    .venv/bin/python benchmarks/run.py [--n 1000000] [--sizes 100000,1000000] [--skip-dlt] [--quick]
        [--redis-url redis://127.0.0.1:6379/12] [--postgres-url postgresql://postgres@127.0.0.1:5432/postgres]

For each N it fills an isolated Redis db (FLUSHDB at start and end: give it a db of its own), then
runs every path in a process of its own, each into a fresh database `rp_bench_<path>` (created
beside the one in --postgres-url, dropped after), so peak RSS is per path. It prints one table per
N, the sizes side by side, the cost of cycles with nothing new and with 1% new, the hot-path
client's figures, and a PASS/FAIL line per target of the performance issue. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))  # the package, from a checkout

from other_load import OtherLoad  # noqa: E402

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/12"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
MEMORY_BASELINE = 10_000
MiB = 1 << 20
COMPARED = ("job", "floor", "floor_overlapped", "pandas", "dlt")
LABELS = {
    "project": "project (sync_all)",
    "job": "job (full_sync)",
    "floor": "(a) floor",
    "floor_wide": "floor, batches sized to the budget",
    "floor_overlapped": "(a') floor, overlapped",
    "pandas": "(b) pandas",
    "dlt": "(c) dlt",
}
# Targets of the performance issue.
FLOOR_RATIO, RSS_GROWTH, IDLE_SECONDS, P99_MS, BATCH_PER_S, SCALING_FALL = (
    0.8,
    100_000_000,
    0.5,
    0.5,
    50_000,
    0.15,
)
JOB_IDLE_SECONDS, CHECK_GROWTH = (
    2.5,
    0.5,
)  # the Dagster-native issue: a nothing-new job cycle; check time flat


# -- the worker: one path, one process ------------------------------------------------------------


def peak_rss() -> int:
    """Peak resident set of this process (VmHWM: unlike ru_maxrss, not inherited across fork/exec), in bytes."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    own = int(line.split()[1]) * 1024
                    break
            else:
                raise OSError
    except OSError:
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # e.g. dlt's helpers
    return max(own, children)


def worker(args) -> None:
    from paths import PATHS

    result = PATHS[args.worker](args.redis_url, args.postgres_url, args.n, peak_rss)
    result.setdefault("peak_rss", peak_rss())
    Path(args.result).write_text(json.dumps(result))


# -- the orchestrator -------------------------------------------------------------------------------


def database_url(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def admin(postgres_url: str):
    import psycopg

    return psycopg.connect(postgres_url, autocommit=True)


def run_path(path: str, n: int, args) -> dict:
    """Run one path in a child process against a fresh database; its figures, or {'error': ...}."""
    db = f"rp_bench_{path}{args.db_suffix}"
    with admin(args.postgres_url) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {db}")
        conn.execute("CHECKPOINT")  # the previous path's WAL is not flushed on this one's time
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as out:
        result_file = out.name
    started = time.perf_counter()
    try:
        with OtherLoad() as other:
            proc = subprocess.run(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--worker",
                    path,
                    "--n",
                    str(n),
                    "--redis-url",
                    args.redis_url,
                    "--postgres-url",
                    database_url(args.postgres_url, db),
                    "--result",
                    result_file,
                ],
                capture_output=True,
                text=True,
                timeout=3 * 3600,
            )
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
            print(f"  {path}: FAILED (exit {proc.returncode}):\n{tail}", flush=True)
            return {"error": f"exit {proc.returncode}"}
        result = json.loads(Path(result_file).read_text())
        result["other_cores"] = other.cores
    finally:
        os.unlink(result_file)
        with admin(args.postgres_url) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    print(
        f"  {LABELS[path]}: {result['predictions_per_s']:,.0f} predictions/s, "
        f"peak RSS {result['peak_rss'] / MiB:,.0f} MiB ({time.perf_counter() - started:.0f} s with start-up"
        + (f"; other work on the box: {other.cores:.2f} cores" if other.cores is not None else "")
        + ")",
        flush=True,
    )
    return result


def quiet_run(path: str, n: int, args) -> dict:
    """Run a path; while other work on the box took more than --noisy cores, run it again (up to
    --retries times) and keep the quietest run: figures from a shared box mean little otherwise."""
    runs = [run_path(path, n, args)]
    while len(runs) <= args.retries and (runs[-1].get("other_cores") or 0) > args.noisy:
        print(
            f"  {LABELS[path]}: other work took {runs[-1]['other_cores']:.2f} cores (> {args.noisy}): "
            "running it again",
            flush=True,
        )
        runs.append(run_path(path, n, args))
    ok = [r for r in runs if "error" not in r] or runs
    return min(ok, key=lambda r: r.get("other_cores") or 0)


def repetitions(n: int, args) -> int:
    """Short runs are noisy on 2 cores shared by Redis, Postgres and the client: repeat them."""
    if args.repeat:
        return args.repeat
    return 3 if n <= 200_000 else 1


def median_run(runs: list[dict]) -> dict:
    """The run with the median predictions/s (failed runs only if all failed)."""
    ok = sorted((r for r in runs if "error" not in r), key=lambda r: r["predictions_per_s"])
    return ok[(len(ok) - 1) // 2] if ok else runs[0]


def dlt_available(args) -> tuple[bool, str]:
    """dlt is optional: installed here into the running interpreter if missing, never a project dependency."""
    if args.skip_dlt:
        return False, "skipped (--skip-dlt)"
    if importlib.util.find_spec("dlt") is None:
        print(
            "dlt is not installed: trying `pip install dlt[postgres]` into this interpreter...",
            flush=True,
        )
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "dlt[postgres]"],
            capture_output=True,
            text=True,
            timeout=900,
        )
        importlib.invalidate_caches()
        if proc.returncode != 0 or importlib.util.find_spec("dlt") is None:
            reason = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["unknown error"]
            return False, f"skipped: dlt[postgres] did not install ({reason[0]})"
    return True, ""


def check_times(seconds: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """A job's check timings: (the median of its passes per check, its first pass per check)."""
    first = {k.removeprefix("first:"): t for k, t in seconds.items() if k.startswith("first:")}
    return {k: t for k, t in seconds.items() if not k.startswith("first:")}, first


def flush(redis_url: str) -> None:
    from raw_redis import RawRedis

    raw = RawRedis(redis_url)
    raw.call(b"FLUSHDB")
    raw.close()


def measure(args) -> dict:
    from workload import fill

    code, load_before = measured_code(), " ".join(f"{x:.2f}" for x in os.getloadavg())
    with_dlt, dlt_note = dlt_available(args) if "dlt" in args.paths else (False, "not in --paths")
    if dlt_note:
        print(f"dlt: {dlt_note}")
    results: dict[int, dict[str, dict]] = {}
    try:
        for n in args.sizes:
            print(f"N = {n:,}: filling Redis...", flush=True)
            started = time.perf_counter()
            work = fill(args.redis_url, n)
            print(
                f"  {sum(work.rows().values()):,} records written in {time.perf_counter() - started:.1f} s",
                flush=True,
            )
            paths = [p for p in args.paths if p != "dlt" or with_dlt] + ["project"]
            repeat = repetitions(n, args)
            runs: dict[str, list[dict]] = {path: [] for path in paths}
            for round_ in range(
                repeat
            ):  # rounds, not path after path: drift on the box hits every path alike
                if repeat > 1:
                    print(f"  round {round_ + 1} of {repeat}", flush=True)
                for path in paths:
                    runs[path].append(quiet_run(path, n, args))
            results[n] = {
                "workload": work.rows(),
                "repeat": repeat,
                **{path: median_run(found) for path, found in runs.items()},
            }
        if args.memory_baseline and args.memory_baseline not in results:
            n = args.memory_baseline
            print(f"N = {n:,} (memory baseline): filling Redis...", flush=True)
            results[n] = {
                "workload": fill(args.redis_url, n).rows(),
                "project": quiet_run("project", n, args),
            }
    finally:
        flush(args.redis_url)
    print(f"hot-path client: measure_writer(n={args.writer_n:,})...", flush=True)
    from bench_writer import measure_writer

    try:
        writer = measure_writer(args.redis_url, args.writer_n)
    finally:
        flush(args.redis_url)
    return {
        "results": results,
        "writer": writer,
        "dlt_note": dlt_note,
        "code": code,
        "load_before": load_before,
        "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


# -- wide records: the memory budget ---------------------------------------------------------------

# The memory issue's workloads: (name, predictions, floats per input vector).
WIDE_WORKLOADS = (("embeddings", 40_000, 1536), ("large", 300, 120_000))
WIDE_RSS, WIDE_RATIO = 600 * MiB, 0.8


def run_cli_once(n: int, args) -> dict:
    """The one-shot CLI sync (`python -m rp_pipeline --once`, Dagster included) in a child process of its
    own, into a fresh database: its peak RSS (wait4's ru_maxrss) and the predictions' load time."""
    db = f"rp_bench_wide_cli{args.db_suffix}"
    with admin(args.postgres_url) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {db}")
        conn.execute("CHECKPOINT")
    url = database_url(args.postgres_url, db)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGSTER_")}
    env.update(
        SYNC_MEMORY_BUDGET_MB=str(args.budget),
        PYTHONPATH=os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")])),
    )
    try:
        with tempfile.TemporaryDirectory(prefix="rp_bench_cli") as cwd:
            started = time.perf_counter()
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "rp_pipeline",
                    "--once",
                    "--redis-url",
                    args.redis_url,
                    "--postgres-url",
                    url,
                    "--key-prefix",
                    "aidb:",
                ],
                cwd=cwd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            output = proc.stdout.read()
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - started
        if status != 0:
            print("\n".join(output.splitlines()[-15:]))
            return {"error": f"exit status {status}"}
        with admin(url) as conn:
            seconds, read, inserted = conn.execute(
                "SELECT duration_seconds, read, inserted FROM rp_sync.entity_runs WHERE entity = 'predictions' "
                "ORDER BY finished_at DESC LIMIT 1"
            ).fetchone()
    finally:
        with admin(args.postgres_url) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    progress = [line for line in output.splitlines() if "read so far" in line]
    return {
        "peak_rss": usage.ru_maxrss * 1024,
        "wall_seconds": wall,
        "predictions_seconds": seconds,
        "predictions_per_s": read / seconds,
        "loaded": inserted,
        "progress": progress[-1:],
    }


def measure_wide(args) -> list[str]:
    from workload import fill_wide

    os.environ["SYNC_MEMORY_BUDGET_MB"] = str(
        args.budget
    )  # the floor's worker sizes its batches from it
    lines = [f"== wide records, SYNC_MEMORY_BUDGET_MB={args.budget:g} =="]
    try:
        for name, n, floats in (
            w for w in WIDE_WORKLOADS if w[0] in args.wide_workloads.split(",")
        ):
            print(
                f"{name}: filling Redis with {n:,} predictions of {floats:,} floats...", flush=True
            )
            fill_wide(args.redis_url, n, floats)
            cli = run_cli_once(n, args)
            print(f"  one-shot CLI: {cli}", flush=True)
            floor_ = quiet_run("floor_wide", n, args)
            if "error" in cli or "error" in floor_:
                lines.append(
                    f"FAIL  {name}: a path failed (cli: {cli.get('error')}, floor: {floor_.get('error')})"
                )
                continue
            ratio = cli["predictions_per_s"] / floor_["predictions_per_s"]
            lines += [
                f"{name}: {n:,} predictions of about {floor_['record_bytes'] / 1e3:,.0f} KB "
                f"({n * floor_['record_bytes'] / 1e9:.2f} GB of JSON)",
                f"  one-shot CLI: peak RSS {cli['peak_rss'] / MiB:,.0f} MiB, predictions in {cli['predictions_seconds']:.1f} s "
                f"({cli['predictions_per_s']:,.0f}/s; whole run {cli['wall_seconds']:.1f} s); {cli['loaded']:,} loaded",
                f"  floor:        peak RSS {floor_['peak_rss'] / MiB:,.0f} MiB, predictions in "
                f"{floor_['predictions_seconds']:.1f} s ({floor_['predictions_per_s']:,.0f}/s); others "
                f"{floor_.get('other_cores') or 0:.2f} cores",
                f"  last progress line: {cli['progress'][0].split('] ', 1)[-1] if cli['progress'] else '(none)'}",
                f"{verdict(cli['peak_rss'] <= WIDE_RSS)}  {name}: CLI peak RSS {cli['peak_rss'] / MiB:,.0f} MiB "
                f"(target ≤ {WIDE_RSS / MiB:,.0f} MiB)",
                f"{verdict(ratio >= WIDE_RATIO)}  {name}: CLI predictions/s = {ratio:.2f}× the floor's "
                f"(target ≥ {WIDE_RATIO}×)",
            ]
            print("\n".join(lines[-7:]), flush=True)
    finally:
        flush(args.redis_url)
    return lines


# -- the report ----------------------------------------------------------------------------------------


def server_versions(args) -> str:
    import redis

    try:
        redis_version = redis.Redis.from_url(args.redis_url).info("server")["redis_version"]
    except Exception:
        redis_version = "?"
    with admin(args.postgres_url) as conn:
        pg_version = conn.execute("SHOW server_version").fetchone()[0]
    return f"Redis {redis_version}, PostgreSQL {pg_version}"


def measured_code() -> str:
    """Which rp_pipeline the children import, at which commit: the engine changes under a benchmark."""
    import rp_pipeline

    root = Path(rp_pipeline.__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "rp_pipeline"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"rp_pipeline from {root} (not a git checkout)"
    return f"rp_pipeline from {root} at {commit}" + (" with uncommitted changes" if dirty else "")


def cpu_cells(p: dict) -> str:
    """CPU seconds of client, Postgres backend and Redis in the timed section, and per row loaded."""
    if "client_cpu" not in p:
        return f"{'?':>25}{'?':>8}"
    parts = [p["client_cpu"], p.get("postgres_cpu"), p["redis_cpu"]]
    text = "+".join("?" if v is None else f"{v:.2f}" for v in parts)
    rows = p.get("rows") or p["predictions"]  # the project's sync_all loads every entity's rows
    return f"{text:>25}{sum(v for v in parts if v is not None) / max(rows, 1) * 1e6:>8.1f}"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(data: dict, args) -> list[str]:
    results, writer = data["results"], data["writer"]
    lines: list[str] = []
    say = lines.append
    cores = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    say(
        f"Machine: {cores} cores ({usable} usable), {platform.machine()}, Python {platform.python_version()}, "
        f"{server_versions(args)}"
    )
    say(
        f"Measured: {data['code']}; load average before the run {data['load_before']}, "
        f"after {data['load_after']}"
    )
    say(
        "'others' = cores kept busy by other work on the box while the path ran (not this benchmark, Redis or "
        "its Postgres backends); it moves the figures, so compare runs with it near 0. CPU s = CPU seconds of the "
        "timed section (client process, its Postgres backend, Redis server), which other work barely moves; "
        "µs/row = their sum per row loaded (the project's sync_all loads every entity's rows)"
    )
    main = args.n
    for n in args.sizes:
        r = results[n]
        project = r["project"]
        base = project.get("predictions_per_s")
        say("")
        work = r["workload"]
        say(
            f"== N = {n:,} predictions (+ {work['training_runs']:,} runs, {work['hyperparameters']:,} hyperparameters, "
            f"{work['metrics']:,} metric points, {work['models']} models, {work['model_versions']} versions)"
            + (
                f"; each path run {r['repeat']}×, the median shown"
                if r.get("repeat", 1) > 1
                else ""
            )
            + " =="
        )
        say(
            f"{'path':<26}{'predictions/s':>14}{'× project':>11}{'seconds':>9}{'CPU s: client+pg+redis':>25}"
            f"{'µs/row':>8}{'peak RSS':>11}{'at start':>10}{'rows loaded':>13}{'others':>8}"
        )
        for path in ("project", "job", "floor", "floor_overlapped", "pandas", "dlt"):
            if path not in r:
                if path == "dlt" and "dlt" in args.paths:
                    say(f"{LABELS[path]:<26}  {data['dlt_note']}")
                continue
            p = r[path]
            if "error" in p:
                say(f"{LABELS[path]:<26}  failed ({p['error']})")
                continue
            ratio = p["predictions_per_s"] / base if base else float("nan")
            say(
                f"{LABELS[path]:<26}{p['predictions_per_s']:>14,.0f}{ratio:>10.2f}×{p['predictions_seconds']:>9.1f}"
                f"{cpu_cells(p)}{p['peak_rss'] / MiB:>7,.0f} MiB{p.get('start_rss', 0) / MiB:>6,.0f} MiB"
                f"{p['loaded']:>13,}"
                + (f"{p['other_cores']:>8.2f}" if p.get("other_cores") is not None else f"{'?':>8}")
                + (" NOISY" if (p.get("other_cores") or 0) > args.noisy else "")
                + (f"  {p['note']}" if p.get("note") else "")
            )
        if "error" in project:
            continue
        say(
            f"project, per entity (one sync_all, {project['wall_seconds']:.1f} s; migrate before it "
            f"{project['migrate_seconds']:.2f} s):"
        )
        say(f"  {'entity':<18}{'rows':>10}{'seconds':>9}{'rows/s':>10}")
        for name, e in project["entities"].items():
            say(
                f"  {name:<18}{e['read']:>10,}{e['seconds']:>9.2f}{e['rows_per_s']:>10,.0f}"
                + (
                    f"  ({e['rejected']} rejected, {e['pending']} pending)"
                    if e["rejected"] or e["pending"]
                    else ""
                )
            )
        say(
            f"  {'overall':<18}{project['rows']:>10,}{project['wall_seconds']:>9.2f}{project['rows_per_s']:>10,.0f}"
            "  (all rows / wall time of sync_all)"
        )
        say(
            f"cycles after {n:,} are synced: nothing new: sync_all {project['idle_all_seconds']:.3f} s, "
            f"sync_entity(PREDICTIONS) {project['idle_predictions_seconds']:.3f} s (median of 3); "
            f"{project['increment_new']:,} new (1%): sync_all {project['increment_all_seconds']:.2f} s "
            f"(predictions {project['increment_predictions_seconds']:.2f} s, "
            f"{project['increment_inserted']:,} inserted); "
            f"nothing new but one run still training: sync_all {project['idle_active_run_seconds']:.2f} s"
        )

        job = r.get("job", {})
        if "idle_seconds" in job:
            say(
                f"job (RedisPgSync.full_sync, default instance): bulk run {job['job_wall_seconds']:.1f} s "
                f"({job['bulk_events']} events; predictions alone {job['engine_predictions_per_s']:,.0f}/s"
                + (
                    f"; the tables' own syncs {job['tables_seconds']:.1f} s, predictions "
                    f"{job['engine_predictions_seconds']:.1f} s of them; Dagster, checks and events "
                    f"{job['job_wall_seconds'] - job['tables_seconds']:.1f} s"
                    if "tables_seconds" in job
                    else ""
                )
                + "); "
                f"nothing new {job['idle_seconds']:.2f} s (median of {job['idle_all']}), {job['idle_events']} events "
                f"per run; {job['increment_new']:,} new: {job['increment_seconds']:.2f} s"
            )
            for label, key in (
                ("nothing new", "checks_idle"),
                (f"{job['increment_new']:,} new", "checks_increment"),
            ):
                median, first = check_times(job[key])
                say(
                    f"  checks, {label} (median of 3 passes): "
                    + ", ".join(f"{name} {t * 1000:.0f} ms" for name, t in median.items())
                    + f"; total {sum(median.values()) * 1000:.0f} ms"
                    + (f" (first pass {sum(first.values()) * 1000:.0f} ms)" if first else "")
                )

    sized = [n for n in args.sizes if "error" not in results[n]["project"]]
    if len(sized) >= 2:
        small, large = sized[0], sized[-1]
        say("")
        say(f"== scaling: N = {small:,} vs N = {large:,} ==")
        say(f"{'':<30}{f'N={small:,}':>14}{f'N={large:,}':>14}{'change':>9}")
        for label, path, key, scale in (
            ("project predictions/s", "project", "predictions_per_s", 1),
            ("project overall rows/s", "project", "rows_per_s", 1),
            ("project peak RSS (MiB)", "project", "peak_rss", MiB),
            ("floor predictions/s", "floor", "predictions_per_s", 1),
            ("floor, overlapped predictions/s", "floor_overlapped", "predictions_per_s", 1),
            ("pandas predictions/s", "pandas", "predictions_per_s", 1),
            ("dlt predictions/s", "dlt", "predictions_per_s", 1),
        ):
            a, b = results[small].get(path, {}), results[large].get(path, {})
            if key in a and key in b:
                say(
                    f"{label:<30}{a[key] / scale:>14,.0f}{b[key] / scale:>14,.0f}{(b[key] / a[key] - 1) * 100:>8.1f}%"
                )

    say("")
    say(
        f"hot-path client (measure_writer, n={writer['n']:,}): log_prediction p50 {writer['single_p50_ms']:.3f} ms, "
        f"p99 {writer['single_p99_ms']:.3f} ms; log_predictions batch {writer['batch_throughput']:,.0f}/s; "
        f"old adapter's 3 round trips p50 {writer['naive_p50_ms']:.3f} ms"
    )

    say("")
    say("== targets ==")
    at_main = results.get(main, {})
    project, floor_ = at_main.get("project", {}), at_main.get("floor", {})
    if "predictions_per_s" in project and "predictions_per_s" in floor_:
        ratio = project["predictions_per_s"] / floor_["predictions_per_s"]
        say(
            f"{verdict(ratio >= FLOOR_RATIO)}  bulk: project {project['predictions_per_s']:,.0f} predictions/s = "
            f"{ratio:.2f}× the floor's {floor_['predictions_per_s']:,.0f} (target ≥ {FLOOR_RATIO}×, N={main:,})"
        )
    overlapped = at_main.get("floor_overlapped", {})
    if "predictions_per_s" in project and "predictions_per_s" in overlapped:
        ratio = project["predictions_per_s"] / overlapped["predictions_per_s"]
        say(
            f"INFO  stretch: project = {ratio:.2f}× the overlapped floor's "
            f"{overlapped['predictions_per_s']:,.0f} (the issue's stretch is 1.0×)"
        )
    job = at_main.get("job", {})
    if "predictions_per_s" in job and "predictions_per_s" in floor_:
        ratio = job["predictions_per_s"] / floor_["predictions_per_s"]
        say(
            f"{verdict(ratio >= FLOOR_RATIO)}  job: full_sync {job['predictions_per_s']:,.0f} predictions/s (whole run) = "
            f"{ratio:.2f}× the floor (target ≥ {FLOOR_RATIO}×, N={main:,}); predictions' own sync in the job "
            f"{job['engine_predictions_per_s'] / floor_['predictions_per_s']:.2f}×"
        )
    if "idle_seconds" in job:
        say(
            f"{verdict(job['idle_seconds'] < JOB_IDLE_SECONDS)}  job: a cycle with nothing new {job['idle_seconds']:.2f} s, "
            f"{job['idle_events']} events per run (target < {JOB_IDLE_SECONDS} s, N={main:,})"
        )
    with_job = [n for n in args.sizes if "checks_increment" in results[n].get("job", {})]
    if len(with_job) >= 2:
        small, large = with_job[0], with_job[-1]
        for key, label in (
            ("checks_idle", "nothing new"),
            ("checks_increment", f"{results[small]['job']['increment_new']:,} new"),
        ):
            (a, fa), (b, fb) = (
                tuple(sum(t.values()) for t in check_times(results[m]["job"][key]))
                for m in (small, large)
            )
            growth = b / a - 1 if a else 0.0
            say(
                f"{verdict(growth <= CHECK_GROWTH)}  checks, {label}: {a * 1000:.0f} ms at N={small:,} → {b * 1000:.0f} ms "
                f"at N={large:,} ({growth * 100:+.0f}%; target: flat, ≤ +{CHECK_GROWTH * 100:.0f}%; "
                f"median of 3 passes; first pass {fa * 1000:.0f} → {fb * 1000:.0f} ms)"
            )
    base = results.get(args.memory_baseline, {}).get("project", {})
    largest = max(sized) if sized else None
    if args.memory_baseline and largest and "peak_rss" in base and largest > args.memory_baseline:
        growth = results[largest]["project"]["peak_rss"] - base["peak_rss"]
        say(
            f"{verdict(growth <= RSS_GROWTH)}  memory: peak RSS N={largest:,} − N={args.memory_baseline:,} = "
            f"{growth / 1e6:,.0f} MB = {growth / MiB:,.0f} MiB ({results[largest]['project']['peak_rss'] / MiB:,.0f} − "
            f"{base['peak_rss'] / MiB:,.0f} MiB; target ≤ {RSS_GROWTH / 1e6:,.0f} MB)"
        )
    else:
        say("SKIP  memory: needs a size above the memory baseline (not in --quick)")
    if "idle_predictions_seconds" in project:
        say(
            f"{verdict(project['idle_predictions_seconds'] < IDLE_SECONDS)}  nothing new: sync_entity(PREDICTIONS) "
            f"{project['idle_predictions_seconds']:.3f} s after {main:,} synced (target < {IDLE_SECONDS} s); "
            f"whole sync_all {project['idle_all_seconds']:.3f} s"
        )
    say(
        f"{verdict(writer['single_p99_ms'] < P99_MS)}  hot path: log_prediction p99 {writer['single_p99_ms']:.3f} ms "
        f"(target < {P99_MS} ms)"
    )
    say(
        f"{verdict(writer['batch_throughput'] >= BATCH_PER_S)}  hot path: batch {writer['batch_throughput']:,.0f} "
        f"predictions/s (target ≥ {BATCH_PER_S:,})"
    )
    if len(sized) >= 2:
        small, large = sized[0], sized[-1]
        for key, label in (
            ("predictions_per_s", "predictions/s"),
            ("rows_per_s", "overall rows/s"),
        ):
            change = results[large]["project"][key] / results[small]["project"][key] - 1
            say(
                f"{verdict(change >= -SCALING_FALL)}  scaling: project {label} N={small:,} → N={large:,} "
                f"{change * 100:+.1f}% (target: no fall beyond {SCALING_FALL * 100:.0f}%)"
            )
    else:
        say("SKIP  scaling: needs two sizes (not in --quick)")
    return lines


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--n", type=int, default=1_000_000, help="N of the main comparison and the targets"
    )
    parser.add_argument(
        "--sizes", default="100000,1000000", help="sizes measured side by side (N is added)"
    )
    parser.add_argument(
        "--redis-url", default=DEFAULT_REDIS_URL, help="a Redis db of its own: it is flushed"
    )
    parser.add_argument(
        "--postgres-url",
        default=DEFAULT_POSTGRES_URL,
        help="a database to connect to for CREATE/DROP DATABASE rp_bench_<path>",
    )
    parser.add_argument(
        "--paths",
        default=",".join(COMPARED),
        help="the paths to compare with the project's (which always runs)",
    )
    parser.add_argument(
        "--skip-dlt", action="store_true", help="do not run (or install) the dlt path"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: N=20,000 only, no dlt, under a minute"
    )
    parser.add_argument(
        "--memory-baseline",
        type=int,
        default=MEMORY_BASELINE,
        help="the small N whose project peak RSS the largest N is compared with (0: none)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=0,
        help="runs per path and N, the median reported (default: 3 up to N=200,000, else 1)",
    )
    parser.add_argument(
        "--noisy",
        type=float,
        default=0.25,
        help="a run during which other work took more cores than this is run again",
    )
    parser.add_argument(
        "--retries", type=int, default=2, help="how many times a noisy run is run again"
    )
    parser.add_argument(
        "--writer-n", type=int, default=20_000, help="predictions per measure_writer path"
    )
    parser.add_argument("--save", help="also write the raw figures (JSON) to this file")
    parser.add_argument(
        "--wide",
        action="store_true",
        help="only the wide-record workloads (40,000 embeddings; 300 records of 2.4 MB): the "
        "one-shot CLI's peak RSS and time against a floor batched to the same budget",
    )
    parser.add_argument(
        "--budget", type=float, default=256, help="SYNC_MEMORY_BUDGET_MB for --wide"
    )
    parser.add_argument(
        "--db-suffix",
        default="",
        help="appended to the rp_bench_* database names (two benchmarks on one server)",
    )
    parser.add_argument(
        "--wide-workloads", default="embeddings,large", help="which of --wide's workloads to run"
    )
    parser.add_argument("--worker", choices=list(LABELS), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.sizes, args.skip_dlt, args.memory_baseline, args.writer_n = (
            20_000,
            str(20_000),
            True,
            0,
            5_000,
        )
        args.repeat, args.retries = args.repeat or 1, 0
    if not args.worker:
        args.sizes = sorted({int(s) for s in str(args.sizes).split(",") if s.strip()} | {args.n})
        args.paths = [p.strip() for p in args.paths.split(",") if p.strip()]
        unknown = set(args.paths) - set(COMPARED)
        if unknown:
            parser.error(
                f"unknown path(s) {', '.join(sorted(unknown))}; known: {', '.join(COMPARED)}"
            )
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return
    started = time.perf_counter()
    if args.wide:
        lines = measure_wide(args)
        print(
            "\n" + "\n".join(lines) + f"\n\n(benchmark took {time.perf_counter() - started:.0f} s)"
        )
        return
    data = measure(args)
    if args.save:
        Path(args.save).write_text(json.dumps(data, indent=1))
    print()
    print("\n".join(report(data, args)))
    print(f"\n(benchmark took {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
