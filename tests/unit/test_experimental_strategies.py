"""What the experimental strategies in bench/experimental_strategies.py do (the variants tried on
DIGINETICA, issue 3), how they register, and that the knobs tune arms exactly as the backtest's
former per-type code did. The contract suite covers them too (test_strategy_contract.py)."""

from __future__ import annotations

import copy
import dataclasses

import experimental_strategies
import numpy as np
import pytest
import torch
from _tiny import FEATURES, MODEL, _model, _one_thread, _rows, _val  # noqa: F401 (fixture)
from experimental_strategies import (
    Anchor,
    AnchorConfig,
    AverageConfig,
    DarkReplay,
    DarkReplayConfig,
    ExemplarDistill,
    ExemplarDistillConfig,
    ExperimentalKind,
    PairDistill,
    PairDistillConfig,
    ShrinkConfig,
    ShrinkPerturb,
    WeightAverage,
)

from freshrank.learn.config import TrainConfig
from freshrank.learn.step import score_rows, train_step
from freshrank.learn.strategies import (
    CombinedConfig,
    EWCConfig,
    ExemplarReplayConfig,
    LwFConfig,
    Replay,
    ReplayConfig,
    StrategyConfig,
    StrategyKind,
    StrategyKnobs,
    apply_knobs,
    library_registry,
)
from freshrank.model.device import to_tensors
from freshrank.model.ranker import Ranker

CPU = torch.device("cpu")
REGISTRY = experimental_strategies.register(library_registry())
"""The library's kinds and the six experimental ones (the default registry is left alone)."""


def _nudge(model: Ranker, scale: float = 0.05) -> Ranker:
    moved = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return moved


def test_dark_replay_records_the_model_probability_as_the_target():
    model, rows = _model(), _rows()
    probs = 1 / (1 + np.exp(-score_rows(model, rows, CPU)))
    soft = DarkReplay(DarkReplayConfig(capacity=10_000, mix_ratio=1.0, hard_weight=0.0))
    soft.after_window(model, rows)
    held = soft.buffer.rows()
    np.testing.assert_allclose(held["label"], probs, rtol=1e-5)
    np.testing.assert_array_equal(held["item"], rows["item"])  # everything else as it came
    assert soft.rows_scored == len(rows["label"])
    assert len(soft.replay_rows(8)["label"]) == 8
    mixed = DarkReplay(DarkReplayConfig(capacity=10_000, hard_weight=0.25))
    mixed.after_window(model, rows)
    np.testing.assert_allclose(
        mixed.buffer.rows()["label"], 0.25 * rows["label"] + 0.75 * probs, rtol=1e-5
    )
    assert isinstance(mixed, Replay) and mixed.kind is ExperimentalKind.DARK_REPLAY


def _two_steps(strategy, lr: float = 0.1):
    """Train two SGD steps; return the start weights and the weights after each step."""
    model, rows = _model(), _rows()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    batch = to_tensors(rows, CPU)
    seen = [copy.deepcopy(model.state_dict())]
    strategy.before_window(model, rows)
    for _ in range(2):
        train_step(model, optimizer, batch, strategy)
        seen.append(copy.deepcopy(model.state_dict()))
    strategy.after_window(model, rows)
    return model, seen


def test_weight_average_leaves_the_ema_of_the_steps_and_interpolates_from_the_start():
    model, (start, first, last) = _two_steps(WeightAverage(AverageConfig(decay=0.75)))
    key = "over.mlp.0.weight"
    assert not torch.equal(first[key], last[key])
    torch.testing.assert_close(model.state_dict()[key], 0.75 * first[key] + 0.25 * last[key])
    model, (start, first, last) = _two_steps(WeightAverage(AverageConfig(decay=0.0, keep=0.5)))
    torch.testing.assert_close(model.state_dict()[key], 0.5 * start[key] + 0.5 * last[key])
    model, (_, _, last) = _two_steps(WeightAverage(AverageConfig(decay=0.0)))
    torch.testing.assert_close(model.state_dict()[key], last[key])  # no averaging: fine-tune


