"""``TRAINER`` tells the truth (issue 17, fault 8): a heartbeat the trainer refreshes, readers
that call a silent trainer stale or dead, and ``failed`` with the reason when it raises."""

from __future__ import annotations

import json
import time
import types

import pytest

import freshrank.learn.train as train
from freshrank.learn.config import TrainConfig
from freshrank.ops.status import collect_status, render_status
from freshrank.registry import Registry
from freshrank.registry.control import (
    DEAD_AFTER_BEATS,
    STALE_AFTER_BEATS,
    TrainerControl,
    TrainerHeartbeat,
    trainer_health,
)


def _wait_for(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def test_the_heartbeat_refreshes_the_record_until_finished(tmp_path):
    registry = Registry(tmp_path)
    beat = TrainerHeartbeat(tmp_path, interval_s=0.05)
    beat.start("ready", version=3, cursor=7)
    first = registry.trainer_status()
    assert (first["state"], first["version"], first["cursor"]) == ("ready", 3, 7)
    _wait_for(lambda: registry.trainer_status()["heartbeat_at"] > first["heartbeat_at"])
    assert trainer_health(registry.trainer_status())["state"] == "ready"
    beat.finish("stopped", pending=None)
    final = registry.trainer_status()
    assert final["state"] == "stopped" and final["since"] >= first["since"]
    time.sleep(0.2)  # the beat has stopped: nothing rewrites the record any more
    assert registry.trainer_status() == final
    # A final state never reads stale, however old.
    assert trainer_health(final, now=final["heartbeat_at"] + 1e6)["state"] == "stopped"


@pytest.mark.parametrize(
    ("age_beats", "state"),
    [(1, "ready"), (STALE_AFTER_BEATS + 0.5, "stale"), (DEAD_AFTER_BEATS + 0.5, "dead")],
)
def test_a_live_state_without_a_recent_beat_reads_stale_then_dead(age_beats, state):
    record = {"state": "ready", "heartbeat_at": 1000.0, "heartbeat_interval_s": 5.0}
    health = trainer_health(record, now=1000.0 + age_beats * 5.0)
    assert health["state"] == state
    assert health["heartbeat_age_s"] == pytest.approx(age_beats * 5.0)
    assert health.get("reported_state") == (None if state == "ready" else "ready")


def test_status_reports_a_trainer_that_died_while_ready_as_dead(tmp_path):
    """A killed driver (or a full disk) leaves ``ready`` behind; the status view says dead."""
    beat = TrainerHeartbeat(tmp_path, interval_s=5.0)
    beat.update(state="ready", version=None, cursor=4)
    record = json.loads((tmp_path / "TRAINER").read_text())
    record["heartbeat_at"] -= 3600.0  # its last beat, an hour ago
    (tmp_path / "TRAINER").write_text(json.dumps(record))
    status = collect_status(str(tmp_path), None, None)
    assert status.trainer["state"] == "dead" and status.trainer["reported_state"] == "ready"
    assert "trainer dead (no heartbeat; last said ready)" in render_status(status)


def test_a_write_that_fails_is_reported_not_raised(tmp_path, capsys):
    beat = TrainerHeartbeat(tmp_path, interval_s=5.0)

    def full_disk(name, data):
        raise OSError(28, "No space left on device")

    beat.storage.write_atomic = full_disk
    assert beat.update(state="ready") is False
    assert beat.fail(RuntimeError("boom")) is False
    assert "No space left on device" in capsys.readouterr().err
    assert Registry(tmp_path).trainer_status() is None  # the age of the old beat covers it


def test_a_trainer_that_lost_its_lease_stops_writing(tmp_path):
    control = TrainerControl(tmp_path)
    epoch = control.claim()
    beat = TrainerHeartbeat(tmp_path, interval_s=5.0)
    beat.guard(lambda: control.holder() == epoch)
    assert beat.update(state="ready", cursor=1)
    newer = TrainerHeartbeat(tmp_path, interval_s=5.0)
    control.claim()  # a newer trainer took the registry
    newer.update(state="starting")
    assert beat.update(state="ready", cursor=2) is False
    assert beat.finish("stopped") is False
    assert Registry(tmp_path).trainer_status()["state"] == "starting"


def test_the_worker_loop_writes_failed_with_the_reason(tmp_path, monkeypatch):
    import ray.train

    config = TrainConfig(landing=str(tmp_path / "l"), registry=str(tmp_path / "r"))
    monkeypatch.setattr(
        ray.train, "get_context", lambda: types.SimpleNamespace(get_world_rank=lambda: 0)
    )

    def dies(config, beat):
        beat.update(state="ready", cursor=5)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(train, "_consume_windows", dies)
    with pytest.raises(OSError, match="No space left"):
        train._train_loop({"config": config})
    status = Registry(config.registry).trainer_status()
    assert status["state"] == "failed" and status["cursor"] == 5
    assert status["reason"] == "OSError: [Errno 28] No space left on device"
    assert "failed (OSError" in render_status(collect_status(config.registry, None, None))


def test_the_driver_writes_failed_when_fit_raises(tmp_path, monkeypatch):
    import ray.train.torch

    class FailingTrainer:
        def __init__(self, *args, **kwargs):
            pass

        def fit(self):
            raise RuntimeError("worker group died: max_failures exhausted")

    monkeypatch.setattr(ray.train.torch, "TorchTrainer", FailingTrainer)
    config = TrainConfig(landing=str(tmp_path / "l"), registry=str(tmp_path / "r"))
    with pytest.raises(RuntimeError, match="max_failures"):
        train.run_training(config)
    status = Registry(config.registry).trainer_status()
    assert status["state"] == "failed" and "max_failures exhausted" in status["reason"]
