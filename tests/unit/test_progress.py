"""The live account of the loop (`freshrank.ops.progress`): story lines for what changed, a
status line with the counts, in place on a terminal and periodic into a pipe."""

from __future__ import annotations

import io
import time

import pytest
import torch
from prometheus_client import CollectorRegistry

from freshrank.core import Telemetry, serve_prometheus_client
from freshrank.events.landing import LandingZone
from freshrank.events.simulator import Simulator, SimulatorConfig
from freshrank.model.config import RankerConfig
from freshrank.ops.progress import LoopProgress, ProgressConfig
from freshrank.registry.checkpoint import save_checkpoint
from freshrank.registry.store import Registry


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def publish(registry: Registry, i: int, watermark: float, dropped: int = 0) -> int:
    manifest = {
        "parent": i - 1 or None,
        "cursor": i,
        "shards": [i],
        "shard_landed_at": {str(i): watermark},
        "rows_dropped": dropped,
        "rows_duplicate": 3 if i == 2 else 0,
        "window_events": 1000 + i,
        "events_trained": 1000 * i,
        "window_index": i,
        "watermark": watermark,
        "metrics": {"eval_auc": 0.6 + 0.01 * i, "eval_gauc": 0.55},
        "drift_alarms": ["query/js"] if i == 3 else [],
    }
    return save_checkpoint(
        registry, RankerConfig(), {"w": torch.zeros(1)}, None, {}, manifest
    ).version


@pytest.fixture
def loop(tmp_path):
    registry = Registry(tmp_path / "registry")
    zone = LandingZone(tmp_path / "landing")
    sim = Simulator(SimulatorConfig(seed=0, n_users=10, n_items=30, n_categories=3))
    return registry, zone, sim


def test_story_lines_and_counts_follow_the_registry_and_landing_zone(loop):
    registry, zone, sim = loop
    clock = Clock()
    out = io.StringIO()
    progress = LoopProgress(
        ProgressConfig(registry=str(registry.root), landing=str(zone.root), status_every_s=5.0),
        out=out,
        extra=lambda: "requests 7 ok, 0 failed",
        clock=clock,
    )
    assert progress.poll() == []
    c = progress.counts()
    assert (c.shards_landed, c.shards_trained, c.versions_trained, c.champion) == (0, 0, 0, None)

    for seq in (1, 2, 3):
        zone.write_shard(sim.generate(2), seq=seq)
    zone.quarantine(zone.write_raw(b"not parquet", seq=4), "not readable as parquet: magic")
    publish(registry, 1, watermark=990.0)
    registry.set_champion(1, reason="first version")
    publish(registry, 2, watermark=995.0, dropped=4)
    registry.log_event("rejected", to_version=2, from_version=1, reason="auc 0.70 -> 0.60: worse")
    registry.write_trainer_status({"state": "ready", "version": 0, "cursor": 0})  # at its start
    clock.now = 1002.5

    lines = progress.poll()
    text = "\n".join(lines)
    assert len(lines) == 5, text
    assert "[   2.5 s] v1 trained: window 1, 1,001 events, AUC 0.610, GAUC 0.550" in lines[0]
    assert (
        "v2 trained: window 2, 1,002 events, AUC 0.620, GAUC 0.550, "
        "4 rows dropped (missing field), 3 duplicate rows" in text
    )
    assert "gate: v1 promoted (first version)" in text
    assert "gate: v2 rejected, v1 stays champion (auc 0.70 -> 0.60: worse)" in text
    assert "shard shard-000000000004.parquet quarantined: not readable as parquet" in text
    c = progress.counts()
    assert (c.shards_landed, c.shards_trained, c.shards_quarantined) == (
        4,
        2,
        1,
    )  # v2 trained to shard 2
    assert (c.versions_trained, c.versions_kept, c.promoted, c.rejected) == (2, 2, 1, 1)
    assert c.champion == 1 and c.freshness_s == pytest.approx(12.5)
    status = progress.status_line()
    assert "shards 4 landed, 2 trained, 1 quarantined" in status
    assert "versions 2 trained, 1 promoted, 1 rejected" in status
    assert "champion v1" in status and "freshness 12.5 s" in status
    assert status.endswith("requests 7 ok, 0 failed")

    # nothing new: no story line; the status line waits for status_every_s off a terminal
    before = out.getvalue()
    clock.now = 1004.0
    assert progress.poll() == []
    assert out.getvalue() == before
    clock.now = 1008.0
    progress.poll()
    # printed at 0.0 s and 8.0 s (5 s apart at least), not at 2.5 s or 4.0 s
    assert out.getvalue().count("champion none") == 1
    assert out.getvalue().count("champion v1") == 1

    # a pruned version is counted as trained, not described; the log's 'pruned' is no story
    publish(registry, 3, watermark=1007.0)
    publish(registry, 4, watermark=1008.0)
    registry.prune(keep_last=2)
    lines = progress.poll()
    assert [line.split("] ")[1].split(":")[0] for line in lines] == ["v3 trained", "v4 trained"]
    assert "drift alarm query/js" in lines[0]
    assert progress.counts().versions_trained == 4


