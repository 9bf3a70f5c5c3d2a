"""Backtest: replay a time-ordered log, period by period, through a list of update policies.

Protocol (prequential, as in ADER): for ``p = 1 .. P-1``, every arm updates on period ``p-1``
and is then tested on period ``p``, which it has not seen. Arms differ in what they train on:

================  ==========================================================================
schedule          update at period ``p``
================  ==========================================================================
``STATIC``        train on period 0 once, never again
``INCREMENTAL``   continue training on period ``p-1`` with a strategy (fine-tune, replay,
                  EWC, LwF, replay + LwF, ...), optimizer state kept
``JOINT``         retrain from scratch on periods ``0 .. p-1``
``SLIDING``       retrain from scratch on the last ``window`` periods
================  ==========================================================================

Each period brings a **train** table and a disjoint **test** table (held-out requests or
sessions). Quality is measured on test tables by the click logits (position included, as the
trainer's prequential AUC): AUC, log loss, GAUC, NDCG@10, Recall@K and MRR@K. **Forgetting**:
after each update, held-out slices (the first ``forgetting_requests`` requests of every test
table up to the next period) are scored too, which fills an accuracy matrix ``R[j, i]``
(quality on period ``i`` after training through period ``j``) and gives backward transfer
``BWT = mean_i (R[last, i] - R[i, i])`` (negative = forgetting).

The training step is the trainer's (:func:`freshrank.learn.step.train_window`), the model the
production ``Ranker`` and the features the one ``encode``; everything runs in this process,
without Ray. :func:`run_backtest` loads the data a config names, runs every arm and writes
``report.md``, ``report.json`` and PNG plots into the output directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from freshrank.evaluation.classification import log_loss, roc_auc
from freshrank.evaluation.ranking import hits_at_k, ranking_report
from freshrank.events.adapters.diginetica import DigineticaConfig, NegativeSampling, load_periods
from freshrank.events.schema import drop_invalid_rows
from freshrank.events.simulator import Simulator, SimulatorConfig
from freshrank.features.encode import (
    FeatureConfig,
    concat_inputs,
    encode,
    num_rows,
    slice_inputs,
)
from freshrank.learn.step import score_rows, train_window
from freshrank.learn.strategies import (
    EWC,
    Combined,
    CombinedConfig,
    EWCConfig,
    FineTuneConfig,
    LwFConfig,
    ReplayConfig,
    Strategy,
    StrategyConfig,
    build_strategy,
    parse_strategy,
)
from freshrank.model.config import RankerConfig
from freshrank.model.ranker import Ranker

# ------------------------------------------------------------------------------------- config


class Schedule(Enum):
    """What an arm trains on at each period (see the module docstring)."""

    STATIC = "static"
    INCREMENTAL = "incremental"
    JOINT = "joint"
    SLIDING = "sliding"


@dataclass(frozen=True)
class Arm:
    """One line of the comparison: a schedule and, for incremental arms, a strategy.

    >>> Arm("joint", Schedule.JOINT, strategy=ReplayConfig())
    Traceback (most recent call last):
    ...
    ValueError: Arm 'joint': only INCREMENTAL arms take a strategy; use FineTuneConfig() here
    """

    name: str
    schedule: Schedule = Schedule.INCREMENTAL
    strategy: StrategyConfig = field(default_factory=FineTuneConfig)
    window: int = 3
    """SLIDING only: how many recent periods each retrain uses."""
    epochs: int | None = None
    """Passes over each update's rows (None: ``BacktestConfig.epochs``)."""
    reset_optimizer: bool = False
    """INCREMENTAL only: a fresh Adam (no moments, step count 0) at every update instead of
    keeping its state across updates (retraining schedules always start fresh)."""

    def __post_init__(self) -> None:
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"Arm {self.name!r}: epochs must be >= 1 or None, got {self.epochs}")
        if not self.name:
            raise ValueError("Arm: name must not be empty")
        if not isinstance(self.schedule, Schedule):
            raise ValueError(
                f"Arm {self.name!r}: schedule must be a Schedule, got {self.schedule!r}"
            )
        if self.schedule is not Schedule.INCREMENTAL and not isinstance(
            self.strategy, FineTuneConfig
        ):
            raise ValueError(
                f"Arm {self.name!r}: only INCREMENTAL arms take a strategy; "
                "use FineTuneConfig() here"
            )
        if self.window < 1:
            raise ValueError(f"Arm {self.name!r}: window must be >= 1, got {self.window}")
        if self.reset_optimizer and self.schedule is not Schedule.INCREMENTAL:
            raise ValueError(
                f"Arm {self.name!r}: reset_optimizer is for INCREMENTAL arms (retraining "
                "schedules always start with a fresh optimizer)"
            )


