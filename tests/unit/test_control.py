import pytest

from freshrank.registry.control import FencedOut, TrainerControl


def test_newer_claim_fences_the_older_trainer(tmp_path):
    control = TrainerControl(tmp_path)
    assert control.holder() is None
    first = control.claim()
    control.check(first)
    second = TrainerControl(tmp_path).claim()
    assert second != first and control.holder() == second
    with pytest.raises(FencedOut, match="replaced"):
        control.check(first)
    control.check(second)


def test_stop_request_roundtrip(tmp_path):
    control = TrainerControl(tmp_path)
    assert not control.stop_requested()
    control.request_stop("test")
    assert TrainerControl(tmp_path).stop_requested()
    control.clear_stop()
    assert not control.stop_requested()
    control.clear_stop()  # clearing twice is fine
