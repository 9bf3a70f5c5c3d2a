"""cluster/prometheus: promtool validates the scrape config and the alert rules, and runs the
alert unit tests; the files agree with the metric catalogue and the drift thresholds."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from freshrank.core import CATALOGUE, MetricKind
from freshrank.drift import DriftThresholds

PROM_DIR = Path(__file__).resolve().parents[2] / "cluster" / "prometheus"
CONFIG = PROM_DIR / "prometheus.yml"
ALERTS = PROM_DIR / "alerts.yml"
ALERT_TESTS = PROM_DIR / "alerts_test.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (cluster/prometheus/install.sh, or apt-get install prometheus)",
)
_METRIC_TOKEN = re.compile(r"\bfreshrank_[a-z0-9_]+")
_HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PROMTOOL, *args], cwd=PROM_DIR, capture_output=True, text=True, timeout=60
    )


@needs_promtool
def test_promtool_check_config():
    result = promtool("check", "config", CONFIG.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_promtool_check_rules():
    result = promtool("check", "rules", ALERTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout


@needs_promtool
def test_promtool_test_rules():
    result = promtool("test", "rules", ALERT_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def alert_rules() -> dict[str, dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for test in tests:
        for case in test.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    expected = {
        "FreshrankDriftHigh",
        "FreshrankServedScoreDrift",
        "FreshrankFreshnessOverObjective",
        "FreshrankTrainerStalled",
        "FreshrankPromotionsRejected",
        "FreshrankQuarantineRateHigh",
        "FreshrankServingErrors",
    }
    assert set(alert_rules()) == expected
    assert firing == expected
    assert quiet == expected


def test_alerts_only_use_catalogue_metrics():
    known = {spec.name: spec for spec in CATALOGUE}
    for name, rule in alert_rules().items():
        used = set(_METRIC_TOKEN.findall(rule["expr"]))
        assert used, name
        for token in used:
            base = token
            for suffix in _HISTOGRAM_SUFFIXES:
                if token.endswith(suffix) and token[: -len(suffix)] in known:
                    base = token[: -len(suffix)]
                    assert known[base].kind is MetricKind.HISTOGRAM, token
            assert base in known, f"{name} uses {token}, which is not in the catalogue"


def test_served_score_threshold_is_the_drift_default():
    expr = alert_rules()["FreshrankServedScoreDrift"]["expr"]
    threshold = float(re.search(r">\s*([0-9.]+)", expr).group(1))
    assert threshold == DriftThresholds().score_psi


def test_scrape_config_uses_rays_discovery_file_and_strips_the_prefix():
    config = yaml.safe_load(CONFIG.read_text())
    (ray_job,) = [j for j in config["scrape_configs"] if j["job_name"] == "ray"]
    (files,) = [sd["files"] for sd in ray_job["file_sd_configs"]]
    spec = importlib.util.find_spec("ray")
    constants = Path(spec.origin).parent / "_private" / "ray_constants.py"
    name = re.search(
        r'^PROMETHEUS_SERVICE_DISCOVERY_FILE = "([^"]+)"', constants.read_text(), re.M
    ).group(1)
    assert files == [f"/tmp/ray/{name}"]
    (rule,) = ray_job["metric_relabel_configs"]
    assert rule["source_labels"] == ["__name__"] and rule["target_label"] == "__name__"
    assert rule["regex"] == "ray_(freshrank_.*)" and rule["replacement"] == "$1"
    pattern = re.compile(f"^(?:{rule['regex']})$")  # Prometheus anchors relabel regexes
    assert pattern.sub(rule["replacement"].replace("$1", r"\1"), "ray_freshrank_x_total") == (
        "freshrank_x_total"
    )
    assert not pattern.match("ray_node_cpu_utilization")
    assert config["rule_files"] == [ALERTS.name]
