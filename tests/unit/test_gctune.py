"""Serving processes freeze what they hold and raise the collector's young threshold."""

import gc

import pytest
from pydantic import ValidationError

from freshrank.serving.app import RankingAppConfig
from freshrank.serving.gctune import DEFAULT_GEN0_THRESHOLD, restore_gc, tune_gc


def test_tune_freezes_raises_and_restores():
    before = gc.get_threshold()
    state = tune_gc(12_345)
    try:
        assert gc.get_threshold() == (12_345, *before[1:]) == state.thresholds
        assert state.previous_thresholds == before
        # the interpreter, pytest, pydantic; a frozen object freed since (by a thread that a
        # previous test left, say) leaves the permanent generation, so the count may only drop
        frozen_now = gc.get_freeze_count()
        assert state.frozen > 1000 and 0 <= state.frozen - frozen_now < 100
        # a request's worth of short-lived containers no longer triggers a collection
        collections = gc.get_stats()[0]["collections"]
        junk = [{"item_id": str(i), "score": float(i)} for i in range(5000)]
        assert gc.get_stats()[0]["collections"] == collections
        del junk
    finally:
        restore_gc(state)
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_cycles_made_after_tuning_are_still_collected():
    state = tune_gc(100)
    try:

        class Node:
            pass

        for _ in range(2000):  # garbage cycles: only the collector frees them
            a, b = Node(), Node()
            a.other, b.other = b, a
        del a, b
        gc.collect()
        assert not [o for o in gc.get_objects() if type(o).__name__ == "Node"]
    finally:
        restore_gc(state)


def test_threshold_must_be_positive_and_is_configurable():
    with pytest.raises(ValueError, match="gen0_threshold must be >= 1"):
        tune_gc(0)
    assert RankingAppConfig(registry="r").gc_gen0_threshold == DEFAULT_GEN0_THRESHOLD
    assert RankingAppConfig(registry="r", gc_gen0_threshold=None).gc_gen0_threshold is None
    with pytest.raises(ValidationError):
        RankingAppConfig(registry="r", gc_gen0_threshold=0)
