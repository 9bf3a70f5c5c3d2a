"""The whole loop on the session's local Ray: shards land, two workers train window after window,
versions are promoted and hot-swapped into the Serve endpoint while real HTTP requests flow."""

import pytest

from freshrank.demo import DemoConfig, run_demo
from freshrank.registry import Registry
from freshrank.runtime import free_port

pytestmark = pytest.mark.e2e


def test_whole_loop_trains_every_valid_event_and_swaps_without_failures(ray_local, tmp_path):
    lines: list[str] = []
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
    # Read back from Ray's Prometheus endpoint while the loop ran.
    m = result.metrics_seen
    assert m["freshrank_events_trained_total"] > 0
    assert 0.0 < m["freshrank_window_auc"] < 1.0
    assert 1 <= m["freshrank_served_model_version"] <= result.champion
    assert m["freshrank_trainer_model_version"] >= 1
    assert 0.0 < m["freshrank_freshness_seconds"] < 600
    assert m["freshrank_requests_total"] >= 1