def default_arms(
    replay: ReplayConfig | None = None,
    ewc: EWCConfig | None = None,
    lwf: LwFConfig | None = None,
    window: int = 3,
) -> tuple[Arm, ...]:
    """static, fine-tune, replay, EWC, LwF, replay + LwF, joint and sliding-window retrain."""
    replay = replay or ReplayConfig()
    ewc = ewc or EWCConfig()
    lwf = lwf or LwFConfig()
    return (
        Arm("static", Schedule.STATIC),
        Arm("finetune"),
        Arm("replay", strategy=replay),
        Arm("ewc", strategy=ewc),
        Arm("lwf", strategy=lwf),
        Arm("replay+lwf", strategy=CombinedConfig((replay, lwf))),
        Arm("joint", Schedule.JOINT),
        Arm(f"sliding-{window}", Schedule.SLIDING, window=window),
    )


@dataclass(frozen=True)
class Period:
    """One period of the log: rows to train on and disjoint rows to test on (event schema)."""

    name: str
    train: pa.Table
    test: pa.Table


@dataclass(frozen=True)
class SimulatorData:
    """Periods from the simulator, optionally with a planted shift before period ``shift_at``.

    >>> SimulatorData(periods=3, shift_at=3)
    Traceback (most recent call last):
    ...
    ValueError: SimulatorData: shift_at must be in [1, periods - 1] = [1, 2] or None, got 3
    """

    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
    periods: int = 8
    requests_per_period: int = 5_000
    shift_at: int | None = None
    test_fraction: float = 0.1

    def __post_init__(self) -> None:
        if self.periods < 2:
            raise ValueError(f"SimulatorData: periods must be >= 2, got {self.periods}")
        if self.requests_per_period < 10:
            raise ValueError(
                f"SimulatorData: requests_per_period must be >= 10, got {self.requests_per_period}"
            )
        if self.shift_at is not None and not 1 <= self.shift_at < self.periods:
            raise ValueError(
                f"SimulatorData: shift_at must be in [1, periods - 1] = [1, {self.periods - 1}] "
                f"or None, got {self.shift_at}"
            )
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(
                f"SimulatorData: test_fraction must be in (0, 1), got {self.test_fraction}"
            )

    def load(self) -> list[Period]:
        """Generate the periods (deterministic for a given config)."""
        sim = Simulator(self.simulator)
        out = []
        for p in range(self.periods):
            if p == self.shift_at:
                sim.planted_shift()
            table = sim.generate(self.requests_per_period)
            train, test = split_by_request(table, self.test_fraction, seed=self.simulator.seed + p)
            out.append(Period(f"sim{p}", train, test))
        return out


@dataclass(frozen=True)
class DigineticaData:
    """DIGINETICA periods through the adapter (``events.adapters.diginetica``)."""

    adapter: DigineticaConfig = field(default_factory=DigineticaConfig)
    periods: tuple[int, ...] | None = None
    """Which periods, in order (None: every ``period_*.txt`` found)."""

    def load(self) -> list[Period]:
        """Read and convert the periods."""
        return [
            Period(f"p{pe.period}", pe.train, pe.test)
            for pe in load_periods(self.adapter, self.periods)
        ]


@dataclass(frozen=True)
class ParquetData:
    """Any event log: one parquet file (or directory of shards) per period, in time order."""

    paths: tuple[str, ...]
    test_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.paths) < 2:
            raise ValueError(f"ParquetData: give at least two periods, got {len(self.paths)}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(
                f"ParquetData: test_fraction must be in (0, 1), got {self.test_fraction}"
            )

    def load(self) -> list[Period]:
        """Read each period and split its requests into train and test."""
        out = []
        for i, path in enumerate(self.paths):
            table, _ = drop_invalid_rows(pq.read_table(path))
            train, test = split_by_request(table, self.test_fraction, seed=self.seed + i)
            out.append(Period(Path(path).stem, train, test))
        return out


DataSource = SimulatorData | DigineticaData | ParquetData


