"""Running a backtest: every arm over every period, in this process, without Ray.

Protocol (prequential, as in ADER): for ``p = 1 .. P-1``, every arm updates on period ``p-1``
and is then tested on period ``p``, which it has not seen. Quality is measured on test tables by
the click logits (position included, as the trainer's prequential AUC): AUC, log loss, GAUC,
NDCG@10, Recall@K and MRR@K, and Recall@K by item age. The training step is the trainer's
(:func:`freshrank.learn.step.train_window`), the optimizer the trainer's
(:func:`freshrank.learn.optim.make_optimizer`), the model the production ``Ranker`` and the
features the one ``encode``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from freshrank.evaluation.classification import log_loss, roc_auc
from freshrank.evaluation.ranking import hits_at_k, ranking_report
from freshrank.events.schema import drop_invalid_rows
from freshrank.features.encode import concat_inputs, encode, num_rows, slice_inputs
from freshrank.learn.backtest.arms import Arm, Schedule
from freshrank.learn.backtest.config import BacktestConfig
from freshrank.learn.backtest.data import Period, _request_codes
from freshrank.learn.backtest.report import ITEM_AGE_CLASSES, ArmResult, BacktestReport
from freshrank.learn.optim import make_optimizer
from freshrank.learn.row_sparse import RowSparseOptimizer
from freshrank.learn.step import score_rows, train_window
from freshrank.learn.strategies import (
    CombinedConfig,
    StrategyConfig,
    build_strategy,
)
from freshrank.model.ranker import Ranker

__all__ = ["BacktestProgress", "ProgressCallback", "reseeded", "run_backtest", "run_periods"]


@dataclass(frozen=True)
class BacktestProgress:
    """What a progress callback hears after each tested period of each arm."""

    arm: str
    period: str
    """The period just tested (before the arm trained on it)."""
    done: int
    """Periods tested so far, over every arm (``total`` when the backtest ends)."""
    total: int
    metrics: Mapping[str, float]
    """The arm's prequential metrics on that period."""


ProgressCallback = Callable[[BacktestProgress], None]
"""``progress(BacktestProgress)``, called in the backtest's thread; it should return quickly."""


def run_backtest(
    config: BacktestConfig, progress: ProgressCallback | None = None
) -> BacktestReport:
    """Load the data ``config`` names and run every arm over it.

    ``progress`` is called after every tested period of every arm (see
    :class:`BacktestProgress`); nothing is written anywhere.
    """
    periods = config.data.load()
    return run_periods(periods, config, progress)


def run_periods(
    periods: Sequence[Period],
    config: BacktestConfig,
    progress: ProgressCallback | None = None,
) -> BacktestReport:
    """Run every arm of ``config`` over ``periods`` (already loaded) and build the report."""
    if len(periods) < 2:
        raise ValueError(f"a backtest needs at least two periods, got {len(periods)}")
    old_threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        data = _EncodedPeriods.build(periods, config)
        counter = _Counter(progress, len(config.arms) * (len(periods) - 1))
        results = [_run_arm(arm, data, config, counter) for arm in config.arms]
    finally:
        torch.set_num_threads(old_threads)
    return BacktestReport(
        name=config.name,
        periods=tuple(p.name for p in periods),
        arms=tuple(results),
        k=config.k,
        events_per_period=tuple(p.train.num_rows for p in periods),
    )


@dataclass(frozen=True)
class _EncodedTest:
    rows: dict[str, np.ndarray]
    groups: np.ndarray  # int request codes
    slice_rows: dict[str, np.ndarray]
    slice_groups: np.ndarray


