"""What each strategy, the click-balanced buffer and the shared training step do (beyond the
contract suite in test_strategy_contract.py)."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
from _tiny import FEATURES, MODEL, _model, _one_thread, _rows, _val  # noqa: F401 (fixture)

from freshrank.features.encode import CANDIDATE_KEYS
from freshrank.learn.buffers import ClickBalancedBuffer, ReplayBuffer
from freshrank.learn.replay import ReservoirBuffer
from freshrank.learn.step import score_rows, train_step, train_window
from freshrank.learn.strategies import (
    EWC,
    BufferKind,
    CombinedConfig,
    EWCConfig,
    EWCMode,
    ExemplarReplay,
    ExemplarReplayConfig,
    FineTune,
    FineTuneConfig,
    LwF,
    LwFConfig,
    Replay,
    ReplayConfig,
    Strategy,
    StrategyConfig,
    StrategyEntry,
    StrategyKind,
    StrategyKnobs,
    apply_knobs,
    bernoulli_kl,
    build_strategy,
    default_registry,
    library_registry,
    parse_strategy,
    reshard_state,
)
from freshrank.learn.strategies.base import derive_seed
from freshrank.model.device import to_tensors
from freshrank.model.ranker import Ranker

CPU = torch.device("cpu")


def _labels(labels: list[int]) -> dict[str, np.ndarray]:
    arr = np.array(labels, dtype=np.float32)
    return {"label": arr, "item": np.arange(len(arr), dtype=np.int64)}


def _nudge(model: Ranker, scale: float = 0.05) -> Ranker:
    moved = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return moved


# ------------------------------------------------------------------------------ click-balanced


def test_click_balanced_keeps_each_class_in_its_own_reservoir():
    buf = ClickBalancedBuffer(capacity=100, positive_fraction=0.3, seed=0)
    labels = np.zeros(5000, dtype=int)
    labels[::50] = 1  # 2% clicks: 100 positives
    buf.add(_labels(labels.tolist()))
    held = buf.rows()["label"]
    assert len(buf) == 100 and buf.seen == 5000
    assert int(held.sum()) == 30  # 30 slots for clicks, all filled
    sample = buf.sample(1000)["label"]
    assert sample.mean() == pytest.approx(0.3)
    assert isinstance(buf, ReplayBuffer) and isinstance(ReservoirBuffer(1), ReplayBuffer)


def test_click_balanced_samples_one_class_when_the_other_is_empty():
    buf = ClickBalancedBuffer(capacity=10, positive_fraction=0.5, seed=0)
    buf.add(_labels([0, 0, 0, 0]))
    assert buf.sample(6)["label"].tolist() == [0.0] * 6
    assert buf.sample(0) == {} and ClickBalancedBuffer(10).sample(3) == {}


def test_click_balanced_loads_a_reservoir_state_and_needs_labels():
    res = ReservoirBuffer(20, seed=0)
    res.add(_labels([1, 0, 0, 1, 0, 0, 0, 0]))
    buf = ClickBalancedBuffer(capacity=20, positive_fraction=0.5, seed=0)
    buf.load_state_dict(res.state_dict())
    assert len(buf) == 8 and int(buf.rows()["label"].sum()) == 2
    with pytest.raises(ValueError, match="label"):
        buf.add({"item": np.arange(3)})
    with pytest.raises(ValueError, match="positive_fraction"):
        ClickBalancedBuffer(10, positive_fraction=1.5)


# ---------------------------------------------------------------------------------- replay


def test_replay_mixes_the_configured_ratio_after_the_first_window():
    strategy = Replay(ReplayConfig(capacity=50, mix_ratio=0.5))
    assert strategy.replay_rows(100) == {}  # nothing remembered yet
    model = _model()
    strategy.after_window(model, _rows())
    rows = strategy.replay_rows(100)
    assert len(rows["label"]) == 50 and len(strategy.buffer) == 50
    balanced = Replay(ReplayConfig(capacity=50, buffer=BufferKind.CLICK_BALANCED, mix_ratio=1))
    balanced.after_window(model, _rows())
    assert balanced.replay_rows(40)["label"].mean() == pytest.approx(0.5)


def test_train_window_counts_new_and_replayed_rows():
    strategy = Replay(ReplayConfig(capacity=1000, mix_ratio=0.5))
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    rows = _rows()  # 200 rows
    rng = np.random.default_rng(0)
    first = train_window(model, opt, rows, strategy, batch_size=64, rng=rng, device=CPU)
    assert (first.new_rows, first.replay_rows, first.steps) == (200, 0, 4)
    second = train_window(model, opt, rows, strategy, batch_size=64, rng=rng, device=CPU)
    assert second.new_rows == 200 and second.replay_rows == 32 + 32 + 32 + 4  # round(n * 0.5)
    assert np.isfinite(second.mean_loss)


# ------------------------------------------------------------------------------------- EWC


def test_ewc_penalty_is_zero_at_the_anchor_and_grows_away_from_it():
    model = _model()
    ewc = EWC(EWCConfig(lam=5.0, fisher_rows=200, fisher_batch_size=20))
    ewc.after_window(model, _rows())
    batch = to_tensors(_rows(1), CPU)
    assert _val(ewc.penalty(batch, model(batch), model)) == pytest.approx(0.0, abs=1e-12)
    near, far = _nudge(model, 0.01), _nudge(model, 0.1)
    p_near = _val(ewc.penalty(batch, near(batch), near))
    p_far = _val(ewc.penalty(batch, far(batch), far))
    assert 0 < p_near < p_far
    assert p_far == pytest.approx(100 * p_near, rel=1e-3)  # quadratic in the distance


def test_ewc_never_penalises_embedding_rows_no_row_used():
    model = _model()
    ewc = EWC(EWCConfig(lam=1.0, fisher_rows=200))
    rows = _rows()
    ewc.after_window(model, rows)
    importance = ewc.state_dict()["importance/sparse.tables.item.weight"]
    used = np.unique(rows["item"])
    unused = np.setdiff1d(np.arange(FEATURES.item_buckets), used)
    assert float(importance[unused].abs().sum()) == 0.0
    assert float(importance[used].sum()) > 0.0


def test_ewc_separate_mode_equals_the_sum_of_per_window_penalties():
    model_1 = _model()
    ewc = EWC(EWCConfig(lam=2.0, mode=EWCMode.SEPARATE, fisher_rows=100, fisher_batch_size=25))
    ewc.after_window(model_1, _rows(0))
    model_2 = _nudge(model_1, 0.05)
    ewc.after_window(model_2, _rows(1))
    # The same Fisher estimates, one window at a time (same seed: same rows drawn).
    one = EWC(EWCConfig(lam=2.0, mode=EWCMode.SEPARATE, fisher_rows=100, fisher_batch_size=25))
    one.after_window(model_1, _rows(0))
    two = EWC(EWCConfig(lam=2.0, mode=EWCMode.SEPARATE, fisher_rows=100, fisher_batch_size=25))
    two._rng = copy.deepcopy(one._rng)
    two.after_window(model_2, _rows(1))
    student = _nudge(model_1, 0.2)
    batch = to_tensors(_rows(2), CPU)
    out = student(batch)
    combined = _val(ewc.penalty(batch, out, student))
    separate = _val(one.penalty(batch, out, student)) + _val(two.penalty(batch, out, student))
    assert combined == pytest.approx(separate, rel=1e-4)


def test_ewc_online_decays_old_importance():
    model = _model()
    rows = _rows()
    ewc = EWC(EWCConfig(decay=0.5, fisher_rows=200, fisher_batch_size=200))
    ewc.after_window(model, rows)
    first = ewc.state_dict()["importance/over.mlp.0.weight"].clone()
    ewc._rng = np.random.default_rng(_seed_of(ewc))  # the same rows again: same Fisher
    ewc.after_window(model, rows)
    second = ewc.state_dict()["importance/over.mlp.0.weight"]
    torch.testing.assert_close(second, 1.5 * first)


def _seed_of(ewc: EWC) -> int:
    return derive_seed(ewc.config.seed, 0)


# ------------------------------------------------------------------------------------- LwF


def test_lwf_starts_after_the_first_window_and_distils_the_previous_model():
    model = _model()
    lwf = LwF(LwFConfig(alpha=1.0, temperature=1.0))
    rows = _rows()
    batch = to_tensors(rows, CPU)
    lwf.before_window(model, rows)  # nothing learned yet: no teacher
    assert _val(lwf.penalty(batch, _nudge(model)(batch), model)) == 0.0
    lwf.after_window(model, rows)
    lwf.before_window(model, rows)  # teacher = the model now
    assert _val(lwf.penalty(batch, model(batch), model)) == pytest.approx(0.0, abs=1e-7)
    student = _nudge(model, 0.3)
    expected = bernoulli_kl(model(batch), student(batch)).mean()
    got = lwf.penalty(batch, student(batch), student)
    assert _val(got) == pytest.approx(_val(expected), rel=1e-5) and _val(got) > 0
    got.backward()  # gradients flow to the student only
    assert all(p.grad is None for p in model.parameters())


def test_lwf_temperature_scales_like_hinton():
    p, q = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 0.5])
    kl_t2 = (bernoulli_kl(p / 2, q / 2) * 4).mean()
    lwf = LwF(LwFConfig(alpha=1.0, temperature=2.0))
    lwf._teacher = lambda batch: p  # a fixed teacher
    got = lwf.penalty({}, q, torch.nn.Identity())
    assert _val(got) == pytest.approx(_val(kl_t2))


# -------------------------------------------------------------------- combined, build, state


def test_combined_sums_penalties_and_replays_from_its_replay_part():
    config = CombinedConfig((ReplayConfig(capacity=100), LwFConfig(), EWCConfig(fisher_rows=50)))
    combined = build_strategy(config)
    assert combined.kind is StrategyKind.COMBINED
    model = _model()
    rows = _rows()
    combined.after_window(model, rows)
    combined.before_window(model, rows)
    student = _nudge(model, 0.1)
    batch = to_tensors(rows, CPU)
    out = student(batch)
    parts = sum(_val(p.penalty(batch, out, student)) for p in combined.parts)
    assert _val(combined.penalty(batch, out, student)) == pytest.approx(parts)
    assert len(combined.replay_rows(10)["label"]) == 5
    keys = combined.state_dict()
    assert any(k.startswith("0.replay/rows/") for k in keys)
    assert "1.lwf/meta/windows" in keys and any(k.startswith("2.ewc/importance/") for k in keys)


def test_configs_explain_what_is_wrong():
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        ReplayConfig(capacity=0)
    with pytest.raises(ValueError, match="buffer must be a BufferKind"):
        ReplayConfig(buffer="reservoir")
    with pytest.raises(ValueError, match="decay must be in"):
        EWCConfig(decay=1.5)
    with pytest.raises(ValueError, match="at least one"):
        CombinedConfig(())
    with pytest.raises(ValueError, match="cannot nest"):
        CombinedConfig((CombinedConfig(),))
    with pytest.raises(TypeError, match="not a strategy config"):
        build_strategy("replay")
    assert isinstance(build_strategy(parse_strategy("finetune")), FineTune)
    assert parse_strategy("ewc-separate").mode is EWCMode.SEPARATE


def test_reshard_state_deals_replay_rows_to_a_new_world():
    parts = []
    for r in range(2):
        s = build_strategy(CombinedConfig((ReplayConfig(capacity=100), LwFConfig())), rank=r)
        s.after_window(_model(), _rows(seed=r, requests=4))  # 20 rows each
        parts.append(s.state_dict())
    mine = [reshard_state(parts, rank, 4) for rank in range(4)]
    sizes = [len(m["0.replay/rows/label"]) for m in mine]
    assert sizes == [10, 10, 10, 10]
    assert all(int(m["1.lwf/meta/windows"]) == 1 for m in mine)
    same = reshard_state(parts, 1, 2)
    np.testing.assert_array_equal(same["0.replay/rows/item"], parts[1]["0.replay/rows/item"])
    fresh = build_strategy(CombinedConfig((ReplayConfig(capacity=100), LwFConfig())))
    fresh.load_state_dict(mine[0])
    assert len(fresh.parts[0].buffer) == 10


# ------------------------------------------------------------------------------------ step


def test_train_step_adds_the_penalty_and_steps():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = to_tensors(_rows(), CPU)
    before = copy.deepcopy(model.state_dict())
    result = train_step(model, opt, batch, FineTune())
    assert result.rows == 200 and result.penalty == 0.0 and result.task_loss_sum > 0
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert "over.mlp.0.weight" in changed


def test_score_rows_is_eval_only_and_batched():
    model = _model()
    rows = _rows()
    whole = score_rows(model, rows, CPU)
    pieces = score_rows(model, rows, CPU, batch_size=7)
    np.testing.assert_allclose(whole, pieces, rtol=1e-6)
    assert model.training and whole.shape == (200,)
    relevance = score_rows(model, rows, CPU, use_position=False)
    assert relevance.shape == (200,)


# ------------------------------------------------------------------------ exemplar replay


def _candidate(rows: dict[str, np.ndarray], i: int) -> tuple:
    return tuple(tuple(np.asarray(rows[k][i]).ravel().tolist()) for k in CANDIDATE_KEYS)


def test_exemplar_replay_pairs_past_clicks_with_candidates_shown_now():
    model, old, now = _model(), _rows(seed=0), _rows(seed=1, requests=60)
    ex = ExemplarReplay(ExemplarReplayConfig(capacity=10_000, mix_ratio=1.0, negatives=2))
    ex.before_window(model, old)
    assert ex.replay_rows(30) == {}  # nothing learned yet
    ex.after_window(model, old)
    held = ex.buffer.rows()
    clicked = old["label"] > 0.5
    assert len(held["label"]) == int(clicked.sum()) > 0 and (held["label"] == 1).all()
    assert ex.replay_rows(30) == {}  # no window open: no current candidates to pair with
    ex.before_window(model, now)
    out = ex.replay_rows(30)
    n = len(out["label"])
    clicks = out["label"] == 1
    assert int(clicks.sum()) == 10 and 10 < n <= 30  # 30 // (1 + 2) clicks, <= 2 negatives each
    old_rows = {
        tuple(int(old[k][i]) for k in ("user", "item")) + tuple(old["query"][i])
        for i in np.flatnonzero(clicked)
    }
    for i in np.flatnonzero(clicks):
        assert tuple(int(out[k][i]) for k in ("user", "item")) + tuple(out["query"][i]) in old_rows
    # every negative: a stored click's search, a candidate of the current window, never its item
    searches = {(int(old["user"][i]), tuple(old["query"][i])) for i in np.flatnonzero(clicked)}
    shown = {_candidate(now, i) for i in range(len(now["label"]))}
    negatives = np.flatnonzero(~clicks)
    assert len(negatives) > 0
    for i in negatives:
        assert (int(out["user"][i]), tuple(out["query"][i])) in searches
        assert _candidate(out, i) in shown
    ex.after_window(model, now)
    assert ex.replay_rows(30) == {}
    assert len(ex.buffer) == int(clicked.sum() + (now["label"] > 0.5).sum())


def test_exemplar_replay_never_offers_the_click_as_its_own_negative():
    model = _model()
    rows = _rows(seed=0)
    one_item = {**rows, "item": np.full_like(rows["item"], 7)}  # every candidate is item 7
    ex = ExemplarReplay(ExemplarReplayConfig(capacity=100, mix_ratio=1.0, negatives=3))
    ex.after_window(model, one_item)
    ex.before_window(model, one_item)
    out = ex.replay_rows(40)
    assert len(out["label"]) == 10 and (out["label"] == 1).all()  # all negatives were item 7


def test_exemplar_replay_config_explains_what_is_wrong():
    with pytest.raises(ValueError, match="negatives must be >= 1"):
        ExemplarReplayConfig(negatives=0)
    with pytest.raises(ValueError, match="holds clicks only"):
        ExemplarReplayConfig(buffer=BufferKind.CLICK_BALANCED)
    assert isinstance(parse_strategy("exemplar-replay"), ExemplarReplayConfig)
    assert build_strategy(parse_strategy("exemplar-replay+lwf")).kind is StrategyKind.COMBINED


# ------------------------------------------------------------------------ registry and knobs


def test_the_library_registry_holds_the_library_kinds_and_refuses_clashes():
    reg = library_registry()
    assert reg.kinds() == set(StrategyKind)
    assert reg.names() == (
        "finetune", "replay", "replay-balanced", "ewc", "ewc-separate", "lwf", "exemplar-replay",
    )  # fmt: skip
    lwf = reg.entry(StrategyKind.LWF)
    reg.add(lwf)  # the same entry again: a no-op
    reg.add(StrategyEntry("lwf", LwFConfig, LwF, {"lwf": LwFConfig()}))  # equal: a no-op too
    with pytest.raises(ValueError, match="'lwf' is already registered for LwFConfig"):
        reg.add(StrategyEntry("lwf", LwFConfig, LwF, {"lwf-hot": LwFConfig(temperature=4.0)}))
    with pytest.raises(KeyError, match="no strategy kind 'sgd' registered"):
        reg.entry("sgd")

    @dataclass(frozen=True)
    class PlainConfig(StrategyConfig):
        kind: ClassVar[str] = "plain"

    class Plain(Strategy):
        kind = "plain"

        def __init__(self, config: PlainConfig, rank: int = 0) -> None:
            self.config = config

    with pytest.raises(ValueError, match="strategy names already registered: replay"):
        reg.add(StrategyEntry("plain", PlainConfig, Plain, {"replay": PlainConfig()}))
    with pytest.raises(TypeError, match="not a strategy config of a registered kind"):
        reg.build(PlainConfig())
    mine = reg.copy()
    mine.add(StrategyEntry("plain", PlainConfig, Plain, {"plain": PlainConfig()}))
    assert isinstance(mine.build(mine.parse("plain")), Plain)
    assert type(mine.build(mine.parse("plain+lwf")).parts[0]) is Plain
    assert "plain" not in reg.kinds() and "plain" not in default_registry().kinds()
    with pytest.raises(ValueError, match="unknown strategy 'plain'"):
        parse_strategy("plain")


def test_the_experimental_strategies_are_not_in_the_library():
    import freshrank.learn.strategies as strategies

    for name in (
        "DarkReplay", "DarkReplayConfig", "WeightAverage", "AverageConfig", "Anchor",
        "AnchorConfig", "ShrinkPerturb", "ShrinkConfig", "PairDistill", "PairDistillConfig",
    ):  # fmt: skip
        assert not hasattr(strategies, name), name
    for name in ("dark-replay", "average", "anchor", "shrink", "pair-distill"):
        with pytest.raises(ValueError, match=f"unknown strategy '{name}'"):
            parse_strategy(name, registry=library_registry())
    assert set(strategies.__all__) == {n for n in dir(strategies) if not n.startswith("_")} - {
        "base", "combined", "ewc", "exemplar", "finetune", "knobs", "lwf", "registry", "replay",
        "state",
    }  # fmt: skip


def test_knobs_reach_every_part_that_declares_them_and_nothing_else():
    knobs = StrategyKnobs(
        replay_capacity=7, replay_ratio=0.25, replay_seed=3, ewc_lambda=4.0, lwf_alpha=0.5
    )
    tuned = apply_knobs(parse_strategy("exemplar-replay+ewc-separate+lwf"), knobs)
    ex, ewc, lwf = tuned.parts
    assert (ex.capacity, ex.mix_ratio, ex.seed, ex.negatives) == (7, 0.25, 3, 3)
    assert (ewc.lam, ewc.mode, ewc.seed, ewc.fisher_rows) == (4.0, EWCMode.SEPARATE, 0, 2048)
    assert (lwf.alpha, lwf.temperature) == (0.5, 2.0)
    assert apply_knobs(FineTuneConfig(), knobs) == FineTuneConfig()
    assert apply_knobs(parse_strategy("lwf"), StrategyKnobs()) == LwFConfig()
    # a tuned type replaces its parts, keeping what the short name chose (the buffer kind)
    over = StrategyKnobs(overrides=(ReplayConfig(capacity=9, positive_fraction=0.2),))
    balanced = apply_knobs(parse_strategy("replay-balanced"), over)
    assert (balanced.capacity, balanced.positive_fraction) == (9, 0.2)
    assert balanced.buffer is BufferKind.CLICK_BALANCED
    assert apply_knobs(parse_strategy("exemplar-replay"), over) == ExemplarReplayConfig()
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        apply_knobs(parse_strategy("replay"), StrategyKnobs(replay_capacity=0))
    every = {f.name for f in dataclasses.fields(StrategyKnobs)}
    for kind in library_registry().kinds():
        config = library_registry().entry(kind).config
        fields = {f.name for f in dataclasses.fields(config)}
        assert set(config.knobs) <= every and set(config.knobs.values()) <= fields, config
        assert set(config.chosen_by_name) <= fields, config


def test_train_step_calls_on_step_once_after_the_optimizer_step_with_the_unwrapped_model():
    seen = []

    class Watch(Strategy):
        def on_step(self, model):
            seen.append((model, copy.deepcopy(model.state_dict())))

    class Wrapper(torch.nn.Module):  # stands in for DistributedDataParallel
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, batch):
            return self.module(batch)

    core = _model()
    model = Wrapper(core)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train_step(model, opt, to_tensors(_rows(), CPU), Watch())
    assert len(seen) == 1 and seen[0][0] is core
    after = core.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in seen[0][1].items())
    assert not torch.equal(after["over.mlp.0.weight"], _model().state_dict()["over.mlp.0.weight"])
