"""cluster/grafana/freshrank.json: every query names catalogue metrics (after the relabel rule),
the agreed views are there, and the PromQL parses (promtool, when installed)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from freshrank.core import CATALOGUE, MetricKind

DASHBOARD = Path(__file__).resolve().parents[2] / "cluster" / "grafana" / "freshrank.json"
_METRIC_TOKEN = re.compile(r"\b(?:ray_)?freshrank_[a-z0-9_]+")
_HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")
# Grafana's template variables, replaced by what they stand for so promtool can parse.
_GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}


def panels(items: list[dict]) -> list[dict]:
    out = []
    for item in items:
        out.append(item)
        out.extend(panels(item.get("panels", [])))
    return out


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def queries() -> list[tuple[str, str]]:
    return [
        (p["title"], t["expr"]) for p in panels(dashboard()["panels"]) for t in p.get("targets", [])
    ]


def catalogue_name(token: str) -> str | None:
    """The catalogue metric a series name belongs to, or None."""
    known = {spec.name: spec for spec in CATALOGUE}
    if token in known:
        return token
    for suffix in _HISTOGRAM_SUFFIXES:
        base = token.removesuffix(suffix)
        if base != token and base in known and known[base].kind is MetricKind.HISTOGRAM:
            return base
    return None


def test_every_query_refers_to_catalogue_metrics_only():
    found = queries()
    assert len(found) >= 20
    for title, expr in found:
        tokens = _METRIC_TOKEN.findall(expr)
        assert tokens, f"panel {title!r} queries no freshrank metric: {expr}"
        for token in tokens:
            assert not token.startswith("ray_"), f"{title!r} uses Ray's prefix: {token}"
            assert catalogue_name(token), f"{title!r} uses {token}, not in the catalogue"


def test_dashboard_shows_the_agreed_views():
    used = {catalogue_name(t) for _, expr in queries() for t in _METRIC_TOKEN.findall(expr)}
    for name in (
        "freshrank_freshness_seconds",
        "freshrank_stage_latency_seconds",
        "freshrank_landed_to_live_seconds",
        "freshrank_drift_psi",
        "freshrank_drift_js",
        "freshrank_drift_unseen_rate",
        "freshrank_drift_surprise",
        "freshrank_drift_alarm",
        "freshrank_score_psi",
        "freshrank_ctr_shift",
        "freshrank_window_auc",
        "freshrank_request_latency_seconds",
        "freshrank_requests_total",
        "freshrank_promotions_total",
        "freshrank_shards_quarantined_total",
    ):
        assert name in used, f"no panel shows {name}"


def test_panels_use_the_datasource_variable_and_unique_ids():
    d = dashboard()
    (variable,) = d["templating"]["list"]
    assert variable["type"] == "datasource" and variable["query"] == "prometheus"
    all_panels = panels(d["panels"])
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids))
    for p in all_panels:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
            assert all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"])


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_every_query_is_valid_promql(tmp_path):
    rules = []
    for i, (_title, expr) in enumerate(queries()):
        for var, value in _GRAFANA_VARIABLES.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout
