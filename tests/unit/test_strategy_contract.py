"""One contract suite over every strategy and every replay buffer (River's check_estimator style).

The cases are the library's kinds (every kind of ``library_registry()``, Combined included), the
experimental kinds bench/experimental_strategies.py registers (in a registry of their own), and
the buffers; a coverage check fails when a registered kind has no case. Each case is driven
through the same two verbs: ``feed`` (learn from a window: a real training window for
strategies, ``add`` for buffers) and ``probe`` (what the object produces now: replay rows and a
penalty for strategies, a sample for buffers). The checks: inputs are not mutated,
the same seed gives the same result, an empty window is a no-op, a state saved through
``np.savez`` / ``torch.save`` and loaded with ``allow_pickle=False`` / ``weights_only=True``
behaves identically, penalties are finite and >= 0, unseen ids do not crash anything, and
``on_step`` is called once per training step (on every part of a combined strategy).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import experimental_strategies
import numpy as np
import pyarrow.compute as pc
import pytest
import torch
from _tiny import FEATURES, MODEL, _one_thread  # noqa: F401 (fixture)
from experimental_strategies import (
    AnchorConfig,
    AverageConfig,
    DarkReplayConfig,
    ExemplarDistillConfig,
    PairDistillConfig,
    ShrinkConfig,
)

from freshrank.events.schema import empty_events
from freshrank.events.simulator import Simulator, SimulatorConfig
from freshrank.features.encode import encode
from freshrank.learn.buffers import ClickBalancedBuffer
from freshrank.learn.optim import make_optimizer
from freshrank.learn.replay import ReservoirBuffer
from freshrank.learn.step import train_window
from freshrank.learn.strategies import (
    BufferKind,
    CombinedConfig,
    EWCConfig,
    EWCMode,
    ExemplarReplayConfig,
    FineTuneConfig,
    LwFConfig,
    ReplayConfig,
    Strategy,
    StrategyEntry,
    StrategyRegistry,
    library_registry,
    partition_state,
)
from freshrank.learn.strategies.finetune import FineTune
from freshrank.model.device import to_tensors
from freshrank.model.ranker import Ranker

CPU = torch.device("cpu")


def _windows() -> list[dict[str, np.ndarray]]:
    sim = Simulator(
        SimulatorConfig(
            seed=5, n_users=40, n_items=30, n_categories=3, n_brands=4, list_size=5,
            words_per_category=3, queries_per_category=4,
        )
    )  # fmt: skip
    return [encode(sim.generate(30), FEATURES) for _ in range(3)]


WINDOWS = _windows()
EMPTY = encode(empty_events(), FEATURES)


def _unseen_window() -> dict[str, np.ndarray]:
    """A window of users, items, brands and query words no earlier window had."""
    sim = Simulator(SimulatorConfig(seed=9, n_users=10, n_items=10, n_categories=2, list_size=5))
    table = sim.generate(10)
    for column, prefix in (("user_id", "new-u"), ("item_id", "new-i"), ("query", "brand new ")):
        idx = table.schema.get_field_index(column)
        values = pc.binary_join_element_wise(prefix, table.column(column), "")
        table = table.set_column(idx, column, values)
    return encode(table, FEATURES)


def _model(seed: int = 0) -> Ranker:
    torch.manual_seed(seed)
    return Ranker(MODEL)


# ------------------------------------------------------------------------------------- cases


LIBRARY = library_registry()
BENCH = experimental_strategies.register(library_registry())
"""The library's kinds plus the experimental ones (a registry of its own: the default one is
left as the library has it)."""


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[int], Any]  # seed -> a fresh object
    is_strategy: bool
    moves_weights: bool = False
    """Its hooks change the weights by design (shrink and perturb): exempt from that check."""

    def feed(self, obj: Any, model: Ranker, rows: dict[str, np.ndarray]) -> None:
        if self.is_strategy:
            optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
            train_window(
                model,
                optimizer,
                rows,
                obj,
                batch_size=64,
                rng=np.random.default_rng(0),
                device=CPU,
            )
        else:
            obj.add(rows)

    def probe(self, obj: Any, model: Ranker, rows: dict[str, np.ndarray]) -> dict[str, Any]:
        if not self.is_strategy:
            return {f"sample/{k}": v for k, v in obj.sample(16).items()}
        obj.before_window(model, rows)
        out: dict[str, Any] = {f"replay/{k}": v for k, v in obj.replay_rows(32).items()}
        shifted = copy.deepcopy(model)  # a student that moved away from the anchor / teacher
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in shifted.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
        batch = to_tensors(rows, CPU)
        penalty = obj.penalty(batch, shifted(batch), shifted)
        out["penalty"] = float(penalty.detach())
        return out

    def state(self, obj: Any) -> dict[str, Any]:
        return dict(obj.state_dict())


def _strategy_case(
    name: str, config: Any, moves_weights: bool = False, registry: StrategyRegistry = LIBRARY
) -> Case:
    def reseed(cfg: Any, seed: int) -> Any:
        return dataclasses.replace(cfg, seed=seed) if hasattr(cfg, "seed") else cfg

    def make(seed: int) -> Strategy:
        if isinstance(config, CombinedConfig):
            return registry.build(CombinedConfig(tuple(reseed(p, seed) for p in config.parts)))
        return registry.build(reseed(config, seed))

    return Case(name, make, True, moves_weights)


def _bench_case(name: str, config: Any, moves_weights: bool = False) -> Case:
    return _strategy_case(name, config, moves_weights, registry=BENCH)


LIBRARY_CASES = [
    _strategy_case("finetune", FineTuneConfig()),
    _strategy_case("replay-reservoir", ReplayConfig(capacity=64, mix_ratio=0.5)),
    _strategy_case(
        "replay-balanced",
        ReplayConfig(capacity=64, mix_ratio=1.0, buffer=BufferKind.CLICK_BALANCED),
    ),
    _strategy_case("ewc-online", EWCConfig(lam=10.0, fisher_rows=64, fisher_batch_size=16)),
    _strategy_case(
        "ewc-separate",
        EWCConfig(lam=10.0, mode=EWCMode.SEPARATE, fisher_rows=64, fisher_batch_size=16),
    ),
    _strategy_case("lwf", LwFConfig(alpha=1.0, temperature=2.0)),
    _strategy_case("replay+lwf", CombinedConfig((ReplayConfig(capacity=64), LwFConfig()))),
    _strategy_case(
        "replay+ewc",
        CombinedConfig((ReplayConfig(capacity=64), EWCConfig(fisher_rows=32))),
    ),
    _strategy_case("exemplar-replay", ExemplarReplayConfig(capacity=64, mix_ratio=1.0)),
    _strategy_case(
        "exemplar-replay+lwf",
        CombinedConfig((ExemplarReplayConfig(capacity=64, negatives=3), LwFConfig())),
    ),
]
BENCH_CASES = [
    _bench_case("dark-replay", DarkReplayConfig(capacity=64, mix_ratio=0.5, hard_weight=0.2)),
    _bench_case("lwf+dark-replay", CombinedConfig((LwFConfig(), DarkReplayConfig(capacity=64)))),
    _bench_case("average", AverageConfig(decay=0.5, keep=0.8)),
    _bench_case("replay+average", CombinedConfig((ReplayConfig(capacity=64), AverageConfig()))),
    _bench_case("anchor", AnchorConfig(lam=5.0)),
    _bench_case("shrink", ShrinkConfig(shrink=0.9, noise=0.01), moves_weights=True),
    _bench_case("pair-distill", PairDistillConfig(mix_ratio=0.5)),
    _bench_case("exemplar-distill", ExemplarDistillConfig(capacity=64, alpha=0.5)),
]
BUFFER_CASES = [
    Case("buffer-reservoir", lambda seed: ReservoirBuffer(40, seed=seed), False),
    Case("buffer-click-balanced", lambda seed: ClickBalancedBuffer(40, 0.5, seed=seed), False),
]
STRATEGY_CASES = LIBRARY_CASES + BENCH_CASES
CASES = STRATEGY_CASES + BUFFER_CASES


def _assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, torch.Tensor):
            torch.testing.assert_close(x, y, rtol=0, atol=0, msg=k)
        else:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=k)


def _copy_rows(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in rows.items()}


# ------------------------------------------------------------------------------------ checks


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_inputs_are_not_mutated(case: Case):
    obj, model = case.make(0), _model()
    case.feed(obj, model, WINDOWS[0])
    model.zero_grad(set_to_none=True)
    rows = WINDOWS[1]
    rows_before = _copy_rows(rows)
    weights_before = copy.deepcopy(model.state_dict())
    if case.is_strategy:  # the hooks themselves, without an optimizer step
        batch = to_tensors(rows, CPU)
        batch_before = {k: v.clone() for k, v in batch.items()}
        obj.before_window(model, rows)
        obj.replay_rows(10)
        obj.penalty(batch, model(batch), model)
        obj.on_step(model)
        obj.after_window(model, rows)
        _assert_same(batch, batch_before)
        if not case.moves_weights:
            _assert_same(model.state_dict(), weights_before)
        assert all(p.grad is None for p in model.parameters()), "a hook left gradients behind"
    else:
        obj.add(rows)
        sample = obj.sample(8)
        sample["label"][:] = -1  # the caller owns what it got: the buffer must not change
        assert (obj.rows()["label"] >= 0).all()
    _assert_same(rows, rows_before)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_same_seed_same_result(case: Case):
    a, b = case.make(3), case.make(3)
    model_a, model_b = _model(), _model()
    for rows in WINDOWS[:2]:
        case.feed(a, model_a, rows)
        case.feed(b, model_b, rows)
    _assert_same(case.state(a), case.state(b))
    _assert_same(case.probe(a, model_a, WINDOWS[2]), case.probe(b, model_b, WINDOWS[2]))
    _assert_same(model_a.state_dict(), model_b.state_dict())


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("empty", [EMPTY, {}], ids=["zero-rows", "no-keys"])
def test_empty_window_is_a_noop(case: Case, empty: dict[str, np.ndarray]):
    a, b = case.make(1), case.make(1)
    model_a, model_b = _model(), _model()
    case.feed(a, model_a, WINDOWS[0])
    case.feed(b, model_b, WINDOWS[0])
    if case.is_strategy and not empty:
        a.before_window(model_a, empty)  # no rows, no keys: the hooks alone
        a.after_window(model_a, empty)
    else:
        case.feed(a, model_a, empty)
    _assert_same(case.state(a), case.state(b))
    _assert_same(model_a.state_dict(), model_b.state_dict())
    _assert_same(case.probe(a, model_a, WINDOWS[1]), case.probe(b, model_b, WINDOWS[1]))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_state_round_trip_keeps_behaviour(case: Case, tmp_path):
    a, model = case.make(2), _model()
    case.feed(a, model, WINDOWS[0])
    arrays, tensors = partition_state(a.state_dict())
    assert all(v.dtype != object for v in arrays.values())
    np.savez(tmp_path / "state.npz", **arrays)
    torch.save(tensors, tmp_path / "state.pt")
    with np.load(tmp_path / "state.npz", allow_pickle=False) as data:
        loaded: dict[str, Any] = {k: data[k] for k in data.files}
    loaded.update(torch.load(tmp_path / "state.pt", weights_only=True))

    b = case.make(77)  # a different seed: everything that matters must come from the state
    b.load_state_dict(loaded)
    _assert_same(case.state(a), case.state(b))
    model_a, model_b = copy.deepcopy(model), copy.deepcopy(model)
    case.feed(a, model_a, WINDOWS[1])
    case.feed(b, model_b, WINDOWS[1])
    _assert_same(model_a.state_dict(), model_b.state_dict())
    _assert_same(case.state(a), case.state(b))
    _assert_same(case.probe(a, model_a, WINDOWS[2]), case.probe(b, model_b, WINDOWS[2]))


@pytest.mark.parametrize("case", STRATEGY_CASES, ids=lambda c: c.name)
def test_penalty_is_finite_and_nonnegative(case: Case):
    obj, model = case.make(0), _model()
    batch = to_tensors(WINDOWS[0], CPU)
    assert float(obj.penalty(batch, model(batch), model)) == 0.0  # nothing learned yet
    for rows in WINDOWS[:2]:
        case.feed(obj, model, rows)
        value = case.probe(obj, model, WINDOWS[2])["penalty"]
        assert np.isfinite(value) and value >= 0.0
    empty = to_tensors(EMPTY, CPU)
    value = obj.penalty(empty, model(empty), model)
    value = value.detach()
    assert value.dim() == 0 and torch.isfinite(value) and float(value) >= 0.0


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_unseen_ids_do_not_crash(case: Case):
    obj, model = case.make(0), _model()
    case.feed(obj, model, WINDOWS[0])
    unseen = _unseen_window()
    out = case.probe(obj, model, unseen)
    case.feed(obj, model, unseen)
    out2 = case.probe(obj, model, WINDOWS[1])
    for result in (out, out2):
        if "penalty" in result:
            assert np.isfinite(result["penalty"]) and result["penalty"] >= 0.0
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("case", STRATEGY_CASES, ids=lambda c: c.name)
def test_on_step_is_called_once_per_step(case: Case):
    obj, model = case.make(0), _model()
    calls: dict[int, list[Any]] = {}
    for target in (obj, *getattr(obj, "parts", ())):  # a combined strategy and each part
        hook, seen = target.on_step, calls.setdefault(id(target), [])

        def counted(m: Any, hook: Any = hook, seen: list[Any] = seen) -> None:
            seen.append(m)
            hook(m)

        target.on_step = counted
    steps = 0
    for rows in (WINDOWS[0], EMPTY, WINDOWS[1]):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        result = train_window(
            model, optimizer, rows, obj, batch_size=64, rng=np.random.default_rng(0), device=CPU
        )
        steps += result.steps
    assert steps == 2 * 3  # 150 rows in batches of 64, twice; none for the empty window
    for seen in calls.values():
        assert len(seen) == steps and all(m is model for m in seen)


def _uncovered(registry: StrategyRegistry, cases: list[Case], kinds: frozenset[str]) -> str:
    """What is wrong with how ``cases`` cover ``kinds`` of ``registry``: kinds without a case
    of their own (a kind only inside a combined case does not count) and cases of a kind the
    registry does not hold; empty when nothing is."""
    covered = {c.make(0).kind for c in cases}
    problems = []
    if kinds - covered:
        problems.append(f"no contract case for kinds {sorted(map(str, kinds - covered))}")
    if covered - registry.kinds():
        unknown = covered - registry.kinds()
        problems.append(f"cases of unregistered kinds {sorted(map(str, unknown))}")
    return "; ".join(problems)


def test_every_registered_kind_and_buffer_is_covered():
    assert _uncovered(LIBRARY, LIBRARY_CASES, LIBRARY.kinds()) == ""
    bench_kinds = BENCH.kinds() - LIBRARY.kinds()
    assert bench_kinds == set(experimental_strategies.ExperimentalKind)
    assert _uncovered(BENCH, BENCH_CASES, bench_kinds) == ""
    assert {type(c.make(0)).__name__ for c in BUFFER_CASES} == {
        "ReservoirBuffer",
        "ClickBalancedBuffer",
    }


def test_the_coverage_check_reports_a_kind_registered_without_a_case():
    """The check above can fail: register one more kind and it names that kind."""

    @dataclass(frozen=True)
    class DummyConfig(FineTuneConfig):
        kind = "dummy"  # type: ignore[assignment]

    class Dummy(FineTune):
        kind = "dummy"

    registry = LIBRARY.copy()
    registry.add(StrategyEntry("dummy", DummyConfig, Dummy, {"dummy": DummyConfig()}))
    problems = _uncovered(registry, LIBRARY_CASES, registry.kinds())
    assert problems == "no contract case for kinds ['dummy']"
    with pytest.raises(AssertionError, match="dummy"):
        assert _uncovered(registry, LIBRARY_CASES, registry.kinds()) == "", problems
    assert "dummy" not in LIBRARY.kinds()
    # and the other way: a case of a kind the registry does not hold
    assert _uncovered(LIBRARY, LIBRARY_CASES + BENCH_CASES[:1], LIBRARY.kinds()) == (
        "cases of unregistered kinds ['dark_replay']"
    )


def _former_extra_rows(strategy: Any) -> int:
    """learn/backtest.py's ``_extra_rows`` before the accounting methods (isinstance code)."""
    from freshrank.learn.strategies import EWC, Combined

    if isinstance(strategy, Combined):
        return sum(_former_extra_rows(s) for s in strategy.parts)
    return strategy.fisher_rows_processed if isinstance(strategy, EWC) else 0


