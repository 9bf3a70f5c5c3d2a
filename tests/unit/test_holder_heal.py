"""A replica serves the newest version that verifies, says why, and heals (issue 17, fault 1):
fake loaders and clocks first, then a real registry whose champion has 16 bytes flipped."""

import os
import threading
import time

import pytest
from _tiny import _publish as publish_tiny

from freshrank.core.telemetry import Telemetry
from freshrank.registry import Registry
from freshrank.registry.checkpoint import (
    load_serving_model,
    serving_fallbacks,
    version_fingerprint,
)
from freshrank.registry.layout import MODEL_FILE, version_dir
from freshrank.serving.app import check_serving, health, model_status
from freshrank.serving.holder import ModelHolder
from freshrank.serving.observe import ReplicaObserver


class FakeServed:
    def __init__(self, version):
        self.version = version
        self.watermark = None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Disk:
    """Versions whose "files" can be broken and mended: the loader fails on broken ones and the
    fingerprint changes whenever a version's files are touched."""

    def __init__(self, broken=()):
        self.broken = set(broken)
        self.touched: dict[int, int] = {}
        self.loads: list[int] = []

    def load(self, version):
        self.loads.append(version)
        if version in self.broken:
            raise ValueError(f"version {version}: model.pt fails its sha256 check")
        return FakeServed(version)

    def fingerprint(self, version):
        return self.touched.get(version, 0)

    def mend(self, version):
        self.broken.discard(version)
        self.touched[version] = self.touched.get(version, 0) + 1


def _holder(disk, champion=12, history=(12, 11, 10), clock=None, **kw):
    state = {"champion": champion}
    holder = ModelHolder(
        loader=disk.load,
        target=lambda: (state["champion"], "champion") if state["champion"] else None,
        fallbacks=lambda: list(history),
        fingerprint=disk.fingerprint,
        clock=clock or Clock(),
        **kw,
    )
    return holder, state


def test_a_champion_that_fails_falls_back_to_the_newest_earlier_one_that_loads():
    disk = Disk(broken={12, 11})
    holder, _ = _holder(disk)
    assert holder.refresh() is True
    status = holder.status()
    assert holder.current().served.version == 10 and disk.loads == [12, 11, 10]
    assert status.fallback and status.wanted == 12 and status.role == "champion"
    assert status.reason.startswith("fallback: champion v12 failed to load (ValueError: version")
    assert status.reason.endswith("; serving v10")
    assert [f.version for f in status.failures] == [12, 11]
    assert holder.unserved_for() == 0.0 and health(holder).ok
    report = model_status(holder, "r1", None)
    assert report.model_version == 10 and report.target_version == 12 and report.fallback
    assert [f.version for f in report.failed_versions] == [12, 11]
    assert report.failed_versions[0].retry_in_s == pytest.approx(30.0)


def test_a_failed_version_is_retried_after_a_doubling_back_off_only():
    clock = Clock()
    disk = Disk(broken={12})
    holder, _ = _holder(disk, clock=clock, retry_backoff_s=30, retry_backoff_max_s=50)
    holder.refresh()
    assert disk.loads == [12, 11]
    for _ in range(5):  # polls inside the back-off: no load at all, the fallback stays
        clock.now += 5
        assert holder.refresh() is False
    assert disk.loads == [12, 11] and holder.current().served.version == 11
    clock.now += 5.1  # 30 s after the failure
    holder.refresh()
    assert disk.loads == [12, 11, 12]
    assert holder.status().failures[0].attempts == 2
    assert holder.retry_in_s(holder.status().failures[0]) == pytest.approx(50.0)  # 60, capped
    clock.now += 50.1
    disk.broken.clear()  # fixed without touching the files the fingerprint sees: the back-off
    assert holder.refresh() is True
    assert holder.current().served.version == 12 and not holder.status().fallback
    assert holder.status().reason == "champion" and holder.status().failures == ()


def test_a_failed_version_whose_files_change_is_retried_at_once():
    disk = Disk(broken={12})
    holder, _ = _holder(disk)
    holder.refresh()
    holder.refresh()
    assert disk.loads == [12, 11]
    disk.mend(12)
    assert holder.refresh() is True
    assert disk.loads == [12, 11, 12] and holder.current().served.version == 12


def test_the_live_model_is_never_dropped_for_a_worse_one():
    disk = Disk()
    holder, state = _holder(disk, history=(12, 11))
    holder.refresh()
    assert holder.current().served.version == 12
    disk.broken.add(13)
    state["champion"] = 13  # a new champion that does not verify
    assert holder.refresh() is False
    assert disk.loads == [12, 13]  # v12 is live: nothing older is tried
    status = holder.status()
    assert status.version == 12 and status.fallback
    assert status.reason.startswith("fallback: champion v13 failed to load")


def test_nothing_that_loads_is_unhealthy_until_something_does():
    clock = Clock()
    disk = Disk(broken={12, 11, 10})
    holder, _ = _holder(disk, clock=clock)
    assert holder.refresh() is False and holder.current() is None
    assert holder.status().reason.startswith("no model: champion v12 failed to load")
    clock.now += 12.5
    assert holder.unserved_for() == pytest.approx(12.5)
    body = health(holder)
    assert not body.ok and body.model_version is None and "v12" in body.serving_reason
    disk.mend(11)
    assert holder.refresh() is True and holder.current().served.version == 11
    assert holder.unserved_for() == 0.0 and health(holder).ok


