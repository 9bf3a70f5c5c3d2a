"""The trainer's typed config: strategies, promotion modes and retention, checked up front."""

from __future__ import annotations

import dataclasses
import re

import pytest

from freshrank.learn.config import TrainConfig
from freshrank.learn.strategies import (
    CombinedConfig,
    LwFConfig,
    ReplayConfig,
    StrategyConfig,
    parse_strategy,
)


def test_replay_parts_take_the_trainer_capacity_ratio_and_seed():
    cfg = TrainConfig(
        "l", "r", strategy="replay+lwf", replay_capacity=123, replay_ratio=0.25, seed=4
    )
    parsed = cfg.strategy_config()
    assert isinstance(parsed, CombinedConfig)
    replay, lwf = parsed.parts
    assert isinstance(replay, ReplayConfig) and isinstance(lwf, LwFConfig)
    assert (replay.capacity, replay.mix_ratio, replay.seed) == (123, 0.25, 4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategy": "sgd"}, "unknown strategy 'sgd'"),
        ({"promotion": "always"}, "promotion must be one of gate, finite, manual"),
        ({"gate_min_rows": 0}, "gate_min_rows must be >= 1"),
        ({"keep_versions": 0}, "keep_versions must be >= 1 or None"),
    ],
)
def test_bad_options_say_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig("l", "r", **kwargs)


@pytest.mark.parametrize(
    "name",
    [
        "finetune",
        "replay",
        "replay-balanced",
        "ewc",
        "lwf",
        "replay+lwf",
        "exemplar-replay",
        "exemplar-replay+lwf",
    ],
)
def test_every_live_strategy_builds(name):
    parsed = TrainConfig("l", "r", strategy=name).strategy_config()
    parts = parsed.parts if isinstance(parsed, CombinedConfig) else (parsed,)
    assert [p.kind.value.replace("_", "-") for p in parts] == [
        {"replay-balanced": "replay"}.get(n, n) for n in name.split("+")
    ]


def test_lwf_alpha_reaches_every_lwf_part():
    parsed = TrainConfig("l", "r", strategy="exemplar-replay+lwf", lwf_alpha=0.25).strategy_config()
    assert [getattr(p, "alpha", None) for p in parsed.parts] == [None, 0.25]
    with pytest.raises(ValueError, match="alpha"):
        TrainConfig("l", "r", strategy="lwf", lwf_alpha=-1.0)


def _former_sized(cfg: TrainConfig, part: StrategyConfig) -> StrategyConfig:
    """``TrainConfig.strategy_config``'s per-type sizing before the knobs."""
    if isinstance(part, LwFConfig):
        return dataclasses.replace(part, alpha=cfg.lwf_alpha)
    if isinstance(part, ReplayConfig):
        return dataclasses.replace(
            part, capacity=cfg.replay_capacity, mix_ratio=cfg.replay_ratio, seed=cfg.seed
        )
    return part


@pytest.mark.parametrize(
    "name", ["finetune", "replay-balanced", "ewc-separate", "lwf", "exemplar-replay+lwf+ewc"]
)
def test_the_knobs_size_strategies_exactly_as_before(name):
    cfg = TrainConfig(
        "l", "r", strategy=name, replay_capacity=11, replay_ratio=0.2, lwf_alpha=0.3, seed=6
    )
    parsed = parse_strategy(name)
    parts = parsed.parts if isinstance(parsed, CombinedConfig) else (parsed,)
    want = tuple(_former_sized(cfg, p) for p in parts)
    got = cfg.strategy_config()
    assert (got.parts if isinstance(got, CombinedConfig) else (got,)) == want


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_rows_per_window", 0, "max_rows_per_window must be >= 1 or None, got 0"),
        ("max_future_skew_s", -1.0, "max_future_skew_s must be >= 0 seconds or None"),
        ("max_past_age_s", float("nan"), "max_past_age_s must be >= 0 seconds or None"),
        ("dedup_horizon_events", -5, "dedup_horizon_events must be >= 0 (0 turns it off)"),
        ("heartbeat_interval_s", 0.0, "heartbeat_interval_s must be > 0 seconds"),
    ],
)
def test_bad_data_bounds_are_checked_with_the_field_named(field, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig("l", "r", **{field: value})
    assert TrainConfig("l", "r", max_rows_per_window=None, max_future_skew_s=None)
