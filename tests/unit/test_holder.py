import threading
import time

import pytest

from freshrank.serving.holder import ModelHolder


class FakeServed:
    def __init__(self, version):
        self.version = version
        self.watermark = None


def _wait(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def test_follows_target_and_swaps_one_reference():
    target = {"v": None}
    holder = ModelHolder(loader=FakeServed, target=lambda: target["v"])
    assert holder.refresh() is False and holder.current() is None
    target["v"] = 1
    assert holder.refresh() is True
    first = holder.current()
    target["v"] = 2
    holder.refresh()
    assert first.served.version == 1  # a request holding the old reference keeps its model
    assert holder.current().served.version == 2 and holder.swaps == 2


def test_failed_load_keeps_old_model_and_is_not_retried_within_its_back_off():
    calls = []

    def loader(v):
        calls.append(v)
        if v == 2:
            raise ValueError("checksum mismatch")
        return FakeServed(v)

    target = {"v": 1}
    holder = ModelHolder(loader=loader, target=lambda: target["v"])
    holder.refresh()
    target["v"] = 2
    assert holder.refresh() is False and holder.refresh() is False
    assert holder.current().served.version == 1
    assert calls == [1, 2] and "checksum mismatch" in holder.last_error


def test_pin_overrides_target_and_unpin_follows_again():
    holder = ModelHolder(loader=FakeServed, target=lambda: 5)
    holder.refresh()
    holder.pin(3)
    holder.refresh()
    assert holder.current().served.version == 3 and holder.pinned == 3
    holder.pin(None)
    holder.refresh()
    assert holder.current().served.version == 5


def test_background_thread_swaps_while_requests_read():
    target = {"v": 1}
    loading, release = threading.Event(), threading.Event()

    def loader(v):
        if v > 1:
            loading.set()
            assert release.wait(5), "the test never released the load"
        return FakeServed(v)

    holder = ModelHolder(loader=loader, target=lambda: target["v"], poll_interval_s=0.01)
    holder.refresh()
    holder.start()
    try:
        for v in range(2, 6):
            loading.clear()
            target["v"] = v
            assert loading.wait(5), f"version {v} was never loaded"
            # the load is in progress and blocked: requests still read the old model at once
            assert holder.current().served.version == v - 1
            release.set()
            _wait(lambda v=v: holder.current().served.version == v)
            release.clear()
    finally:
        release.set()
        holder.stop()
    assert holder.current().served.version == 5 and holder.swaps == 5


def test_failed_load_reports_through_on_error():
    errors = []

    def loader(v):
        raise OSError("disk gone")

    holder = ModelHolder(
        loader=loader, target=lambda: 3, on_error=lambda v, m: errors.append((v, m))
    )
    assert holder.refresh() is False
    assert errors == [(3, "OSError: disk gone")] and holder.current() is None


def test_target_error_is_recorded_not_raised():
    def boom():
        raise OSError("registry unreachable")

    holder = ModelHolder(loader=FakeServed, target=boom, poll_interval_s=0.01)
    holder.start()
    try:
        _wait(lambda: holder.last_error is not None)
    finally:
        holder.stop()
    assert "registry unreachable" in holder.last_error and holder.current() is None


@pytest.mark.parametrize("version", [None])
def test_no_target_no_model(version):
    holder = ModelHolder(loader=FakeServed, target=lambda: version)
    assert holder.refresh() is False and holder.current() is None
