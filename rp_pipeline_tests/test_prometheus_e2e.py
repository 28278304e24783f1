"""The exporter with a real Prometheus server, and the files in deploy/prometheus and deploy/grafana.

Covers: Debian's `prometheus` (installed by scripts/test.sh when missing) scraping the
exporter every second on loopback, a PromQL query through its HTTP API returning the
backlog and the last success the exporter reports after a known sync; the alert rules
pass `promtool check rules`, and `promtool test rules` fires the stale-sync alert (and
the others) on schedule; the example configuration passes `promtool check config`;
every metric the alert rules and the Grafana dashboard use is one the exporter serves.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from rp_pipeline.exporter import METRICS, serve_metrics
from rp_pipeline.schema import migrate

from .faults import fill, free_port, write_prediction_by_hand
from .test_metrics_exporter import samples, scrape_text, value

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
RULES = DEPLOY / "prometheus" / "rp_pipeline_alerts.yml"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(
            f"{name} is not installed: scripts/test.sh installs Debian's prometheus package "
            "(or: apt-get install prometheus)"
        )
    return path


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [tool("promtool"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=DEPLOY / "prometheus",
    )


def test_alert_rules_pass_promtool_and_the_stale_sync_alert_fires():
    checked = promtool("check", "rules", RULES.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "rp_pipeline_alerts_test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert (
        "RpPipelineSyncStale" in (DEPLOY / "prometheus" / "rp_pipeline_alerts_test.yml").read_text()
    )
    config = promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr


def test_rules_and_dashboard_use_only_metrics_the_exporter_serves():
    served = {
        name + ("_total" if kind == "counter" else "") for name, (kind, _, _) in METRICS.items()
    }
    served |= {"rp_pipeline_up", "rp_pipeline_build_info", "rp_pipeline_sync_interval_seconds"}
    dashboard = json.loads((DEPLOY / "grafana" / "rp_pipeline_dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    exprs += [
        rule["expr"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
    ]
    used = set(re.findall(r"rp_pipeline_[a-z_]+", " ".join(exprs)))
    assert used and used <= served, used - served
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for wanted in (
        "backlog",
        "lag",
        "rows per second by outcome",
        "rejections",
        "last success",
        "duration",
    ):
        assert wanted in titles


def query(base: str, promql: str) -> list[dict]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]["result"]


@pytest.fixture
def prometheus(tmp_path):
    """Start a Prometheus server scraping `targets` every second; yields a function taking the targets."""
    binary = tool("prometheus")
    started: list[subprocess.Popen] = []

    def start(target: str) -> str:
        port = free_port()
        config = tmp_path / "prometheus.yml"
        shutil.copy(RULES, tmp_path / RULES.name)
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files: [{RULES.name}]\n"
            "scrape_configs:\n  - job_name: rp_pipeline\n    scrape_timeout: 1s\n"
            f"    static_configs:\n      - targets: ['{target}']\n"
        )
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / "prometheus.log").open("w"),
        )
        started.append(process)
        return f"http://127.0.0.1:{port}"

    yield start
    for process in started:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def test_prometheus_scrapes_backlog_and_last_success(
    prometheus, sync_config, writer, redis_client, key_prefix, run_sync, tmp_path
):
    ids = fill(writer, models=1, predictions=40)
    run_sync()
    for _ in range(25):  # waiting: the backlog Prometheus must see
        write_prediction_by_hand(redis_client, key_prefix, ids["versions"][0])
    migrate(sync_config)
    exporter = serve_metrics(sync_config, port=0, sync_interval_seconds=300)
    try:
        expected = samples(scrape_text(exporter.port))
        src = sync_config.redis_address
        last_success = value(
            expected, "rp_pipeline_last_success_timestamp_seconds", entity="predictions", source=src
        )
        assert last_success is not None
        base = prometheus(f"127.0.0.1:{exporter.port}")
        selector = f'{{entity="predictions", source="{src}"}}'
        backlog = success = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (backlog is None or success is None):
            try:
                backlog = query(base, f"rp_pipeline_backlog_records{selector}") or None
                success = (
                    query(base, f"rp_pipeline_last_success_timestamp_seconds{selector}") or None
                )
            except OSError:  # not listening yet
                pass
            time.sleep(0.5)
        log = (tmp_path / "prometheus.log").read_text()[-2000:]
        assert backlog and success, (
            f"Prometheus returned nothing within 60 s; its log ends with:\n{log}"
        )
        assert float(backlog[0]["value"][1]) == 25
        assert backlog[0]["metric"]["job"] == "rp_pipeline"
        assert float(success[0]["value"][1]) == pytest.approx(last_success, abs=1e-3)
        up = query(base, 'rp_pipeline_up{target="postgres"}')
        assert float(up[0]["value"][1]) == 1
        rules = json.load(urllib.request.urlopen(f"{base}/api/v1/rules", timeout=10))["data"][
            "groups"
        ]
        assert {r["name"] for g in rules for r in g["rules"]} >= {
            "RpPipelineSyncStale",
            "RpPipelineBacklogGrowing",
            "RpPipelineNewRejections",
            "RpPipelineServerUnreachable",
        }
    finally:
        exporter.close()