@dataclass(frozen=True)
class _EncodedPeriods:
    names: tuple[str, ...]
    train: tuple[dict[str, np.ndarray], ...]
    test: tuple[_EncodedTest, ...]
    item_age: tuple[np.ndarray, ...]
    """Per test row of period p: periods since its item first appeared in a train table
    (1 = first in period p - 1, the last update window), or -1 if never before p."""

    @classmethod
    def build(cls, periods: Sequence[Period], config: BacktestConfig) -> _EncodedPeriods:
        features = config.model.features
        train, test, ages = [], [], []
        first_seen: dict[str, int] = {}
        for index, p in enumerate(periods):
            train_table = drop_invalid_rows(p.train)[0]
            train.append(encode(train_table, features))
            table = drop_invalid_rows(p.test)[0]
            ages.append(_item_age(table, first_seen, index))
            for item in pc.unique(train_table.column("item_id")).to_pylist():
                first_seen.setdefault(item, index)
            rows = encode(table, features)
            groups = _request_codes(table)
            if config.forgetting_requests is None:
                mask = np.zeros(len(groups), dtype=bool)
            else:
                mask = groups < config.forgetting_requests  # codes follow first appearance
            test.append(_EncodedTest(rows, groups, slice_inputs(rows, mask), groups[mask]))
        return cls(tuple(p.name for p in periods), tuple(train), tuple(test), tuple(ages))


def _item_age(table: pa.Table, first_seen: Mapping[str, int], index: int) -> np.ndarray:
    encoded = pc.dictionary_encode(table.column("item_id")).combine_chunks()
    per_item = np.array(
        [index - first_seen[v] if v in first_seen else -1 for v in encoded.dictionary.to_pylist()],
        dtype=np.int64,
    )
    if not len(per_item):
        return np.full(table.num_rows, -1, dtype=np.int64)
    return per_item[np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64)]


def _run_arm(
    arm: Arm, data: _EncodedPeriods, config: BacktestConfig, counter: _Counter
) -> ArmResult:
    device = torch.device("cpu")
    n_periods = len(data.names)
    seed = config.seed
    rng = np.random.default_rng(seed)  # the same shuffles for every arm: comparable arms
    model, optimizer = _fresh_model(config)
    strategy_config = reseeded(arm.strategy, seed)
    strategy = build_strategy(strategy_config)
    stages = n_periods - 1
    metric_names: list[str] = []
    accuracy: dict[str, np.ndarray] = {}
    prequential: list[dict[str, float]] = []
    events_trained = new_events = rows_scored = 0
    per_update: list[int] = []
    train_s = eval_s = 0.0
    for p in range(1, n_periods):
        t0 = time.perf_counter()
        before = events_trained
        rows, fresh = _update_rows(arm, data, p)
        if rows is not None:
            if fresh:
                model, optimizer = _fresh_model(config)
                strategy = build_strategy(strategy_config)
            elif arm.reset_optimizer:
                optimizer = make_optimizer(
                    model, config.learning_rate, config.row_sparse, config.table_learning_rate
                )
            extra_before = strategy.extra_trained_rows()
            scored_before = strategy.forward_only_rows()
            result = train_window(
                model,
                optimizer,
                rows,
                strategy,
                batch_size=config.batch_size,
                rng=rng,
                device=device,
                epochs=arm.epochs or config.epochs,
            )
            events_trained += result.rows + strategy.extra_trained_rows() - extra_before
            new_events += result.new_rows
            rows_scored += strategy.forward_only_rows() - scored_before
        per_update.append(events_trained - before)
        t1 = time.perf_counter()
        # Prequential: the next period, unseen; then held-out slices for the accuracy matrix.
        metrics = _evaluate(
            model, data.test[p].rows, data.test[p].groups, config.k, device, data.item_age[p]
        )
        prequential.append(metrics)
        if not metric_names:  # the matrix keeps the metrics a slice has (not the age split)
            metric_names = [m for m in metrics if m in _BASE_METRICS or "@" in m and " " not in m]
            accuracy = {m: np.full((stages, n_periods), np.nan) for m in metric_names}
        if config.forgetting_requests is not None:
            for i in range(p + 1):
                t = data.test[i]
                if num_rows(t.slice_rows) == 0:
                    continue
                sliced = _evaluate(model, t.slice_rows, t.slice_groups, config.k, device)
                for m in metric_names:
                    accuracy[m][p - 1, i] = sliced[m]
        eval_s += time.perf_counter() - t1
        train_s += t1 - t0
        counter.tested(arm.name, data.names[p], metrics)
    return ArmResult(
        name=arm.name,
        schedule=arm.schedule,
        prequential=tuple(prequential),
        accuracy=accuracy,
        events_trained=events_trained,
        new_events=new_events,
        rows_scored=rows_scored,
        events_per_update=tuple(per_update),
        train_s=train_s,
        eval_s=eval_s,
    )


def reseeded(config: StrategyConfig, seed: int) -> StrategyConfig:
    """``config`` with ``seed`` added to the seed of every part that has one (replay
    reservoirs, exemplar negatives, EWC's Fisher sample), so that a backtest's ``seed`` varies
    the strategies' draws as well as the model's initialisation and the shuffles; seed 0
    leaves the config as it is.

    >>> from freshrank.learn.strategies import LwFConfig, ReplayConfig
    >>> reseeded(CombinedConfig((ReplayConfig(seed=3), LwFConfig())), 2).parts[0].seed
    5
    """
    if not seed:
        return config
    if isinstance(config, CombinedConfig):
        return CombinedConfig(tuple(reseeded(p, seed) for p in config.parts))
    if any(f.name == "seed" for f in dataclasses.fields(config)):
        return dataclasses.replace(config, seed=config.seed + seed)
    return config


def _update_rows(
    arm: Arm, data: _EncodedPeriods, p: int
) -> tuple[dict[str, np.ndarray] | None, bool]:
    """Rows the arm trains on before testing period ``p``, and whether it starts from scratch."""
    if arm.schedule is Schedule.STATIC:
        return (data.train[0], False) if p == 1 else (None, False)
    if arm.schedule is Schedule.INCREMENTAL:
        return data.train[p - 1], False
    first = 0 if arm.schedule is Schedule.JOINT else max(0, p - arm.window)
    parts = [data.train[q] for q in range(first, p) if num_rows(data.train[q])]
    return (concat_inputs(parts) if parts else None), True


def _fresh_model(
    config: BacktestConfig,
) -> tuple[Ranker, torch.optim.Optimizer | RowSparseOptimizer]:
    torch.manual_seed(config.seed)
    model = Ranker(config.model)
    return model, make_optimizer(
        model, config.learning_rate, config.row_sparse, config.table_learning_rate
    )


def _evaluate(
    model: Ranker,
    rows: Mapping[str, np.ndarray],
    groups: np.ndarray,
    k: int,
    device: torch.device,
    item_age: np.ndarray | None = None,
) -> dict[str, float]:
    logits = score_rows(model, rows, device)
    labels = rows["label"]
    out = {"auc": roc_auc(labels, logits), "logloss": log_loss(labels, logits)}
    out.update(ranking_report(groups, labels, logits, k=k, ndcg_k=10))
    if item_age is not None:
        out.update(_recall_by_item_age(groups, labels, logits, item_age, k))
    return out


_BASE_METRICS = ("auc", "logloss", "gauc")


def _recall_by_item_age(
    groups: np.ndarray, labels: np.ndarray, scores: np.ndarray, age: np.ndarray, k: int
) -> dict[str, float]:
    hits = hits_at_k(groups, labels, scores, k)
    clicked = np.asarray(labels).astype(bool)
    out = {}
    for name, lo, hi in ITEM_AGE_CLASSES:
        mask = clicked & (age >= lo) & (age <= hi)
        out[f"recall@{k} {name}"] = float(hits[mask].mean()) if mask.any() else float("nan")
        out[f"clicks {name}"] = float(mask.sum())
    return out


class _Counter:
    def __init__(self, callback: ProgressCallback | None, total: int) -> None:
        self.callback, self.total, self.done = callback, total, 0

    def tested(self, arm: str, period: str, metrics: Mapping[str, float]) -> None:
        self.done += 1
        if self.callback is not None:
            self.callback(BacktestProgress(arm, period, self.done, self.total, dict(metrics)))