def test_anchor_pulls_only_the_named_parameters_and_never_to_the_initialisation():
    model, rows = _model(), _rows()
    batch = to_tensors(rows, CPU)
    anchor = Anchor(AnchorConfig(lam=2.0, prefixes=("over.",)))
    anchor.before_window(model, rows)  # first window: trains freely
    moved = _nudge(model)
    assert _val(anchor.penalty(batch, moved(batch), moved)) == 0.0
    anchor.after_window(model, rows)
    anchor.before_window(model, rows)
    assert _val(anchor.penalty(batch, model(batch), model)) == 0.0
    expected = sum(
        ((p - q) ** 2).sum()
        for (k, p), q in zip(moved.named_parameters(), model.parameters(), strict=True)
        if k.startswith("over.")
    )
    assert _val(anchor.penalty(batch, moved(batch), moved)) == pytest.approx(_val(expected))
    assert anchor.state_dict()["meta/windows"] == 1


def test_shrink_scales_the_weights_before_every_window_but_the_first():
    model, rows = _model(), _rows()
    before = copy.deepcopy(model.state_dict())
    shrink = ShrinkPerturb(ShrinkConfig(shrink=0.5, prefixes=("sparse.",)))
    shrink.before_window(model, rows)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    shrink.after_window(model, rows)
    shrink.before_window(model, rows)
    after = model.state_dict()
    torch.testing.assert_close(after["sparse.query.weight"], 0.5 * before["sparse.query.weight"])
    assert torch.equal(after["over.mlp.0.weight"], before["over.mlp.0.weight"])


def test_pair_distill_pairs_one_rows_context_with_another_rows_item_at_the_teachers_odds():
    model, rows = _model(), _rows()
    pairs = PairDistill(PairDistillConfig(mix_ratio=0.5, seed=3))
    pairs.before_window(model, rows)
    assert pairs.replay_rows(10) == {}  # nothing learned yet: no teacher
    pairs.after_window(model, rows)
    pairs.before_window(model, rows)
    out = pairs.replay_rows(40)
    assert len(out["label"]) == 20 and pairs.rows_scored == 20
    items = {(int(i), int(c)) for i, c in zip(rows["item"], rows["category"], strict=True)}
    assert {(int(i), int(c)) for i, c in zip(out["item"], out["category"], strict=True)} <= items
    contexts = {(int(u), tuple(q)) for u, q in zip(rows["user"], rows["query"], strict=True)}
    got = {(int(u), tuple(q)) for u, q in zip(out["user"], out["query"], strict=True)}
    assert got <= contexts
    teacher = 1 / (1 + np.exp(-score_rows(model, {**out, "label": out["label"] * 0}, CPU)))
    np.testing.assert_allclose(out["label"], teacher, rtol=1e-5)


def test_exemplar_distill_distils_the_replayed_exemplars_only():
    rows = _rows(seed=3, requests=40)
    model = _model()
    strategy = ExemplarDistill(ExemplarDistillConfig(alpha=2.0, mix_ratio=1.0, capacity=500))
    strategy.before_window(model, rows)
    assert strategy._teacher is None  # nothing learned yet: nothing to keep
    strategy.after_window(model, rows)
    assert len(strategy.buffer) == int((rows["label"] > 0.5).sum())
    strategy.before_window(model, rows)
    new = {k: v[:32] for k, v in rows.items()}
    old = strategy.replay_rows(32)
    n_old = len(old["label"])
    assert n_old > 0 and strategy._replayed == n_old
    batch = to_tensors({k: np.concatenate([new[k], old[k]]) for k in new}, CPU)
    moved = _nudge(model)
    outputs = moved(batch)
    penalty = strategy.penalty(batch, outputs, moved)
    assert float(penalty.detach()) > 0
    # the new rows' outputs do not enter the penalty: change them and it stays the same
    changed = outputs.detach().clone()
    changed[:32] += 5.0
    assert float(strategy.penalty(batch, changed, moved)) == pytest.approx(float(penalty))
    # at the teacher's own outputs there is nothing to distil
    assert float(strategy.penalty(batch, model(batch).detach(), model)) == pytest.approx(
        0, abs=1e-6
    )
    strategy.after_window(model, rows)
    assert strategy._teacher is None and strategy._replayed == 0