def _former_scored_rows(strategy: Any) -> int:
    """learn/backtest.py's ``_scored_rows`` before the accounting methods."""
    from freshrank.learn.strategies import Combined

    if isinstance(strategy, Combined):
        return sum(_former_scored_rows(s) for s in strategy.parts)
    return int(getattr(strategy, "rows_scored", 0))


@pytest.mark.parametrize("case", STRATEGY_CASES, ids=lambda c: c.name)
def test_row_accounting_matches_the_former_per_type_code(case: Case):
    obj, model = case.make(0), _model()
    for rows in WINDOWS:
        case.feed(obj, model, rows)
        assert obj.extra_trained_rows() == _former_extra_rows(obj)
        assert obj.forward_only_rows() == _former_scored_rows(obj)
    kinds = {str(obj.kind), *(str(p.kind) for p in getattr(obj, "parts", ()))}
    assert (obj.extra_trained_rows() > 0) == ("ewc" in kinds)  # Fisher rows: EWC's only
    scores = {"dark_replay", "pair_distill"} & kinds
    assert (obj.forward_only_rows() > 0) == bool(scores), kinds


@pytest.mark.parametrize("case", LIBRARY_CASES, ids=lambda c: c.name)
def test_trains_with_row_sparse_tables(case: Case):
    """Issue 15: every library strategy trains through the row-sparse optimizer (sparse table
    gradients, SparseAdam); a table row that no window looked up is never touched, a row that
    one did moves, and every weight stays finite."""
    obj, model = case.make(0), _model()
    optimizer = make_optimizer(model, 0.05, row_sparse=True)
    before = model.sparse.tables["item"].weight.detach().clone()
    for rows in WINDOWS[:2]:
        train_window(
            model, optimizer, rows, obj, batch_size=64, rng=np.random.default_rng(0), device=CPU
        )
    after = model.sparse.tables["item"].weight.detach()
    used = np.unique(np.concatenate([w["item"] for w in WINDOWS[:2]]))
    unused = np.setdiff1d(np.arange(after.shape[0]), used)
    assert len(unused) > 0 and len(used) > 0
    torch.testing.assert_close(after[unused], before[unused], rtol=0, atol=0)
    assert not torch.equal(after[used], before[used])
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())


@pytest.mark.parametrize("case", STRATEGY_CASES, ids=lambda c: c.name)
def test_replay_count_is_what_replay_rows_returns(case: Case):
    """``replay_count`` (what distributed training sums once per window) is None or exactly the
    number of rows the next ``replay_rows`` call returns, before and after a window is stored;
    it draws nothing, so the replayed rows are the same whether it was asked or not."""
    for windows in (0, 1, 2):
        asked, plain = case.make(0), case.make(0)
        model = _model()
        for rows in WINDOWS[:windows]:
            case.feed(asked, model, rows)
        model_b = _model()
        for rows in WINDOWS[:windows]:
            case.feed(plain, model_b, rows)
        for n_new in (0, 7, 30):
            count = asked.replay_count(n_new)
            got = asked.replay_rows(n_new) if n_new else {}
            assert count is None or count == (len(got["label"]) if got else 0), (n_new, count)
            _assert_same(got, plain.replay_rows(n_new) if n_new else {})
