"""The status page (``freshrank ui``): what it shows from a registry, a landing zone and a metrics
endpoint, that it escapes what it shows, its JSON endpoint, its routes and where it listens."""

from __future__ import annotations

import html
import json
import re
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from test_status import DRIFT, checkpoint

from freshrank.apps.cli import build_parser
from freshrank.core import Telemetry, serve_prometheus_client
from freshrank.events.landing import LandingZone
from freshrank.events.simulator import Simulator, SimulatorConfig
from freshrank.ops.page import PageConfig, freshness, load_status, render_page
from freshrank.ops.runtime import free_port
from freshrank.ops.ui import UiConfig, start_status_page
from freshrank.registry.promotion import Promoter
from freshrank.registry.store import Registry

HOSTILE = "<script>alert('x')</script> & \"quoted\""
HOSTILE_SHARD = "<img src=x onerror=alert(1)>"


def build_line(root: Path) -> tuple[Registry, LandingZone, str]:
    """Four versions: v1 and v2 promoted, v3 rejected by the gate (its own reason text), v4
    promoted with a hostile reason; a landing zone with two quarantined shards (one hostile).
    Returns the registry, the zone and the gate's reason for v3."""
    now = time.time()
    registry = Registry(root / "registry")
    for i in (1, 2, 3, 4):
        checkpoint(registry, i, now, DRIFT[2 + i])
    registry.set_champion(1, reason="no champion yet: promoted on finite metrics")
    registry.set_champion(2, reason="auc 0.6500 -> 0.7000: better")
    gate = Promoter(registry)
    result = gate.decide(
        3,
        {"rows": 900.0, "auc": 0.61, "logloss": 0.52},
        {"rows": 900.0, "auc": 0.70, "logloss": 0.45},
        champion=2,
    )
    assert result.outcome.value == "rejected"
    registry.set_champion(4, reason=HOSTILE)
    registry.write_trainer_status({"state": "ready", "version": 4, "cursor": 4})

    zone = LandingZone(root / "landing")
    sim = Simulator(SimulatorConfig(seed=0, n_users=10, n_items=30, n_categories=3))
    for seq in (1, 2, 3, 4, 5):
        zone.write_shard(sim.generate(2), seq=seq)
    zone.quarantine(zone.write_raw(b"not parquet", seq=6), "not readable as parquet")
    zone.quarantine(zone.write_raw(b"junk", seq=7), HOSTILE_SHARD)
    return registry, zone, "; ".join(result.reasons)


@pytest.fixture
def line(tmp_path):
    return build_line(tmp_path)


@pytest.fixture
def endpoint():
    registry = CollectorRegistry()
    metrics = Telemetry.for_prometheus_client(registry)
    metrics.set("freshrank_served_model_version", 4, tags={"replica": "r1"})
    metrics.set("freshrank_served_model_version", 2, tags={"replica": "r2"})
    metrics.set("freshrank_freshness_seconds", 130.0, tags={"replica": "r1"})
    metrics.set("freshrank_freshness_seconds", 190.0, tags={"replica": "r2"})
    metrics.inc("freshrank_requests_total", 97, tags={"status": "ok"})
    server = serve_prometheus_client(0, registry=registry)
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture
def page(line, endpoint):
    registry, zone, _ = line
    handle = start_status_page(str(registry.root), str(zone.root), endpoint, port=0)
    try:
        yield handle
    finally:
        handle.close()


def svg(document: str, chart_id: str) -> str:
    match = re.search(rf'<svg id="{chart_id}".*?</svg>', document, flags=re.S)
    assert match, f"no chart {chart_id}"
    return match.group(0)