def test_serves_health_check_fails_only_after_the_grace():
    clock = Clock()
    disk = Disk(broken={12, 11, 10})
    holder, _ = _holder(disk, clock=clock)
    holder.refresh()
    check_serving(holder, unhealthy_after_s=10)  # Serve's first check, right after __init__
    clock.now += 10
    with pytest.raises(RuntimeError, match="no model loaded for 10 s: no model: champion v12"):
        check_serving(holder, unhealthy_after_s=10)
    disk.mend(10)
    holder.refresh()
    check_serving(holder, unhealthy_after_s=10)


def test_before_any_promotion_the_replica_is_healthy_without_a_model():
    holder, _ = _holder(Disk(), champion=None)
    assert holder.refresh() is False
    assert health(holder).ok and holder.unserved_for() == 0.0
    assert holder.status().reason == "nothing promoted yet" and not holder.status().fallback


def test_fallbacks_are_read_only_when_needed_and_at_most_every_few_seconds():
    clock = Clock()
    reads = []

    def fallbacks():
        reads.append(clock.now)
        return [11, 10]

    disk = Disk()
    holder = ModelHolder(
        loader=disk.load,
        target=lambda: (12, "champion"),
        fallbacks=fallbacks,
        clock=clock,
        fallback_refresh_s=5.0,
    )
    holder.refresh()
    assert reads == []  # the champion loaded: the log was never read
    disk.broken.add(13)
    holder._target = lambda: (13, "champion")
    for _ in range(10):
        holder.refresh()
        clock.now += 1
    assert len(reads) == 2  # at 1000 and once 5 s later


def test_pinning_a_version_that_fails_falls_back_to_the_champion_chain():
    disk = Disk(broken={3})
    holder, _ = _holder(disk)
    holder.pin(3)
    holder.refresh()
    status = holder.status()
    assert status.role == "pinned" and status.version == 12
    assert status.reason.startswith("fallback: pinned v3 failed to load")


def test_the_fallback_gauge_follows_the_status():
    class Recorder:
        from freshrank.core.catalogue import TelemetryBackend

        backend = TelemetryBackend.NULL

        def __init__(self):
            self.sets = []

        def set(self, spec, value, tags):
            self.sets.append((spec.name, value, dict(tags)))

    recorder = Recorder()
    observer = ReplicaObserver(Registry("/nonexistent-registry"), Telemetry(recorder), "r7")
    disk = Disk(broken={12})
    holder, _ = _holder(disk)
    holder.refresh()
    observer.serving(holder.status())
    disk.mend(12)
    holder.refresh()
    observer.serving(holder.status())
    assert recorder.sets == [
        ("freshrank_serving_fallback", 1.0, {"replica": "r7"}),
        ("freshrank_serving_fallback", 0.0, {"replica": "r7"}),
    ]


# ----- a real registry -------------------------------------------------------------------------


def _publish(reg, seed):
    return publish_tiny(reg, seed, embedding_dim=4)


def _until(cond, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    done = threading.Event()
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        done.wait(0.01)


def test_a_corrupt_champion_is_served_around_and_swapped_back_once_restored(tmp_path):
    reg = Registry(tmp_path / "registry")
    for seed in (1, 2, 3, 4):
        _publish(reg, seed)
    reg.set_champion(1)
    reg.set_champion(2)
    reg.set_champion(3)
    reg.log_event("rejected", to_version=4, from_version=3, reason="worse")  # never champion
    model = reg.root / version_dir(3) / MODEL_FILE
    good = model.read_bytes()
    bad = bytearray(good)
    bad[200:216] = bytes(b ^ 0xFF for b in bad[200:216])  # 16 bytes flipped, same size
    model.write_bytes(bytes(bad))
    assert serving_fallbacks(reg) == [3, 2, 1]  # v4 was rejected: never a fallback

    def target():
        champion = reg.champion_version()
        return (champion, "champion") if champion is not None else None

    holder = ModelHolder(
        loader=lambda v: load_serving_model(reg, v),
        target=target,
        poll_interval_s=0.01,
        fallbacks=lambda: serving_fallbacks(reg),
        fingerprint=lambda v: version_fingerprint(reg, v),
        retry_backoff_s=3600,  # only the restored files can bring v3 back within the test
        retry_backoff_max_s=3600,
    )
    holder.refresh()  # what a fresh replica does in its constructor
    status = holder.status()
    assert holder.current().served.version == 2 and status.fallback
    assert "champion v3 failed to load (CorruptVersion: version 3: model.pt fails its sha256" in (
        status.reason
    )
    assert health(holder).ok
    holder.start()
    try:
        model.write_bytes(good)  # the operator restores the file
        _until(lambda: holder.current().served.version == 3)
    finally:
        holder.stop()
    assert holder.status().reason == "champion" and not holder.status().fallback
    assert holder.swaps == 2


def test_the_fingerprint_sees_a_rewrite_of_the_same_size_and_a_replacement(tmp_path):
    reg = Registry(tmp_path / "registry")
    version = _publish(reg, 1)
    assert version_fingerprint(reg, 99) == ()
    before = version_fingerprint(reg, version)
    assert {entry[0] for entry in before} >= {MODEL_FILE, "manifest.json"}
    path = reg.root / version_dir(version) / MODEL_FILE
    data = path.read_bytes()
    path.write_bytes(data)  # same bytes, same size
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a later write
    assert version_fingerprint(reg, version) != before
    again = version_fingerprint(reg, version)
    spare = path.with_name("spare")
    spare.write_bytes(data)
    os.utime(spare, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # even the same mtime
    os.replace(spare, path)  # restored by rename: another inode
    assert version_fingerprint(reg, version) != again
