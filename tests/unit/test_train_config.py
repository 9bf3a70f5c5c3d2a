"""The trainer's typed config: strategies, promotion modes and retention, checked up front."""

from __future__ import annotations

import dataclasses
import re

import pytest

from freshrank.apps.cli import attribute_docs
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


def test_placement_and_worker_resources_are_checked_and_kept_as_floats():
    cfg = TrainConfig("l", "r", placement_strategy="STRICT_SPREAD", resources_per_worker={"CPU": 1})
    assert cfg.placement_strategy == "STRICT_SPREAD"
    assert cfg.resources_per_worker == {"CPU": 1.0}
    assert isinstance(cfg.resources_per_worker["CPU"], float)
    assert TrainConfig("l", "r").placement_strategy == "PACK"
    assert TrainConfig("l", "r").resources_per_worker is None
    source = {"CPU": 1, "train_slot": 0.5}
    kept = TrainConfig("l", "r", resources_per_worker=source).resources_per_worker
    source["CPU"] = 8  # the config holds its own copy
    assert kept == {"CPU": 1.0, "train_slot": 0.5}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"placement_strategy": "spread"}, "placement_strategy must be one of PACK, SPREAD"),
        ({"resources_per_worker": {}}, "resources_per_worker must be a non-empty mapping"),
        ({"resources_per_worker": [("CPU", 1)]}, "resources_per_worker must be a non-empty"),
        ({"resources_per_worker": {"CPU": -1}}, r"resources_per_worker\['CPU'\] must be finite"),
        ({"resources_per_worker": {"CPU": float("nan")}}, "must be finite and >= 0"),
        ({"resources_per_worker": {"CPU": "1"}}, r"resources_per_worker\['CPU'\] must be a num"),
        ({"resources_per_worker": {"CPU": True}}, "must be a number"),
        ({"resources_per_worker": {1: 1.0}}, "resources_per_worker names must be strings"),
        ({"resources_per_worker": {"GPU": 1}}, "asks for a GPU but use_gpu is False"),
    ],
)
def test_bad_placement_options_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig("l", "r", **kwargs)


def test_the_ray_scaling_config_gets_the_placement(monkeypatch, tmp_path):
    """run_training hands placement and resources to Ray Train's ScalingConfig (the v2 one)."""
    import ray.train
    import ray.train.torch

    import freshrank.learn.train as train

    seen = {}

    class Stop(Exception):
        pass

    def fake_trainer(*_args, scaling_config, **_kw):
        seen["scaling"] = scaling_config
        raise Stop

    monkeypatch.setattr(ray.train.torch, "TorchTrainer", fake_trainer)
    config = TrainConfig(
        str(tmp_path / "l"),
        str(tmp_path / "r"),
        placement_strategy="STRICT_SPREAD",
        resources_per_worker={"CPU": 1, "train_slot": 1},
    )
    with pytest.raises(Stop):
        train.run_training(config)
    scaling = seen["scaling"]
    from ray.train.v2.api.config import ScalingConfig as V2ScalingConfig

    assert isinstance(scaling, ray.train.ScalingConfig)
    assert isinstance(scaling, V2ScalingConfig)  # Ray Train v2 is on in Ray 2.60
    assert scaling.placement_strategy == "STRICT_SPREAD"
    assert scaling.resources_per_worker == {"CPU": 1.0, "train_slot": 1.0}
    assert scaling.num_workers == 2
    with pytest.raises(Stop):
        train.run_training(TrainConfig(str(tmp_path / "l"), str(tmp_path / "r")))
    assert seen["scaling"].placement_strategy == "PACK"
    assert seen["scaling"].resources_per_worker is None


def test_the_default_strategy_is_what_the_selection_chose():
    """bench/RESULTS.md, issue 16: LwF with weight 0.5 is the configuration that beat
    fine-tuning on DIGINETICA and held on the simulator; the help says where the logs differ."""
    parsed = TrainConfig("l", "r").strategy_config()
    assert parsed == LwFConfig(alpha=0.5)
    doc = attribute_docs(TrainConfig)["strategy"]
    assert "freshrank backtest --select" in doc and "exemplar-replay+lwf" in doc
