"""Replica-side observability without Ray: a real registry directory, the replica's holder and
observer, metrics recorded through a fake `Telemetry` backend."""

import logging
import time

import numpy as np
import pytest
import torch

from freshrank.core.serialization import arrays_from_npz, npz_bytes
from freshrank.core.telemetry import Telemetry, TelemetryBackend
from freshrank.drift import DriftMonitor, DriftSource
from freshrank.events.simulator import Simulator, SimulatorConfig
from freshrank.features.encode import FeatureConfig, encode
from freshrank.model.config import RankerConfig
from freshrank.model.device import to_tensors
from freshrank.model.ranker import Ranker
from freshrank.registry import Registry
from freshrank.registry.checkpoint import DRIFT_FILE, load_serving_model, save_checkpoint
from freshrank.serving.holder import ModelHolder
from freshrank.serving.observe import ReplicaObserver, champion_record

FEATURES = FeatureConfig(
    user_buckets=500, item_buckets=2000, category_buckets=50, brand_buckets=80, query_buckets=400
)
CFG = RankerConfig(features=FEATURES, embedding_dim=8)
LANDED = {"7": 1000.0, "8": 1012.5}


class Recorder:
    """A `Telemetry` backend that keeps every call: (verb, name, value, tags)."""

    backend = TelemetryBackend.NULL
    closed = False

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, float, dict[str, str]]] = []

    def inc(self, spec, value, tags):
        self.calls.append(("inc", spec.name, value, dict(tags)))

    def set(self, spec, value, tags):
        self.calls.append(("set", spec.name, value, dict(tags)))

    def set_function(self, spec, fn, tags):
        self.calls.append(("set", spec.name, float(fn()), dict(tags)))

    def observe(self, spec, value, tags):
        self.calls.append(("observe", spec.name, value, dict(tags)))

    def close(self):
        pass

    def values(self, name: str, **tags: str) -> list[float]:
        return [
            v
            for _, n, v, t in self.calls
            if n == name and all(t.get(k) == w for k, w in tags.items())
        ]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _model(seed: int) -> Ranker:
    torch.manual_seed(seed)
    model = Ranker(CFG)
    model.eval()
    return model


def _served_scores(model: Ranker, rows: dict) -> np.ndarray:
    """What a replica serves for these rows: relevance logits, position bias off."""
    with torch.inference_mode():
        return model(to_tensors(rows, torch.device("cpu")), use_position=False).numpy()


def _drift_state(model: Ranker, sim: Simulator) -> dict:
    """A trainer's drift monitor after three windows of simulator rows and this model's scores."""
    monitor = DriftMonitor()
    for _ in range(3):
        rows = encode(sim.generate(300), FEATURES)
        monitor.absorb(monitor.sketch(rows, scores=_served_scores(model, rows)))
    return monitor.state_dict()


def _publish(reg: Registry, seed: int, drift: dict | None, landed=LANDED) -> int:
    model = _model(seed)
    meta = {
        "cursor": seed,
        "watermark": 5000.0 + seed,
        "metrics": {"loss": 0.5},
        "events_trained": 1,
        "shard_landed_at": landed,
    }
    extra = {DRIFT_FILE: npz_bytes(drift, compressed=True)} if drift is not None else None
    return save_checkpoint(reg, CFG, model.state_dict(), None, {}, meta, extra_files=extra).version


@pytest.fixture()
def world(tmp_path):
    reg = Registry(tmp_path / "registry")
    sim = Simulator(SimulatorConfig(seed=3, n_users=400, n_items=1500))
    recorder = Recorder()
    clock = Clock(time.time() - 3600)  # the replica started before every promotion below
    observer = ReplicaObserver(
        reg, Telemetry(recorder), "r1", psi_every_rows=3000, psi_every_s=30.0, clock=clock
    )
    holder = ModelHolder(
        loader=lambda v: observer.prepare(load_serving_model(reg, v)),
        target=reg.serving_target,
        on_swap=observer.swapped,
        on_tick=observer.tick,
        on_error=observer.load_failed,
    )
    return reg, sim, recorder, clock, observer, holder


def _promote(reg: Registry, clock: Clock, version: int, after_s: float) -> float:
    reg.set_champion(version)
    promoted_at = champion_record(reg)["promoted_at"]
    clock.now = promoted_at + after_s
    return promoted_at


