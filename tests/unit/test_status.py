"""``freshrank status``: what collect_status reads from disk and a metrics endpoint, and how
render_status shows it."""

from __future__ import annotations

import time

import pytest
import torch
from prometheus_client import CollectorRegistry

from freshrank.core import Telemetry, serve_prometheus_client
from freshrank.core.serialization import arrays_from_npz, npz_bytes
from freshrank.drift import DriftMonitor, DriftThresholds, Statistic
from freshrank.events.landing import LandingZone
from freshrank.events.simulator import Simulator, SimulatorConfig
from freshrank.features.encode import FeatureConfig, encode
from freshrank.model.config import RankerConfig
from freshrank.ops.runtime import free_port
from freshrank.ops.status import collect_status, histogram_quantile, render_status
from freshrank.registry.checkpoint import DRIFT_FILE, save_checkpoint
from freshrank.registry.store import Registry


def drift_windows(n: int, shift_before: int | None = None, requests: int = 200) -> list:
    """A trainer's drift monitor over ``n`` simulated windows (a planted shift before window
    ``shift_before``): ``(monitor state, drift_alarms)`` after each, as the trainer computes
    them (check the window, then absorb it; the manifest lists its alarms)."""
    sim = Simulator(SimulatorConfig(seed=1, n_users=300))
    monitor = DriftMonitor(thresholds=DriftThresholds(min_rows=1500, warmup_windows=2))
    out = []
    for i in range(n):
        if i == shift_before:
            sim.planted_shift()  # every user's interests move to other categories
        window = monitor.sketch(encode(sim.generate(requests), FeatureConfig()))
        report = monitor.check(window)
        monitor.absorb(window)
        alarms = [f"{a.feature}/{a.statistic.value}" for a in report.alarms]  # as train.py
        out.append((npz_bytes(monitor.state_dict(), compressed=True), alarms))
    return out


def checkpoint(registry: Registry, i: int, now: float, drift: tuple | None) -> int:
    """Publish window ``i`` through the trainer's writer (`save_checkpoint`), with the
    manifest keys and metrics that `learn.train` writes."""
    manifest = {
        "parent": i - 1 or None,
        "cursor": i,
        "shards": [i],
        "shard_landed_at": {str(i): now - 30.0},
        "quarantined": [],
        "rows_dropped": 0,
        "window_events": 1000 * i,
        "events_trained": 1000 * i * (i + 1) // 2,
        "window_index": i,
        "watermark": now - 120.0,
        "metrics": {
            "loss": 0.4,
            "eval_auc": 0.6 + 0.05 * i,
            "eval_logloss": 0.5 - 0.01 * i,
            "eval_ctr": 0.1,
            "eval_gauc": 0.55,
            "eval_ndcg10": 0.3,
        },
        "timings": {
            "read_s": 0.1 * i,
            "eval_s": 0.02,
            "drift_s": 0.01,
            "train_s": 1.0 + i,
            "compute_s": 0.9 + i,
        },
        "stage_times": {"read_at": now - 20.0, "trained_at": now - 10.0},
        "drift_alarms": drift[1] if drift is not None else [],
        "world_size": 1,
        "trained_at": now - 10.0,
    }
    extra = {DRIFT_FILE: drift[0]} if drift is not None else {}
    info = save_checkpoint(
        registry,
        RankerConfig(),
        {"w": torch.zeros(1)},
        None,
        {},
        manifest,
        extra_files=extra,
    )
    return info.version


DRIFT = drift_windows(7, shift_before=6)
"""Seven windows; the trainer's versions 1-3 are the last three (the shift before the last)."""


@pytest.fixture
def line(tmp_path):
    """A registry with three windows (v3 champion, one rejection) and a landing zone."""
    now = time.time()
    registry = Registry(tmp_path / "registry")
    for i in (1, 2, 3):
        version = checkpoint(registry, i, now, DRIFT[3 + i])
        registry.set_champion(version, reason="window metrics finite")
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
    # Drift: the report the trainer's monitor kept in v3's drift.npz, for v3's own window, and
    # the alarms v3's manifest lists are that report's.
    assert status.drift_version == 3 and status.drift.alarm and status.drift_windows_since == 0
    assert status.drift.leaders(1)[0].feature == "user_category"
    assert status.drift_alarms == ("user_category/surprise",) == tuple(DRIFT[6][1])
    assert status.drift == DriftMonitor.from_state(arrays_from_npz(DRIFT[6][0])).last_report
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
    surprise = collect_status(str(registry.root), None, None).drift.get(
        "user_category", Statistic.SURPRISE
    )
    assert surprise.value > 0.5  # the planted shift: every user left their categories
    assert any(
        "ALARM user_category" in ln and f"{surprise.value:+.3f} nats" in ln for ln in lines
    ), lines
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


def test_status_says_when_the_newest_windows_were_not_judged_yet(tmp_path):
    """Windows below min_rows wait for the next ones: v2's drift.npz holds v1's report."""
    registry = Registry(tmp_path / "registry")
    now = time.time()
    small = drift_windows(5, requests=80)  # 800 rows each: judged in pairs (min_rows 1500)
    checkpoint(registry, 1, now, small[3])  # windows 2 and 3, judged together
    checkpoint(registry, 2, now, small[4])  # window 4, kept for the next
    status = collect_status(str(registry.root), None, None)
    monitor = DriftMonitor.from_state(arrays_from_npz(small[4][0]))
    assert monitor.windows_since_report == 1 and status.drift_windows_since == 1
    assert status.drift == monitor.last_report and status.drift.rows == 1600
    text = render_status(status)
    assert "in the last judged window, 1 before v2's (1600 rows" in text


def test_status_falls_back_on_the_manifests_alarms(tmp_path):
    """A drift.npz without a report (an older trainer's): the manifest's alarms are shown."""
    registry = Registry(tmp_path / "registry")
    state = arrays_from_npz(DRIFT[6][0])
    older = {k: v for k, v in state.items() if not k.startswith("monitor/")}
    checkpoint(registry, 1, time.time(), (npz_bytes(older, compressed=True), DRIFT[6][1]))
    status = collect_status(str(registry.root), None, None)
    assert status.drift is None and status.drift_alarms == ("user_category/surprise",)
    text = render_status(status)
    assert "ALARM in v1's window: user_category/surprise (its manifest)" in text
    # A newer version without drift (TrainConfig.drift off: no drift.npz, no alarms) leaves the
    # newest drift the trainer wrote in view.
    checkpoint(registry, 2, time.time(), None)
    status = collect_status(str(registry.root), None, None)
    assert status.drift_version == 1 and status.drift_alarms == ("user_category/surprise",)
