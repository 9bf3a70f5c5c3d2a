"""The whole loop on the session's local Ray: shards land, two workers train window after window,
versions are promoted and hot-swapped into the Serve endpoint while real HTTP requests flow, and
a real Prometheus scraping Ray's metrics endpoint serves the loop's freshrank_ series."""

import re

import pytest

from freshrank.apps.demo import DemoConfig, run_demo
from freshrank.ops.runtime import free_port
from freshrank.registry import Registry

pytestmark = pytest.mark.e2e


def test_whole_loop_trains_every_valid_event_and_swaps_without_failures(
    ray_local, prometheus, tmp_path
):
    lines: list[str] = []

    def total(name: str) -> float | None:
        return prometheus.scalar(f"sum(max_over_time({name}[10m]))")

    # Earlier tests in this process may have landed events: count from here.
    landed_before = total("freshrank_events_landed_total") or 0.0
    result = run_demo(
        DemoConfig(
            workdir=str(tmp_path),
            duration_s=25,
            events_per_second=2000,
            shard_events=1000,
            bad_shard_every=6,
            null_row_fraction=0.004,
            request_rate=15,
            http_port=free_port(),
            status_port=0,
        ),
        out=lines.append,
    )
    producer = result.producer
    assert producer.shards_written >= 20 and producer.bad_shards_written >= 3
    # Nothing lost, nothing twice: every valid landed event is trained exactly once.
    assert result.training.events_trained == producer.valid_events
    assert result.quarantined_shards == producer.bad_shards_written
    assert result.rows_dropped == producer.null_rows_written
    registry = Registry(f"{result.run_dir}/registry")
    shards = [s for v in registry.list_versions() for s in registry.get(v).manifest["shards"]]
    assert len(shards) == len(set(shards)) == producer.shards_written
    # Several versions were swapped in while requests flowed, and none failed.
    assert len(result.client.versions_served) >= 2
    assert result.client.failed == 0, result.client.errors[:5]
    assert result.client.ok > 50
    assert result.champion == max(result.client.versions_served)
    assert result.landing_to_served_s and min(result.landing_to_served_s) > 0
    assert any("demo summary" in line for line in lines)
    assert result.status_page and any(f"status page {result.status_page}/" in x for x in lines)
    # The output tells the loop's story, in freshrank's own lines: a line per version trained
    # and per gate decision, and a summary that says what its counts count.
    trained = [line for line in lines if re.search(r"\] v\d+ trained: window \d+", line)]
    decided = [line for line in lines if "] gate: v" in line]
    assert len(trained) == result.training.versions_trained >= 2
    assert result.counts is not None
    assert result.counts.versions_trained == result.training.versions_trained
    assert len(decided) == result.counts.promoted + result.counts.rejected >= 1
    assert any(
        f"versions                 {result.training.versions_trained} trained, "
        f"{len(result.training.versions)} kept" in line
        for line in lines
    )
    # Read back from Ray's Prometheus endpoint while the loop ran: the replicas' series (they
    # live on). The trainer's series are checked through Prometheus below: Ray's metrics agent
    # may export a short-lived worker's series late on a loaded machine, and drops them once
    # the worker exits, while Prometheus keeps what it scraped.
    m = result.metrics_seen
    assert 1 <= m["freshrank_served_model_version"] <= result.champion
    assert 0.0 < m["freshrank_freshness_seconds"] < 600
    assert m["freshrank_requests_total"] >= 1

    # The same loop through a real Prometheus (the shipped relabel rule drops Ray's prefix).
    # Series of processes that ended (trainer workers) stay queryable over a range.
    expected = landed_before + producer.events_written
    landed = prometheus.wait(
        lambda: total("freshrank_events_landed_total") == expected or None,
        f"{expected:.0f} landed events counted in Prometheus (last {landed_before:.0f} before)",
    )
    assert landed
    trained = prometheus.wait(
        lambda: total("freshrank_events_trained_total") or None, "trained events in Prometheus"
    )
    assert trained > 0
    auc = prometheus.scalar("max(max_over_time(freshrank_window_auc[10m]))")
    assert auc is not None and 0.0 < auc < 1.0
    trainer_version = prometheus.scalar("max(max_over_time(freshrank_trainer_model_version[10m]))")
    assert trainer_version is not None and trainer_version >= 1
    stages = prometheus.query(
        "sum by (stage) (max_over_time(freshrank_stage_latency_seconds_count[10m]))"
    )
    counts = {s["metric"]["stage"]: float(s["value"][1]) for s in stages}
    for stage in ("landed_to_read", "read_to_trained", "trained_to_checkpointed"):
        assert counts.get(stage, 0) >= 1, counts
    assert counts.get("checkpointed_to_promoted", 0) >= 1, counts
    promoted = prometheus.scalar(
        'sum(max_over_time(freshrank_promotions_total{outcome="promoted"}[10m]))'
    )
    assert promoted is not None and promoted >= 1
    features = prometheus.query("max by (feature) (max_over_time(freshrank_drift_js[10m]))")
    assert {s["metric"]["feature"] for s in features} == {
        "category",
        "brand",
        "device",
        "query",
        "item",
    }
    assert prometheus.query('freshrank_score_psi{source="trainer"}[10m]')
    gauc = prometheus.scalar("max(max_over_time(freshrank_window_gauc[10m]))")
    assert gauc is not None and 0.0 < gauc <= 1.0
    ok = prometheus.scalar('sum(max_over_time(freshrank_requests_total{status="ok"}[10m]))')
    assert ok is not None and ok >= 1