def test_swap_reports_version_and_update_latencies(world):
    reg, sim, rec, clock, observer, holder = world
    v = _publish(reg, 1, _drift_state(_model(1), sim))
    _promote(reg, clock, v, after_s=1.5)
    assert holder.refresh()
    assert rec.values("freshrank_model_swaps_total", replica="r1") == [1.0]
    assert rec.values("freshrank_served_model_version", replica="r1") == [float(v)]
    assert rec.values("freshrank_stage_latency_seconds", stage="promoted_to_live") == [
        pytest.approx(1.5)
    ]
    assert sorted(rec.values("freshrank_landed_to_live_seconds")) == [
        pytest.approx(clock.now - 1012.5),
        pytest.approx(clock.now - 1000.0),
    ]
    # the holder's tick: freshness is now minus the served version's watermark
    observer.tick(holder.current())
    assert rec.values("freshrank_freshness_seconds", replica="r1") == [
        pytest.approx(clock.now - 5001.0)
    ]


def test_rollback_and_pin_are_not_update_path_latencies(world):
    reg, sim, rec, clock, observer, holder = world
    v1 = _publish(reg, 1, None)
    v2 = _publish(reg, 2, None, landed={"8": 1500.0})
    v3 = _publish(reg, 3, None, landed={"9": 2000.0})
    _promote(reg, clock, v1, after_s=1.0)
    holder.refresh()
    _promote(reg, clock, v3, after_s=2.0)
    holder.refresh()
    # back to v2, older than what this replica served: a new pointer write, so a swap
    # latency, but its shards are not part of this update
    reg.rollback(v2)
    clock.now = champion_record(reg)["promoted_at"] + 0.5
    holder.refresh()
    reg.rollback(v1)  # and to v1, already observed once
    clock.now = champion_record(reg)["promoted_at"] + 0.25
    holder.refresh()
    assert holder.current().served.version == v1
    assert rec.values("freshrank_stage_latency_seconds", stage="promoted_to_live") == [
        pytest.approx(1.0),
        pytest.approx(2.0),
        pytest.approx(0.5),
        pytest.approx(0.25),
    ]
    landed = rec.values("freshrank_landed_to_live_seconds")
    assert len(landed) == len(LANDED) + 1  # v1's two shards and v3's one, each once
    v4 = _publish(reg, 4, None)
    reg.pin(v4)  # served, but not the champion: not an update
    holder.refresh()
    assert holder.current().served.version == v4
    assert len(rec.values("freshrank_stage_latency_seconds")) == 4
    assert len(rec.values("freshrank_landed_to_live_seconds")) == 3
    assert rec.values("freshrank_model_swaps_total", replica="r1") == [1.0] * 5


def test_versions_promoted_before_the_replica_started_are_not_observed(tmp_path):
    reg = Registry(tmp_path / "registry")
    v = _publish(reg, 1, None)
    reg.set_champion(v)
    rec = Recorder()
    observer = ReplicaObserver(reg, Telemetry(rec), "r2")  # real clock: started after the promotion
    holder = ModelHolder(
        loader=lambda v: observer.prepare(load_serving_model(reg, v)),
        target=reg.serving_target,
        on_swap=observer.swapped,
    )
    assert holder.refresh()
    assert rec.values("freshrank_served_model_version", replica="r2") == [float(v)]
    assert rec.values("freshrank_stage_latency_seconds") == []
    assert rec.values("freshrank_landed_to_live_seconds") == []


def test_served_score_psi_against_the_versions_drift_reference(world):
    reg, sim, rec, clock, observer, holder = world
    model = _model(1)
    state = _drift_state(model, sim)
    v = _publish(reg, 1, state)
    _promote(reg, clock, v, after_s=1.0)
    holder.refresh()
    assert holder.current().served.version == v
    # the replica serves requests like the training rows: the same scores, no drift
    batches = [_served_scores(model, encode(sim.generate(100), FEATURES)) for _ in range(3)]
    for scores in batches:
        observer.scored(v, scores)
    observer.scored(v + 100, np.full(5000, 9.0))  # another version's batch: not counted
    assert observer.pending_score_rows == sum(len(b) for b in batches) == 3000
    observer.tick(holder.current())  # 3000 rows: the check is due
    (psi,) = rec.values("freshrank_score_psi", source="serving")
    assert observer.pending_score_rows == 0  # a fresh histogram after the check
    # the same judgement made independently from the stored file
    with open(reg.get(v).path / DRIFT_FILE, "rb") as f:
        independent = DriftMonitor.from_state(arrays_from_npz(f.read()), source=DriftSource.SERVING)
    hist = independent.score_histogram()
    for scores in batches:
        hist.update(scores)
    assert psi == pytest.approx(independent.check_scores(hist).value)
    assert psi < 0.2 and not observer.last_score_drift.alarm
    # served scores move (say, the requests changed): PSI rises and the drift alarms
    for scores in batches:
        observer.scored(v, scores + 3.0)
    observer.tick(holder.current())
    assert len(rec.values("freshrank_score_psi", source="serving")) == 2
    assert rec.values("freshrank_score_psi", source="serving")[-1] > 1.0
    assert observer.last_score_drift.alarm
    # nothing but the catalogue's serving PSI comes from the replica's drift monitor
    assert not [c for c in rec.calls if c[1].startswith("freshrank_drift")]