def test_page_shows_champion_replicas_rejection_and_charts(line, page):
    registry, _, gate_reason = line
    response = httpx.get(page.url + "/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    doc = response.text
    assert "<div class='big'>v4</div>" in doc  # the champion
    replicas = re.search(r"<table id='replicas'>.*?</table>", doc, flags=re.S).group(0)
    assert "<td>r1</td><td>v4</td><td>2m 10s</td>" in replicas
    assert "<td>r2</td><td>v2</td><td>3m 10s</td>" in replicas
    assert "3m 10s" in re.search(r"freshness</div><div class='big'>[^<]*", doc).group(0)

    # The gate's rejection of v3, with the reason it logged (escaped: it holds "->").
    assert gate_reason.startswith("auc 0.7000 -> 0.6100: worse by 0.0900")
    rejected = re.findall(r"<tr class='ev-rejected'>.*?</tr>", doc)
    assert len(rejected) == 1
    assert "<td>v3 (from v2)</td>" in rejected[0]
    assert html.escape(gate_reason) in rejected[0]
    assert len(re.findall(r"<tr class='ev-promoted'>", doc)) == 3
    assert len(re.findall(r"<tr class='ev-trained'>", doc)) == 4

    # Freshness: one point per champion change (v1, v2, v4) at promoted_at - watermark, and
    # one per checkpoint; AUC and GAUC one point per version; the drift report's bars.
    fresh = svg(doc, "chart-freshness")
    assert fresh.count('data-series="promoted"') == 3
    assert fresh.count('data-series="checkpointed"') == 4
    assert fresh.count('data-series="live"') == 2
    quality = svg(doc, "chart-quality")
    assert quality.count('data-series="auc"') == 4 == quality.count('data-series="gauc"')
    assert "v3: AUC 0.7500, rejected" in quality and "v4: AUC 0.8000, promoted" in quality
    status = load_status(str(registry.root), None, None)
    judged = [e for e in status.drift.entries if e.value is not None and e.threshold]
    assert svg(doc, "chart-drift").count('data-series="bar"') == len(judged) > 0
    assert "ALARM" in re.search(r"<h2>Drift</h2><p>.*?</p>", doc).group(0)  # planted shift
    quarantine = re.search(r"<table id='quarantine'>.*?</table>", doc).group(0)
    assert "shard-000000000006.parquet" in quarantine and "not readable as parquet" in quarantine


def test_freshness_points_are_promotion_time_minus_watermark(line):
    registry, _, _ = line
    status = load_status(str(registry.root), None, None)
    f = freshness(status)
    promotions = [e for e in registry.promotions() if e["kind"] == "promoted"]
    watermark = {v: registry.get(v).manifest["watermark"] for v in (1, 2, 3, 4)}
    assert [v for _, _, v in f.promoted] == [1, 2, 4]
    for (at, seconds, v), event in zip(f.promoted, promotions, strict=True):
        assert at == event["at"] and seconds == pytest.approx(event["at"] - watermark[v])
    assert all(115.0 < s < 180.0 for _, s, _ in f.promoted)  # watermark is now - 120 s
    # The sawtooth: from each change to the next (the last one to now), growing in between.
    assert len(f.served) == 6 and f.served[-1][0] == pytest.approx(status.at)
    assert all(b[1] >= a[1] for a, b in zip(f.served[::2], f.served[1::2], strict=True))


def test_every_string_is_escaped(page):
    doc = httpx.get(page.url + "/").text
    assert "<script" not in doc and "<img" not in doc
    assert html.escape(HOSTILE) in doc
    assert html.escape(HOSTILE_SHARD) in doc


def test_status_json(page, line):
    registry, _, gate_reason = line
    response = httpx.get(page.url + "/status.json")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    doc = response.json()
    assert doc["champion"]["version"] == 4 and doc["champion"]["reason"] == HOSTILE
    assert doc["versions"] == 4 and [w["version"] for w in doc["windows"]] == [1, 2, 3, 4]
    assert [w["auc"] for w in doc["windows"]] == pytest.approx([0.65, 0.70, 0.75, 0.80])
    kinds = [(e["kind"], e["to_version"]) for e in doc["promotion_log"]]
    assert kinds == [("promoted", 1), ("promoted", 2), ("rejected", 3), ("promoted", 4)]
    assert doc["promotion_log"][2]["reason"] == gate_reason
    assert [p["version"] for p in doc["freshness"]["promoted"]] == [1, 2, 4]
    assert doc["metrics"]["served_versions"] == {"r1": 4.0, "r2": 2.0}
    assert doc["freshness_s"] == 190.0
    assert doc["drift"]["alarm"] is True and doc["drift"]["entries"][0]["statistic"]
    assert [q[0] for q in doc["quarantined"]] == [
        "shard-000000000006.parquet",
        "shard-000000000007.parquet",
    ]
    json.dumps(doc, allow_nan=False)  # strict JSON: no NaN or Infinity anywhere


def test_unknown_paths_are_404_and_the_server_binds_loopback(page):
    assert httpx.get(page.url + "/nope").status_code == 404
    assert httpx.get(page.url + "/status.json/x").status_code == 404
    assert httpx.get(page.url + "/index.html?x=1").status_code == 200
    assert page.host == "127.0.0.1" and page.url == f"http://127.0.0.1:{page.port}"
    assert page._server.socket.getsockname()[0] == "127.0.0.1"
    assert UiConfig(registry="r").host == "127.0.0.1"


def test_history_caps_what_is_read_and_drawn(tmp_path):
    registry = Registry(tmp_path / "registry")
    now = time.time()
    for i in range(1, 31):
        checkpoint(registry, i, now, None)
        registry.set_champion(i, reason=f"promoted {i}")
    config = PageConfig(history=10, listed=7)
    status = load_status(str(registry.root), None, None, config)
    assert [w.version for w in status.windows] == list(range(21, 31))
    assert len(status.promotion_log) == 10
    doc = render_page(status, config)
    assert svg(doc, "chart-quality").count('data-series="auc"') == 10
    assert svg(doc, "chart-freshness").count('data-series="promoted"') == 10
    assert len(re.findall(r"<tr class='ev-", doc)) == 7
    assert "7 of 20 entries" in doc


def test_empty_line_and_dead_endpoint(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/metrics"
    with start_status_page(str(tmp_path / "none"), str(tmp_path / "no-landing"), url, port=0) as p:
        doc = httpx.get(p.url).text
        assert httpx.get(p.url + "/status.json").json()["champion"] is None
    assert "no version has been promoted yet" in doc and "did not answer" in doc
    assert doc.count("no data yet") == 3 and "no drift report yet" in doc
    assert "<meta http-equiv='refresh' content='5'>" in doc


def test_configs_name_the_bad_field():
    with pytest.raises(ValueError, match="PageConfig.history must be an int >= 1"):
        PageConfig(history=0)
    with pytest.raises(ValueError, match="PageConfig.refresh_s must be >= 1"):
        PageConfig(refresh_s=0.1)
    with pytest.raises(ValueError, match="UiConfig.port must be an int in 0..65535"):
        UiConfig(registry="r", port=70000)


def test_cli_ui_options():
    args = build_parser().parse_args(["ui", "--registry", "/r"])
    assert (args.registry, args.landing, args.metrics_url) == ("/r", None, None)
    assert (args.host, args.port) == ("127.0.0.1", 8266)


def test_a_version_pruned_after_the_listing_is_left_out(tmp_path, monkeypatch):
    """The trainer prunes after every checkpoint; a page reload between the listing and the
    reads must not fail on the version that went."""
    registry = Registry(tmp_path / "registry")
    now = time.time()
    for i in (1, 2, 3):
        checkpoint(registry, i, now, None)
    registry.set_champion(3, reason="ok")
    listed = registry.list_versions()
    assert registry.prune(keep_last=2) == [1]
    monkeypatch.setattr(Registry, "list_versions", lambda self: listed)  # the stale listing
    status = load_status(str(registry.root), None, None)
    assert [w.version for w in status.windows] == [2, 3] and status.versions == 3
    assert "<div class='big'>v3</div>" in render_page(status)
