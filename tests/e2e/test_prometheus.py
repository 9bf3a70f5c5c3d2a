"""A real Prometheus (Debian's ``prometheus``) scrapes the session's Ray while an actor does the
trainer's per-window monitoring (real drift sketches and monitor, ``Telemetry.for_ray()``); its
HTTP API then serves the ``freshrank_`` series under their catalogue names (the shipped relabel
rule strips Ray's ``ray_`` prefix), with exact values, and evaluates the shipped alert rules.

This one plants a shift and checks exact values and the alert firing; the real loop's series
(trainer, producer, replicas) in the same Prometheus are checked by tests/e2e/test_loop.py.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import numpy as np
import pytest
import ray

pytestmark = pytest.mark.e2e


@ray.remote(num_cpus=0)
class TrainerStandIn:
    """Does what the trainer's rank 0 does per window, with the real drift code and Ray metrics:
    judge the window against the reference, record the window's counters, gauges and stage
    latencies, then absorb the window into the reference."""

    def worker_id(self) -> str:
        return ray.get_runtime_context().get_worker_id()

    def run(self, windows: int, shift_at: int) -> dict[str, Any]:
        from freshrank.core import UPDATE_STAGES, Telemetry
        from freshrank.drift import DriftMonitor
        from freshrank.events.simulator import Simulator, SimulatorConfig
        from freshrank.features.encode import FeatureConfig, encode, num_rows

        metrics = Telemetry.for_ray()
        sim = Simulator(SimulatorConfig(seed=5, n_users=300))
        monitor = DriftMonitor(metrics=metrics)
        report = None
        for w in range(windows):
            if w == shift_at:
                sim.planted_shift()
            rows = encode(sim.generate(ROWS_PER_WINDOW // 10), FeatureConfig())
            window = monitor.sketch(rows, scores=np.log1p(rows["dense"][:, 0]) - 3.0)
            report = monitor.check(window)
            monitor.absorb(window)
            metrics.inc("freshrank_events_trained_total", float(num_rows(rows)))
            metrics.inc("freshrank_windows_trained_total")
            metrics.set("freshrank_window_auc", 0.70 + 0.01 * w)
            metrics.set("freshrank_trainer_model_version", float(w + 1))
            for stage, seconds in zip(UPDATE_STAGES, STAGE_SECONDS, strict=True):
                metrics.observe("freshrank_stage_latency_seconds", seconds, {"stage": stage})
        return report.to_dict()


ROWS_PER_WINDOW = 2000
STAGE_SECONDS = (0.2, 3.0, 0.4, 0.03, 1.5)
WINDOWS = 6


def test_prometheus_serves_freshrank_series_from_ray(prometheus):
    trainer = TrainerStandIn.remote()
    worker = ray.get(trainer.worker_id.remote())
    report = ray.get(trainer.run.remote(WINDOWS, WINDOWS - 1))  # the last window is shifted
    mine = f'WorkerId="{worker}"'

    def everything_scraped() -> bool | None:
        windows = prometheus.scalar(f"sum(freshrank_windows_trained_total{{{mine}}})")
        alarms = prometheus.query(f"freshrank_drift_alarm{{{mine}}}")
        return (windows == WINDOWS and bool(alarms)) or None

    prometheus.wait(everything_scraped, "the stand-in's last window in Prometheus")

    # Counters, gauges and histograms arrive under their catalogue names, values exact.
    assert prometheus.scalar(f"sum(freshrank_events_trained_total{{{mine}}})") == (
        WINDOWS * ROWS_PER_WINDOW
    )
    assert prometheus.scalar(f"max(freshrank_window_auc{{{mine}}})") == pytest.approx(0.75)
    assert prometheus.scalar(f"max(freshrank_trainer_model_version{{{mine}}})") == WINDOWS
    counts = prometheus.query(f"sum by (stage) (freshrank_stage_latency_seconds_count{{{mine}}})")
    assert {s["metric"]["stage"]: float(s["value"][1]) for s in counts} == {
        "landed_to_read": WINDOWS,
        "read_to_trained": WINDOWS,
        "trained_to_checkpointed": WINDOWS,
        "checkpointed_to_promoted": WINDOWS,
        "promoted_to_live": WINDOWS,
    }
    read_to_trained_p50 = prometheus.scalar(
        "histogram_quantile(0.5, sum by (le) (freshrank_stage_latency_seconds_bucket"
        f'{{{mine},stage="read_to_trained"}}))'
    )
    assert 2.5 <= read_to_trained_p50 <= 5.0  # 3.0 s lies in the (2.5, 5] bucket

    # Drift: every judged statistic, with the values and verdicts the monitor reported.
    alarms = prometheus.query(f"freshrank_drift_alarm{{{mine}}}")
    flagged = {
        (s["metric"]["feature"], s["metric"]["statistic"])
        for s in alarms
        if float(s["value"][1]) == 1.0
    }
    expected = {(e["feature"], e["statistic"]) for e in report["entries"] if e["alarm"]}
    assert ("user_category", "surprise") in expected
    assert flagged == expected
    (entry,) = [e for e in report["entries"] if e["statistic"] == "surprise"]
    surprise = prometheus.scalar(f'max(freshrank_drift_surprise{{{mine},feature="user_category"}})')
    assert surprise == pytest.approx(entry["value"], rel=1e-6)
    js = prometheus.query(f"freshrank_drift_js{{{mine}}}")
    assert {s["metric"]["feature"] for s in js} == {"category", "brand", "device", "query", "item"}
    query = f'max(freshrank_score_psi{{{mine},source="trainer"}})'
    deadline = time.monotonic() + 30  # the gauge may miss one scrape: poll, don't fail
    score = prometheus.scalar(query)
    while score is None and time.monotonic() < deadline:
        time.sleep(0.5)
        score = prometheus.scalar(query)
    (score_entry,) = [e for e in report["entries"] if e["feature"] == "score"]
    assert score == pytest.approx(score_entry["value"], rel=1e-6)

    # Ray's prefix is gone from every freshrank series, and the shipped alert rules are loaded
    # and evaluated: the planted shift pages.
    assert prometheus.query('count({__name__=~"ray_freshrank_.*"})') == []
    rules = httpx.get(f"{prometheus.url}/api/v1/rules", timeout=5).json()["data"]["groups"]
    names = {r["name"] for g in rules for r in g["rules"]}
    assert "FreshrankDriftHigh" in names and len(names) == 7

    def drift_alert_firing() -> bool | None:
        alerts = httpx.get(f"{prometheus.url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
        return (
            any(
                a["labels"]["alertname"] == "FreshrankDriftHigh"
                and a["labels"].get("feature") == "user_category"
                and a["state"] == "firing"
                for a in alerts
            )
            or None
        )

    prometheus.wait(drift_alert_firing, "FreshrankDriftHigh firing for user_category")