def test_psi_on_time_needs_min_rows(world):
    reg, sim, rec, clock, observer, holder = world
    model = _model(1)
    v = _publish(reg, 1, _drift_state(model, sim))
    _promote(reg, clock, v, after_s=1.0)
    holder.refresh()
    few = _served_scores(model, encode(sim.generate(150), FEATURES))  # 1500 rows < min_rows
    observer.scored(v, few)
    clock.now += 31.0
    observer.tick(holder.current())
    assert rec.values("freshrank_score_psi") == [] and observer.pending_score_rows == 1500
    observer.scored(v, few)  # 3000 >= min_rows (2000) and 30 s have passed
    observer.scored(v, few[:-1000])  # still below psi_every_rows: only time makes it due
    assert observer.pending_score_rows < 3000 + 1500
    observer.tick(holder.current())
    assert len(rec.values("freshrank_score_psi", source="serving")) == 1


def test_version_without_drift_file_serves_and_logs_once(world, caplog):
    reg, sim, rec, clock, observer, holder = world
    v1 = _publish(reg, 1, None)
    v2 = _publish(reg, 2, None)
    with caplog.at_level(logging.INFO, logger="freshrank.serving.observe"):
        for v in (v1, v2):
            _promote(reg, clock, v, after_s=1.0)
            assert holder.refresh()
            observer.scored(v, np.zeros(5000))
            observer.tick(holder.current())
    assert len([r for r in caplog.records if DRIFT_FILE in r.getMessage()]) == 1
    assert rec.values("freshrank_score_psi") == [] and observer.check_scores() is None
    assert holder.current().served.version == v2


def test_unreadable_drift_file_does_not_stop_the_model(world, caplog):
    reg, sim, rec, clock, observer, holder = world
    v = _publish(reg, 1, _drift_state(_model(1), sim))
    real_load = reg.load_npz

    def broken(info, name):
        raise ValueError("truncated npz")

    reg.load_npz = broken
    _promote(reg, clock, v, after_s=1.0)
    with caplog.at_level(logging.WARNING, logger="freshrank.serving.observe"):
        assert holder.refresh()
    reg.load_npz = real_load
    assert holder.current().served.version == v
    assert "truncated npz" in caplog.text
    observer.scored(v, np.zeros(5000))
    observer.tick(holder.current())
    assert rec.values("freshrank_score_psi") == []


def test_failed_load_is_counted(world):
    reg, sim, rec, clock, observer, holder = world
    v = _publish(reg, 1, None)
    path = reg.get(v).path / "model.pt"
    path.write_bytes(path.read_bytes()[:100])
    # set_champion would refuse the corrupt version: write the pointer raw, as a bad actor would
    (reg.root / "CHAMPION").write_text(f'{{"version": {v}, "promoted_at": {time.time()}}}')
    assert holder.refresh() is False
    assert rec.values("freshrank_model_load_failures_total", replica="r1") == [1.0]
    assert rec.values("freshrank_model_swaps_total") == []


def test_bad_settings_are_refused(tmp_path):
    reg = Registry(tmp_path)
    with pytest.raises(ValueError, match="psi_every_rows"):
        ReplicaObserver(reg, Telemetry(Recorder()), "r", psi_every_rows=0)
    with pytest.raises(ValueError, match="psi_every_s"):
        ReplicaObserver(reg, Telemetry(Recorder()), "r", psi_every_s=0)


def test_a_failing_metrics_backend_never_stops_serving(world, caplog):
    """Hooks run on the holder's thread and in the replica's start: they log, never raise."""
    reg, sim, rec, clock, observer, holder = world

    def boom(*args, **kwargs):
        raise RuntimeError("metrics agent gone")

    rec.inc = rec.set = rec.observe = boom
    v = _publish(reg, 1, _drift_state(_model(1), sim))
    _promote(reg, clock, v, after_s=1.0)
    with caplog.at_level(logging.ERROR, logger="freshrank.serving.observe"):
        assert holder.refresh()
        observer.scored(v, np.zeros(4000))
        observer.tick(holder.current())
    assert holder.current().served.version == v
    assert caplog.text.count("metrics agent gone") >= 2