def test_versions_before_the_watch_are_not_counted_as_trained(loop):
    registry, _, _ = loop
    publish(registry, 1, watermark=time.time())
    progress = LoopProgress(ProgressConfig(registry=str(registry.root)), out=io.StringIO())
    assert progress.poll() == []
    publish(registry, 2, watermark=time.time())
    assert len(progress.poll()) == 1
    assert progress.counts().versions_trained == 1 and progress.counts().versions_kept == 2


def test_replica_swaps_come_from_the_metrics_endpoint(loop):
    registry, _, _ = loop
    prom = CollectorRegistry()
    metrics = Telemetry.for_prometheus_client(prom)
    metrics.set("freshrank_served_model_version", 3, tags={"replica": "r1"})
    metrics.set("freshrank_freshness_seconds", 4.25, tags={"replica": "r1"})
    server = serve_prometheus_client(0, registry=prom)
    try:
        progress = LoopProgress(
            ProgressConfig(registry=str(registry.root), metrics_url=server.url), out=io.StringIO()
        )
        assert any("replica r1 now serves v3" in line for line in progress.poll())
        assert progress.counts().served == {"r1": 3}
        assert progress.counts().freshness_s == pytest.approx(4.25)
        assert progress.poll() == []  # no change, no line
        metrics.set("freshrank_served_model_version", 4, tags={"replica": "r1"})
        metrics.set("freshrank_served_model_version", 4, tags={"replica": "r2"})
        lines = progress.poll()
        assert [line.split("] ")[1] for line in lines] == [
            "replica r1 now serves v4",
            "replica r2 now serves v4",
        ]
        assert "serving v4 v4" in progress.status_line()
    finally:
        server.close()


def test_on_a_terminal_the_status_line_is_redrawn_in_place(loop):
    registry, _, _ = loop
    out = io.StringIO()
    progress = LoopProgress(ProgressConfig(registry=str(registry.root)), out=out, live=True)
    progress.poll()
    progress.poll()
    publish(registry, 1, watermark=time.time())
    progress.poll()
    progress.stop()
    text = out.getvalue()
    assert text.count("\r\x1b[K") >= 3
    # the story line replaced the status line, then the status line was drawn under it
    assert "\r\x1b[K[" in text and "v1 trained" in text
    assert text.endswith("\n") and text.rstrip("\n").rsplit("\r\x1b[K", 1)[1].startswith("[")


def test_a_read_error_is_counted_and_shown_not_raised(loop, monkeypatch):
    registry, _, _ = loop
    progress = LoopProgress(ProgressConfig(registry=str(registry.root)), out=io.StringIO())

    def broken() -> list:
        raise OSError("registry unreadable")

    monkeypatch.setattr(progress._registry, "promotions", broken)
    assert progress.poll() == []
    assert progress.errors == 1 and "registry unreadable" in progress.status_line()


def test_background_thread_prints_until_stopped(loop):
    registry, _, _ = loop
    out = io.StringIO()
    with LoopProgress(ProgressConfig(registry=str(registry.root), interval_s=0.05), out=out):
        publish(registry, 1, watermark=time.time())
        deadline = time.monotonic() + 10
        while "v1 trained" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.02)
    assert "v1 trained" in out.getvalue()
    assert out.getvalue().rstrip("\n").splitlines()[-1].endswith("champion none")


@pytest.mark.parametrize(
    "kwargs", [{"interval_s": 0}, {"status_every_s": -1}, {"max_reason_chars": 5}]
)
def test_bad_config_is_refused(kwargs):
    with pytest.raises(ValueError):
        ProgressConfig(registry="r", **kwargs)