def test_registering_adds_the_six_names_once_and_they_parse_and_nest():
    assert REGISTRY.kinds() == set(StrategyKind) | set(ExperimentalKind)
    assert experimental_strategies.register(REGISTRY) is REGISTRY  # again: a no-op
    assert isinstance(REGISTRY.parse("dark-replay"), DarkReplayConfig)
    combined = REGISTRY.parse("lwf+dark-replay")
    assert [type(p) for p in combined.parts] == [LwFConfig, DarkReplayConfig]
    for name in ("average", "anchor", "shrink", "pair-distill", "exemplar-distill"):
        built = REGISTRY.build(REGISTRY.parse(name))
        assert built.kind.value == name.replace("-", "_")
    assert set(REGISTRY.build(combined).state_dict()) >= {"0.lwf/meta/windows"}
    with pytest.raises(ValueError, match="at most one part may be a ReplayConfig"):
        CombinedConfig((ReplayConfig(), DarkReplayConfig()))
    with pytest.raises(ValueError, match="decay must be in"):
        AverageConfig(decay=1.0)
    with pytest.raises(ValueError, match="unknown strategy 'average'"):
        library_registry().parse("average")


@pytest.mark.parametrize("strategy", ["shrink", "average", "replay+average"])
def test_strategies_that_move_weights_outside_the_optimizer_are_refused_by_the_trainer(strategy):
    experimental_strategies.register()  # into the default registry, which TrainConfig parses with
    with pytest.raises(ValueError, match="for backtests only"):
        TrainConfig("l", "r", strategy=strategy)
    assert TrainConfig("l", "r", strategy="anchor+lwf").strategy_config().parts[0] == (
        AnchorConfig()
    )


def _former_tuned(part, replay, ewc, lwf, others):
    """``arms_from_names``' per-type tuning before the knobs (learn/backtest.py, ``tuned``)."""
    by_type = {type(c): c for c in others}
    if isinstance(part, ReplayConfig):
        own = by_type.get(type(part), part)
        shared = {f.name: getattr(replay, f.name) for f in dataclasses.fields(ReplayConfig)}
        extra = {
            f.name: getattr(own, f.name) for f in dataclasses.fields(own) if f.name not in shared
        }
        return type(part)(**{**shared, "buffer": part.buffer}, **extra)
    if isinstance(part, EWCConfig):
        return dataclasses.replace(ewc, mode=part.mode)
    if isinstance(part, LwFConfig):
        return lwf
    return by_type.get(type(part), part)


@pytest.mark.parametrize(
    "name",
    [
        "finetune", "replay", "replay-balanced", "dark-replay", "exemplar-replay", "ewc",
        "ewc-separate", "lwf", "replay+lwf", "exemplar-replay+lwf", "lwf+dark-replay",
        "average", "anchor", "shrink", "pair-distill", "lwf+average", "replay-balanced+ewc",
    ],
)  # fmt: skip
def test_knobs_tune_arms_exactly_as_the_former_per_type_code(name):
    replay = ReplayConfig(capacity=77, mix_ratio=0.3, positive_fraction=0.4, seed=5)
    ewc = EWCConfig(lam=3.0, decay=0.7, fisher_rows=99, fisher_batch_size=11, seed=2)
    lwf = LwFConfig(alpha=0.25, temperature=1.5)
    others = (
        DarkReplayConfig(hard_weight=0.5, capacity=3),
        ExemplarReplayConfig(negatives=5, seed=9),
        AverageConfig(decay=0.3, keep=0.9),
        AnchorConfig(lam=2.0),
        ShrinkConfig(shrink=0.8, noise=0.01),
        PairDistillConfig(mix_ratio=0.2),
    )
    parsed = REGISTRY.parse(name)
    knobs = StrategyKnobs.from_configs(replay, ewc, lwf, overrides=others)
    got = apply_knobs(parsed, knobs)
    if isinstance(parsed, CombinedConfig):
        want: StrategyConfig = CombinedConfig(
            tuple(_former_tuned(p, replay, ewc, lwf, others) for p in parsed.parts)
        )
    else:
        want = _former_tuned(parsed, replay, ewc, lwf, others)
    assert got == want and type(got) is type(want)
