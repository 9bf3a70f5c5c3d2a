"""``freshrank status``: what collect_status reads from disk and a metrics endpoint, and how
render_status shows it."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry

from freshrank.core import Telemetry, serve_prometheus_client
from freshrank.drift import DriftReport, FeatureDrift, Statistic
from freshrank.events.landing import LandingZone
from freshrank.events.simulator import Simulator, SimulatorConfig
from freshrank.ops.runtime import free_port
from freshrank.ops.status import collect_status, histogram_quantile, render_status
from freshrank.registry.store import Registry


def drift_report() -> DriftReport:
    return DriftReport(
        rows=2000,
        reference_rows=8000,
        entries=(
            FeatureDrift("price", Statistic.PSI, 0.01, 0.2),
            FeatureDrift("user_category", Statistic.SURPRISE, 0.91, 0.3, alarm=True),
            FeatureDrift("query", Statistic.JS, 0.02, 0.05),
            FeatureDrift("user", Statistic.UNSEEN_RATE, None, None),
        ),
    )


@pytest.fixture
def line(tmp_path):
    """A registry with three windows (v3 champion, one rejection) and a landing zone."""
    now = time.time()
    registry = Registry(tmp_path / "registry")
    for i in (1, 2, 3):
        manifest = {
            "cursor": i,
            "window_index": i,
            "window_events": 1000 * i,
            "watermark": now - 120.0,
            "metrics": {"eval_auc": 0.6 + 0.05 * i, "eval_logloss": 0.5 - 0.01 * i, "loss": 0.4},
            "timings": {
                "read_s": 0.1 * i,
                "eval_s": 0.02,
                "train_s": 1.0 + i,
                "checkpoint_s": 0.05,
            },
            "shard_landed_at": {str(i): now - 30.0},
        }
        if i == 3:
            manifest["drift"] = drift_report().to_dict()
        info = registry.publish({"model.pt": b"weights"}, manifest)
        registry.set_champion(info.version, reason="window metrics finite")
    registry.log_event("rejected", to_version=2, from_version=3, reason="auc fell")
    registry.write_trainer_status({"state": "ready", "version": 3, "cursor": 3})

    zone = LandingZone(tmp_path / "landing")
    sim = Simulator(SimulatorConfig(seed=0, n_users=10, n_items=30, n_categories=3))
    for seq in (1, 2, 3, 4, 5):
        zone.write_shard(sim.generate(2), seq=seq)
    bad = zone.write_raw(b"not parquet", seq=6)
    zone.quarantine(bad, "not readable as parquet: magic bytes missing")
    return registry, zone


@pytest.fixture
def endpoint():
    registry = CollectorRegistry()
    metrics = Telemetry.for_prometheus_client(registry)
    metrics.set("freshrank_served_model_version", 3, tags={"replica": "r1"})
    metrics.set("freshrank_served_model_version", 2, tags={"replica": "r2"})
    metrics.set("freshrank_freshness_seconds", 130.0, tags={"replica": "r1"})
    metrics.set("freshrank_freshness_seconds", 190.0, tags={"replica": "r2"})
    metrics.inc("freshrank_requests_total", 97, tags={"status": "ok"})
    metrics.inc("freshrank_requests_total", 3, tags={"status": "server_error"})
    for seconds in (0.004, 0.004, 0.02, 0.2):
        metrics.observe("freshrank_request_latency_seconds", seconds)
    for seconds in (2.0, 4.0, 4.0, 8.0):
        metrics.observe("freshrank_stage_latency_seconds", seconds, {"stage": "read_to_trained"})
    metrics.set("freshrank_drift_alarm", 1, tags={"feature": "query", "statistic": "js"})
    server = serve_prometheus_client(0, registry=registry)
    try:
        yield server.url
    finally:
        server.close()


def test_collect_status_reads_registry_landing_and_metrics(line, endpoint):
    registry, zone = line
    status = collect_status(str(registry.root), str(zone.root), endpoint)

    assert status.champion.version == 3 and status.versions == 3 and status.latest_version == 3
    assert status.champion.reason == "window metrics finite"
    assert 0 <= status.champion_age_s < 60
    assert status.freshness_s == 190.0  # the slowest replica, from the endpoint
    assert [w.version for w in status.windows] == [1, 2, 3]
    assert [w.auc for w in status.windows] == pytest.approx([0.65, 0.70, 0.75])
    assert status.windows[-1].events == 3000
    assert status.drift_version == 3 and status.drift.alarm
    assert status.drift.leaders(1)[0].feature == "user_category"
    assert status.backlog_shards == 2  # shards 4 and 5 after the trainer's cursor 3
    assert status.quarantined == (
        ("shard-000000000006.parquet", "not readable as parquet: magic bytes missing"),
    )
    assert status.promotions_last_hour == {"promoted": 3, "rejected": 1}
    assert status.last_promotion["kind"] == "rejected"

    live = status.metrics
    assert live.error is None
    assert live.served_versions == {"r1": 3.0, "r2": 2.0}
    assert live.requests == {"ok": 97.0, "server_error": 3.0}
    assert live.drift_alarms == (("query", "js"),)
    assert 0.0025 <= live.request_p50_s <= 0.005
    stages = {(s.stage, s.source): s for s in status.stages}
    trained = stages[("read_to_trained", "metrics")]
    assert trained.count == 4 and 2.5 <= trained.p50_s <= 5.0
    assert stages[("read", "manifests")].p50_s == pytest.approx(0.2)
    assert stages[("train", "manifests")].count == 3
    landed = stages[("landed_to_checkpointed", "manifests")]
    assert 29.0 <= landed.p50_s < 60.0


def test_render_status_shows_each_part(line, endpoint):
    registry, zone = line
    text = render_status(collect_status(str(registry.root), str(zone.root), endpoint))
    lines = text.splitlines()
    assert lines[0].startswith("freshrank status")
    assert lines[1] == f"registry        {registry.root}"
    assert any(ln.startswith("champion        v3, promoted") for ln in lines)
    assert any(ln.startswith("freshness       3m 10s") for ln in lines)
    assert any("backlog 2 shard(s), 1 quarantined" in ln for ln in lines)
    assert any(ln.split()[:5] == ["v3", "3", "3000", "0.7500", "0.4700"] for ln in lines)
    assert any(ln.startswith("drift           ALARM in v3's window") for ln in lines)
    assert any("ALARM user_category" in ln and "+0.910 nats" in ln for ln in lines)
    assert any(
        ln.startswith("promotions (1h) 3 promoted, 1 rejected; last: rejected v2") for ln in lines
    )
    assert any(ln.startswith("served          r1=v3, r2=v2") for ln in lines)
    assert any("failed 3.00%" in ln for ln in lines)
    assert all(len(ln) <= 100 for ln in lines if not ln.startswith("registry")), lines


def test_status_of_an_empty_line_and_a_dead_endpoint(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/metrics"
    status = collect_status(str(tmp_path / "nothing"), str(tmp_path / "no-landing"), url)
    assert status.champion is None and status.versions == 0 and status.windows == ()
    assert status.backlog_shards == 0 and status.quarantined == ()
    assert status.metrics.error
    text = render_status(status)
    assert "none yet" in text and "did not answer" in text and "no drift report yet" in text


def test_histogram_quantile_matches_prometheus():
    buckets = {0.5: 1, 1.0: 3, 2.0: 4, float("inf"): 4}
    assert histogram_quantile(0.5, buckets) == 0.75
    assert histogram_quantile(1.0, buckets) == 2.0
    assert histogram_quantile(0.5, {1.0: 0, float("inf"): 0}) is None
    assert histogram_quantile(0.99, {1.0: 1, float("inf"): 5}) == 1.0