@dataclass(frozen=True)
class BacktestConfig:
    """What to replay, through which arms, with which model and training settings.

    >>> BacktestConfig(name="x", batch_size=0)
    Traceback (most recent call last):
    ...
    ValueError: BacktestConfig: batch_size must be >= 1, got 0
    """

    name: str = "simulator"
    data: DataSource = field(default_factory=SimulatorData)
    arms: tuple[Arm, ...] = field(default_factory=default_arms)
    model: RankerConfig = field(default_factory=RankerConfig)
    batch_size: int = 512
    learning_rate: float = 3e-3
    epochs: int = 1
    """Passes over each update's rows (every schedule)."""
    k: int = 20
    """Cut-off of Recall@K and MRR@K."""
    forgetting_requests: int | None = 300
    """Requests per held-out slice for the accuracy matrix (None: skip forgetting)."""
    seed: int = 0
    output_dir: str | None = None
    """Where the report goes; None: ``bench/out/backtest-<name>`` under the cwd."""
    write_report: bool = True
    progress: bool = True
    threads: int | None = 1
    """torch intra-op threads while the backtest runs (None: leave torch's setting). One thread
    is fastest for this small model on a shared machine: measured here, two threads on two busy
    cores were 10x slower than one."""

    def __post_init__(self) -> None:
        def fail(msg: str) -> None:
            raise ValueError(f"BacktestConfig: {msg}")

        if not self.name or "/" in self.name:
            fail(f"name must be a non-empty file name, got {self.name!r}")
        if not isinstance(self.data, SimulatorData | DigineticaData | ParquetData):
            fail(f"data must be SimulatorData, DigineticaData or ParquetData, got {self.data!r}")
        object.__setattr__(self, "arms", tuple(self.arms))
        if not self.arms:
            fail("arms must hold at least one Arm (see default_arms())")
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            fail(f"arm names must be unique, got {names}")
        if self.batch_size < 1:
            fail(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.learning_rate > 0:
            fail(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.epochs < 1:
            fail(f"epochs must be >= 1, got {self.epochs}")
        if self.k < 1:
            fail(f"k must be >= 1, got {self.k}")
        if self.forgetting_requests is not None and self.forgetting_requests < 1:
            fail(f"forgetting_requests must be >= 1 or None, got {self.forgetting_requests}")

    def resolved_output_dir(self) -> Path:
        """The output directory (created when the report is written)."""
        if self.output_dir is not None:
            return Path(self.output_dir)
        return Path("bench") / "out" / f"backtest-{self.name}"


# ------------------------------------------------------------------------------------- report


@dataclass(frozen=True)
class ArmResult:
    """How one arm did."""

    name: str
    schedule: Schedule
    prequential: tuple[dict[str, float], ...]
    """Metrics on the test table of period p (p = 1 .. P-1), before training on it."""
    accuracy: dict[str, np.ndarray]
    """metric -> (P-1, P) matrix: after training through period j, quality on slice i (NaN for
    i > j + 1; column j + 1 is the next, unseen period)."""
    events_trained: int
    """Rows that went through forward and backward (new + replayed + EWC Fisher rows)."""
    new_events: int
    """Rows of the log that were trained on (counted once per update they took part in)."""
    train_s: float
    eval_s: float
    rows_scored: int = 0
    """Rows a strategy scored with a forward pass only (not in ``events_trained``)."""

    @property
    def mean(self) -> dict[str, float]:
        """Mean of every prequential metric over the tested periods (NaNs ignored)."""
        keys = self.prequential[0].keys() if self.prequential else ()
        return {k: _nanmean([m[k] for m in self.prequential]) for k in keys}

    @property
    def wall_s(self) -> float:
        """Training plus evaluation time."""
        return self.train_s + self.eval_s

    def bwt(self, metric: str) -> float:
        """Backward transfer of ``metric``: mean over i < last of R[last, i] - R[i, i]."""
        return backward_transfer(self.accuracy.get(metric, np.zeros((0, 0))))


@dataclass(frozen=True)
class BacktestReport:
    """Every arm's results, plus where the report files went."""

    name: str
    periods: tuple[str, ...]
    arms: tuple[ArmResult, ...]
    k: int
    events_per_period: tuple[int, ...]
    output_dir: Path | None = None
    files: tuple[str, ...] = ()

    def arm(self, name: str) -> ArmResult:
        """The result of the arm called ``name``."""
        for a in self.arms:
            if a.name == name:
                return a
        raise KeyError(f"no arm {name!r}; arms: {[a.name for a in self.arms]}")

    def gap_closed(
        self, arm: str, metric: str, low: str = "finetune", high: str = "joint"
    ) -> float:
        """Share of the gap from ``low`` to ``high`` that ``arm`` closes on mean ``metric``
        (1.0 = all of it; NaN when the gap is 0 or an arm is missing)."""
        try:
            lo = self.arm(low).mean[metric]
            hi = self.arm(high).mean[metric]
            x = self.arm(arm).mean[metric]
        except KeyError:
            return float("nan")
        gap = hi - lo
        return float((x - lo) / gap) if gap and math.isfinite(gap) else float("nan")

    def markdown(self) -> str:
        """The comparison table (means over the tested periods)."""
        k = self.k
        metrics = [f"recall@{k}", f"mrr@{k}", "auc", "gauc", "ndcg@10", "logloss"]
        joint = next((a for a in self.arms if a.schedule is Schedule.JOINT), None)
        head = (
            "| strategy | "
            + " | ".join(_label(m) for m in metrics)
            + f" | BWT {_label(f'recall@{k}')} | BWT AUC | events trained | vs joint | wall s |"
        )
        lines = [head, "|" + "---|" * (len(metrics) + 6)]
        for a in self.arms:
            mean = a.mean
            ratio = (
                f"{a.events_trained / joint.events_trained:.1%}"
                if joint is not None and joint.events_trained
                else "—"
            )
            cells = [_fmt(mean.get(m)) for m in metrics]
            cells += [_fmt(a.bwt(f"recall@{k}"), signed=True), _fmt(a.bwt("auc"), signed=True)]
            cells += [f"{a.events_trained:,}", ratio, f"{a.wall_s:.1f}"]
            lines.append(f"| {a.name} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def item_age_markdown(self) -> str:
        """Recall@K of clicks by how recently their item first appeared in training data."""
        k = self.k
        names = [n for n, _, _ in ITEM_AGE_CLASSES]
        first = self.arms[0].prequential if self.arms else ()
        clicks = {n: int(sum(m.get(f"clicks {n}", 0) for m in first)) for n in names}
        head = " | ".join(f"Recall@{k} {n} ({clicks[n]:,} clicks)" for n in names)
        lines = [f"| strategy | {head} |", "|" + "---|" * (len(names) + 1)]
        for a in self.arms:
            clicked = [a.prequential and _click_weighted(a.prequential, n, k) for n in names]
            lines.append(f"| {a.name} | " + " | ".join(_fmt(v) for v in clicked) + " |")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form (accuracy matrices as nested lists, NaN as null)."""
        return {
            "name": self.name,
            "periods": list(self.periods),
            "k": self.k,
            "events_per_period": list(self.events_per_period),
            "arms": [
                {
                    "name": a.name,
                    "schedule": a.schedule.value,
                    "mean": _jsonable(a.mean),
                    "prequential": [_jsonable(m) for m in a.prequential],
                    "accuracy": {m: _jsonable(v.tolist()) for m, v in a.accuracy.items()},
                    "bwt": {m: _jsonable(a.bwt(m)) for m in a.accuracy},
                    "events_trained": a.events_trained,
                    "new_events": a.new_events,
                    "rows_scored": a.rows_scored,
                    "train_s": a.train_s,
                    "eval_s": a.eval_s,
                }
                for a in self.arms
            ],
        }


def _click_weighted(prequential: Sequence[Mapping[str, float]], name: str, k: int) -> float:
    """Recall over all tested periods' clicks of an item-age class (weighted by clicks)."""
    hits = total = 0.0
    for m in prequential:
        n = m.get(f"clicks {name}", 0.0)
        r = m.get(f"recall@{k} {name}", float("nan"))
        if n and math.isfinite(r):
            hits += r * n
            total += n
    return hits / total if total else float("nan")


def backward_transfer(matrix: np.ndarray) -> float:
    """BWT of an accuracy matrix ``R[j, i]`` (after training through j, quality on i).

    ``mean over i < T-1 of R[T-1, i] - R[i, i]`` with T the number of training stages (rows);
    NaN with fewer than two stages.

    >>> backward_transfer(np.array([[0.8, 0.5, np.nan], [0.7, 0.9, 0.6]]))
    -0.1
    """
    m = np.asarray(matrix, dtype=np.float64)
    t = m.shape[0]
    if t < 2:
        return float("nan")
    diffs = [m[t - 1, i] - m[i, i] for i in range(t - 1)]
    return round(_nanmean(diffs), 12)


def recovery_windows(
    series: Sequence[float], shift_index: int, tolerance: float = 0.01, baseline: int = 2
) -> int | None:
    """Windows of post-shift data a model trained on before ``series`` is back within
    ``tolerance`` of its pre-shift level (mean of the ``baseline`` values before the shift).

    ``series[i]`` is the prequential metric of window ``i`` (scored before training on it);
    ``shift_index`` is the first window after the shift. 0 means it never dropped below the
    level; None means it had not recovered by the end.

    >>> recovery_windows([0.70, 0.72, 0.60, 0.69, 0.715], shift_index=2)
    2
    >>> recovery_windows([0.70, 0.72, 0.60, 0.65], shift_index=2) is None
    True
    """
    if not 1 <= shift_index < len(series):
        raise ValueError(f"shift_index must be in [1, {len(series) - 1}], got {shift_index}")
    before = [v for v in series[max(0, shift_index - baseline) : shift_index] if math.isfinite(v)]
    if not before:
        return None
    level = float(np.mean(before)) - tolerance
    for j, value in enumerate(series[shift_index:]):
        if math.isfinite(value) and value >= level:
            return j
    return None


# ------------------------------------------------------------------------------------ running


def run_backtest(config: BacktestConfig) -> BacktestReport:
    """Load the data ``config`` names, run every arm, and write the report (unless disabled)."""
    periods = config.data.load()
    return run_periods(periods, config)


def run_periods(periods: Sequence[Period], config: BacktestConfig) -> BacktestReport:
    """Run every arm of ``config`` over ``periods`` (already loaded) and build the report."""
    if len(periods) < 2:
        raise ValueError(f"a backtest needs at least two periods, got {len(periods)}")
    old_threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        data = _EncodedPeriods.build(periods, config)
        progress = _progress(config, len(config.arms) * (len(periods) - 1))
        results = []
        for i, arm in enumerate(config.arms):
            results.append(_run_arm(arm, i, data, config, progress))
        progress.close()
    finally:
        torch.set_num_threads(old_threads)
    report = BacktestReport(
        name=config.name,
        periods=tuple(p.name for p in periods),
        arms=tuple(results),
        k=config.k,
        events_per_period=tuple(p.train.num_rows for p in periods),
    )
    if config.write_report:
        report = write_report(report, config.resolved_output_dir())
    return report


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


def _request_codes(table: pa.Table) -> np.ndarray:
    """Int code per row of its request, numbered in order of first appearance."""
    if table.num_rows == 0:
        return np.zeros(0, dtype=np.int64)
    encoded = pc.dictionary_encode(table.column("request_id")).combine_chunks()
    return np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64)


def _run_arm(
    arm: Arm, index: int, data: _EncodedPeriods, config: BacktestConfig, progress: Any
) -> ArmResult:
    device = torch.device("cpu")
    n_periods = len(data.names)
    seed = config.seed
    rng = np.random.default_rng(seed)  # the same shuffles for every arm: comparable arms
    model, optimizer = _fresh_model(config)
    strategy = build_strategy(arm.strategy)
    stages = n_periods - 1
    metric_names: list[str] = []
    accuracy: dict[str, np.ndarray] = {}
    prequential: list[dict[str, float]] = []
    events_trained = new_events = rows_scored = 0
    train_s = eval_s = 0.0
    for p in range(1, n_periods):
        progress.set_description(f"{arm.name} {data.names[p]}")
        t0 = time.perf_counter()
        rows, fresh = _update_rows(arm, data, p)
        if rows is not None:
            if fresh:
                model, optimizer = _fresh_model(config)
                strategy = build_strategy(arm.strategy)
            elif arm.reset_optimizer:
                optimizer = make_optimizer(model, config.learning_rate)
            extra_before, scored_before = _extra_rows(strategy), _scored_rows(strategy)
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
            events_trained += result.rows + _extra_rows(strategy) - extra_before
            new_events += result.new_rows
            rows_scored += _scored_rows(strategy) - scored_before
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
        progress.update(1)
        progress.set_postfix({f"recall@{config.k}": f"{metrics[f'recall@{config.k}']:.3f}"})
    return ArmResult(
        name=arm.name,
        schedule=arm.schedule,
        prequential=tuple(prequential),
        accuracy=accuracy,
        events_trained=events_trained,
        new_events=new_events,
        rows_scored=rows_scored,
        train_s=train_s,
        eval_s=eval_s,
    )


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


def _fresh_model(config: BacktestConfig) -> tuple[Ranker, torch.optim.Optimizer]:
    torch.manual_seed(config.seed)
    model = Ranker(config.model)
    return model, make_optimizer(model, config.learning_rate)


def make_optimizer(model: torch.nn.Module, learning_rate: float) -> torch.optim.Optimizer:
    """Adam, fused where torch supports it: the same update, 2-3x faster on this model's dense
    embedding tables (measured on CPU: 23k vs 6k rows/s at batch 256 with 65k-row tables)."""
    try:
        return torch.optim.Adam(model.parameters(), lr=learning_rate, fused=True)
    except (RuntimeError, TypeError, ValueError):  # pragma: no cover - older torch / devices
        return torch.optim.Adam(model.parameters(), lr=learning_rate)


def _extra_rows(strategy: Strategy) -> int:
    """Rows a strategy put through forward/backward outside the training steps (EWC Fisher)."""
    if isinstance(strategy, Combined):
        return sum(_extra_rows(s) for s in strategy.parts)
    if isinstance(strategy, EWC):
        return strategy.fisher_rows_processed
    return 0


def _scored_rows(strategy: Strategy) -> int:
    """Rows a strategy put through a forward pass only (dark replay's recorded targets, pair
    distillation's teacher labels): not in the events budget, reported beside it."""
    if isinstance(strategy, Combined):
        return sum(_scored_rows(s) for s in strategy.parts)
    return int(getattr(strategy, "rows_scored", 0))


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

ITEM_AGE_CLASSES: tuple[tuple[str, int, int], ...] = (
    ("new", 1, 1),
    ("older", 2, 1 << 30),
    ("unseen", -1, -1),
)
"""Item age classes of the clicks scored by ``recall@K <class>``: first trained on in the last
window (``new``), earlier (``older``), or never (``unseen``)."""


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


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def set_description(self, text: str) -> None:
        pass

    def set_postfix(self, values: Mapping[str, str]) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(config: BacktestConfig, total: int) -> Any:
    if not config.progress:
        return _NoProgress()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=config.name, unit="period", dynamic_ncols=True)


# ------------------------------------------------------------------------------------- output


_PLOT_METRICS = ("recall@{k}", "mrr@{k}", "auc", "gauc")


def write_report(report: BacktestReport, directory: str | Path) -> BacktestReport:
    """Write ``report.md``, ``report.json`` and PNG plots; return the report with their paths."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    md = out / "report.md"
    md.write_text(_markdown_document(report) + "\n")
    files.append(md.name)
    js = out / "report.json"
    js.write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    files.append(js.name)
    files.extend(_plots(report, out))
    return BacktestReport(
        report.name,
        report.periods,
        report.arms,
        report.k,
        report.events_per_period,
        out,
        tuple(files),
    )


def _markdown_document(report: BacktestReport) -> str:
    lines = [
        f"# Backtest: {report.name}",
        "",
        f"Periods: {', '.join(report.periods)} (update on p-1, test on p; means over "
        f"{len(report.periods) - 1} tested periods). BWT: backward transfer on held-out slices "
        "(negative = forgetting). Events trained: rows through forward/backward.",
        "",
        report.markdown(),
        "",
    ]
    lines += [
        "## New items",
        "",
        "Clicks grouped by when their item first appeared in a training table: in the last "
        "update window (new), earlier (older), or never (unseen); pooled over tested periods.",
        "",
        report.item_age_markdown(),
        "",
    ]
    for m in (f"recall@{report.k}", "auc"):
        lines += [f"## Prequential {_label(m)} per period", "", _per_period_table(report, m), ""]
    return "\n".join(lines)


def _per_period_table(report: BacktestReport, metric: str) -> str:
    tested = report.periods[1:]
    lines = ["| strategy | " + " | ".join(tested) + " |", "|" + "---|" * (len(tested) + 1)]
    for a in report.arms:
        cells = [_fmt(m.get(metric)) for m in a.prequential]
        lines.append(f"| {a.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plots(report: BacktestReport, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    files = []
    x = np.arange(1, len(report.periods))
    labels = list(report.periods[1:])
    metrics = [m.format(k=report.k) for m in _PLOT_METRICS]
    fig, axes = plt.subplots(2, 2, figsize=(13, 8), sharex=True)
    for ax, metric in zip(axes.ravel(), metrics, strict=True):
        for a in report.arms:
            ax.plot(x, [m.get(metric, np.nan) for m in a.prequential], marker=".", label=a.name)
        ax.set_title(f"prequential {_label(metric)}")
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xticks(x, labels, rotation=45 if len(x) > 8 else 0)
        ax.set_xlabel("tested period")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"backtest {report.name}")
    fig.tight_layout()
    path = out / "metrics_per_period.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    files.append(path.name)
    for metric in metrics:
        fig, ax = plt.subplots(figsize=(9, 4.5))
        for a in report.arms:
            ax.plot(x, [m.get(metric, np.nan) for m in a.prequential], marker=".", label=a.name)
        ax.set_xticks(x, labels, rotation=45 if len(x) > 8 else 0)
        ax.set_ylabel(_label(metric))
        ax.set_xlabel("tested period")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"prequential_{metric.replace('@', '_at_')}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        files.append(path.name)
    return files


# ------------------------------------------------------------------------------------ helpers


def split_by_request(
    table: pa.Table, test_fraction: float, seed: int = 0
) -> tuple[pa.Table, pa.Table]:
    """Split rows into (train, test) by request: a seeded ``test_fraction`` of requests is test.

    >>> t = pa.table({"request_id": ["a", "a", "b", "c", "c", "d"], "x": list(range(6))})
    >>> train, test = split_by_request(t, 0.5, seed=0)
    >>> train.num_rows + test.num_rows, sorted(set(train["request_id"].to_pylist())
    ...     & set(test["request_id"].to_pylist()))
    (6, [])
    """
    codes = _request_codes(table)
    n = int(codes.max()) + 1 if len(codes) else 0
    rng = np.random.default_rng(seed)
    is_test = rng.random(n) < test_fraction
    mask = is_test[codes] if n else np.zeros(0, dtype=bool)
    return table.filter(pa.array(~mask)), table.filter(pa.array(mask))


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _label(metric: str) -> str:
    names = {"auc": "AUC", "gauc": "GAUC", "logloss": "log loss"}
    if metric in names:
        return names[metric]
    head, _, k = metric.partition("@")
    return {"recall": "Recall", "mrr": "MRR", "ndcg": "NDCG"}.get(head, head) + (
        f"@{k}" if k else ""
    )


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def config_summary(config: BacktestConfig) -> dict[str, Any]:
    """A JSON-able description of a config (for the report and RESULTS.md)."""
    return _jsonable(_plain(asdict(config)))


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------------------- command line

ARM_NAMES: tuple[str, ...] = (
    "static",
    "finetune",
    "replay",
    "replay-balanced",
    "ewc",
    "ewc-separate",
    "lwf",
    "replay+lwf",
    "joint",
    "sliding",
)
"""Arm names :func:`arms_from_names` understands (``+`` joins incremental strategies)."""

DEFAULT_ARM_NAMES: tuple[str, ...] = (
    "static",
    "finetune",
    "replay",
    "ewc",
    "lwf",
    "replay+lwf",
    "joint",
    "sliding",
)


def arms_from_names(
    names: Sequence[str],
    window: int = 3,
    replay: ReplayConfig | None = None,
    ewc: EWCConfig | None = None,
    lwf: LwFConfig | None = None,
    others: Sequence[StrategyConfig] = (),
    reset_optimizer: bool = False,
) -> tuple[Arm, ...]:
    """Arms from short names; ``replay`` / ``ewc`` / ``lwf`` carry the tunables every arm with
    that part uses (the buffer kind and EWC mode still come from the name; ``replay``'s
    capacity, mix ratio and seed also apply to ``dark-replay``). ``others`` holds tuned configs
    of any other strategy type, used wherever a part has that type. A ``:N`` suffix gives the
    arm its own number of passes per update (``lwf:3``); ``reset_optimizer`` applies to every
    incremental arm.

    >>> [a.name for a in arms_from_names(["finetune", "replay+lwf", "sliding"], window=2)]
    ['finetune', 'replay+lwf', 'sliding-2']
    >>> arms_from_names(["lwf:3"])[0].epochs
    3
    >>> arms_from_names(["dark-replay"], replay=ReplayConfig(mix_ratio=0.25))[0].strategy
    DarkReplayConfig(capacity=50000, mix_ratio=0.25, buffer=<BufferKind.RESERVOIR: \
'reservoir'>, positive_fraction=0.5, seed=0, hard_weight=0.0)
    """
    replay, ewc, lwf = replay or ReplayConfig(), ewc or EWCConfig(), lwf or LwFConfig()
    by_type = {type(c): c for c in others}

    def tuned(part: StrategyConfig) -> StrategyConfig:
        if isinstance(part, ReplayConfig):
            own = by_type.get(type(part), part)
            shared = {f.name: getattr(replay, f.name) for f in dataclasses.fields(ReplayConfig)}
            extra = {
                f.name: getattr(own, f.name)
                for f in dataclasses.fields(own)  # type: ignore[arg-type]
                if f.name not in shared
            }
            return type(part)(**{**shared, "buffer": part.buffer}, **extra)
        if isinstance(part, EWCConfig):
            return dataclasses.replace(ewc, mode=part.mode)
        if isinstance(part, LwFConfig):
            return lwf
        return by_type.get(type(part), part)

    arms = []
    for full in names:
        full = full.strip().lower()
        name, _, passes = full.partition(":")
        epochs = int(passes) if passes else None
        suffix = f":{epochs}" if epochs else ""
        if name == "static":
            arms.append(Arm("static" + suffix, Schedule.STATIC, epochs=epochs))
        elif name == "joint":
            arms.append(Arm("joint" + suffix, Schedule.JOINT, epochs=epochs))
        elif name.startswith("sliding"):
            arms.append(
                Arm(f"sliding-{window}{suffix}", Schedule.SLIDING, window=window, epochs=epochs)
            )
        else:
            strategy = parse_strategy(name)
            if isinstance(strategy, CombinedConfig):
                strategy = CombinedConfig(tuple(tuned(p) for p in strategy.parts))  # type: ignore[arg-type]
            else:
                strategy = tuned(strategy)
            arms.append(
                Arm(
                    name + suffix,
                    strategy=strategy,
                    epochs=epochs,
                    reset_optimizer=reset_optimizer,
                )
            )
    return tuple(arms)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The backtest's command-line options (used by ``jobs/backtest.py`` and the CLI)."""
    parser.add_argument(
        "--data", choices=("simulator", "diginetica", "parquet"), default="simulator"
    )
    parser.add_argument("--name", default=None, help="report name (default: the data source)")
    parser.add_argument(
        "--arms",
        default=",".join(DEFAULT_ARM_NAMES),
        help=f"comma-separated arms from {', '.join(ARM_NAMES)} (default: %(default)s)",
    )
    parser.add_argument("--window", type=int, default=3, help="sliding-window retrain periods")
    parser.add_argument("--replay-capacity", type=int, default=ReplayConfig.capacity)
    parser.add_argument("--replay-ratio", type=float, default=ReplayConfig.mix_ratio)
    parser.add_argument("--ewc-lambda", type=float, default=EWCConfig.lam)
    parser.add_argument("--ewc-decay", type=float, default=EWCConfig.decay)
    parser.add_argument("--lwf-alpha", type=float, default=LwFConfig.alpha)
    parser.add_argument("--lwf-temperature", type=float, default=LwFConfig.temperature)
    parser.add_argument("--batch-size", type=int, default=BacktestConfig.batch_size)
    parser.add_argument("--learning-rate", type=float, default=BacktestConfig.learning_rate)
    parser.add_argument("--epochs", type=int, default=BacktestConfig.epochs)
    parser.add_argument("--k", type=int, default=BacktestConfig.k, help="Recall@K / MRR@K")
    parser.add_argument(
        "--forgetting-requests",
        type=int,
        default=BacktestConfig.forgetting_requests,
        help="requests per held-out slice for the accuracy matrix (0: skip forgetting)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: leave as is)")
    parser.add_argument("--output-dir", default=None, help="default: bench/out/backtest-<name>")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--report", action=argparse.BooleanOptionalAction, default=True)
    model = parser.add_argument_group("model")
    defaults = FeatureConfig()
    model.add_argument("--embedding-dim", type=int, default=RankerConfig.embedding_dim)
    model.add_argument("--user-buckets", type=int, default=defaults.user_buckets)
    model.add_argument("--item-buckets", type=int, default=defaults.item_buckets)
    model.add_argument("--query-buckets", type=int, default=defaults.query_buckets)
    sim = parser.add_argument_group("simulator data")
    sim.add_argument("--sim-periods", type=int, default=SimulatorData.periods)
    sim.add_argument("--sim-requests", type=int, default=SimulatorData.requests_per_period)
    sim.add_argument("--shift-at", type=int, default=None, help="planted shift before period N")
    sim.add_argument("--sim-users", type=int, default=SimulatorConfig.n_users)
    sim.add_argument("--sim-items", type=int, default=SimulatorConfig.n_items)
    dg = parser.add_argument_group("DIGINETICA data")
    dg.add_argument("--diginetica-path", default=None, help="default: ../shared/data/diginetica")
    dg.add_argument("--periods", default=None, help="e.g. 0-16 or 0,1,2 (default: all found)")
    dg.add_argument("--candidates", type=int, default=DigineticaConfig.candidates)
    dg.add_argument("--train-candidates", type=int, default=DigineticaConfig.train_candidates)
    dg.add_argument("--test-requests", type=int, default=DigineticaConfig.test_requests)
    dg.add_argument(
        "--train-session-fraction", type=float, default=DigineticaConfig.train_session_fraction
    )
    dg.add_argument(
        "--negatives", choices=[n.value for n in NegativeSampling], default="popularity"
    )
    dg.add_argument("--history", type=int, default=DigineticaConfig.history)
    pq_group = parser.add_argument_group("parquet data")
    pq_group.add_argument("--parquet", nargs="+", default=(), help="one path per period")


def config_from_args(args: argparse.Namespace) -> BacktestConfig:
    """A :class:`BacktestConfig` from options added by :func:`add_arguments`."""
    if args.data == "simulator":
        data: DataSource = SimulatorData(
            SimulatorConfig(seed=args.seed, n_users=args.sim_users, n_items=args.sim_items),
            periods=args.sim_periods,
            requests_per_period=args.sim_requests,
            shift_at=args.shift_at,
        )
    elif args.data == "diginetica":
        data = DigineticaData(
            DigineticaConfig(
                path=args.diginetica_path,
                history=args.history,
                candidates=args.candidates,
                train_candidates=args.train_candidates,
                negatives=NegativeSampling(args.negatives),
                test_requests=args.test_requests,
                train_session_fraction=args.train_session_fraction,
                seed=args.seed,
            ),
            periods=parse_periods(args.periods) if args.periods else None,
        )
    else:
        data = ParquetData(tuple(args.parquet), seed=args.seed)
    features = dataclasses.replace(
        FeatureConfig(),
        user_buckets=args.user_buckets,
        item_buckets=args.item_buckets,
        query_buckets=args.query_buckets,
    )
    arms = arms_from_names(
        [n for n in args.arms.split(",") if n.strip()],
        window=args.window,
        replay=ReplayConfig(capacity=args.replay_capacity, mix_ratio=args.replay_ratio),
        ewc=EWCConfig(lam=args.ewc_lambda, decay=args.ewc_decay),
        lwf=LwFConfig(alpha=args.lwf_alpha, temperature=args.lwf_temperature),
    )
    return BacktestConfig(
        name=args.name or args.data,
        data=data,
        arms=arms,
        model=RankerConfig(features=features, embedding_dim=args.embedding_dim),
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        epochs=args.epochs,
        k=args.k,
        forgetting_requests=args.forgetting_requests or None,
        seed=args.seed,
        output_dir=args.output_dir,
        write_report=args.report,
        progress=args.progress,
        threads=args.threads or None,
    )


def parse_periods(text: str) -> tuple[int, ...]:
    """``"0-3"`` -> (0, 1, 2, 3); ``"0,2,5"`` -> (0, 2, 5); ranges and lists combine.

    >>> parse_periods("0-2,5")
    (0, 1, 2, 5)
    """
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            lo, hi = (int(x) for x in part.split("-", 1))
            out.extend(range(lo, hi + 1))
        elif part:
            out.append(int(part))
    return tuple(out)
