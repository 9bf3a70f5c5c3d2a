"""What a backtest measured: per arm, the prequential metrics of every tested period, the
accuracy matrix behind backward transfer, the events it trained on and its time.

**Forgetting**: after each update, held-out slices (the first ``forgetting_requests`` requests
of every test table up to the next period) are scored too, which fills an accuracy matrix
``R[j, i]`` (quality on period ``i`` after training through period ``j``) and gives backward
transfer ``BWT = mean_i (R[last, i] - R[i, i])`` (negative = forgetting).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from freshrank.learn.backtest.arms import Schedule

__all__ = [
    "ITEM_AGE_CLASSES",
    "ArmResult",
    "BacktestReport",
    "backward_transfer",
    "recovery_windows",
]

ITEM_AGE_CLASSES: tuple[tuple[str, int, int], ...] = (
    ("new", 1, 1),
    ("older", 2, 1 << 30),
    ("unseen", -1, -1),
)
"""Item age classes of the clicks scored by ``recall@K <class>``: first trained on in the last
window (``new``), earlier (``older``), or never (``unseen``)."""


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
    events_per_update: tuple[int, ...] = ()
    """``events_trained`` split by update: entry ``p - 1`` is what the update before testing
    period ``p`` trained on (sums to ``events_trained``)."""

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

    def series(self, metric: str) -> list[float]:
        """``metric`` per tested period (period 1 first), NaN where it was not measured."""
        return [float(m.get(metric, float("nan"))) for m in self.prequential]

    def recovery_windows(
        self, shift_at: int, metric: str = "auc", tolerance: float = 0.01, baseline: int = 2
    ) -> int | None:
        """Windows after a shift before period ``shift_at`` until ``metric`` is back within
        ``tolerance`` of its pre-shift level (see :func:`recovery_windows`)."""
        return recovery_windows(self.series(metric), shift_at - 1, tolerance, baseline)

    def recall_by_item_age(self, k: int) -> dict[str, float]:
        """Recall@``k`` of the clicks of each item-age class (``ITEM_AGE_CLASSES``), pooled
        over the tested periods (each period weighted by its clicks of that class)."""
        return {n: _click_weighted(self.prequential, n, k) for n, _, _ in ITEM_AGE_CLASSES}

    def clicks_by_item_age(self) -> dict[str, int]:
        """Test clicks of each item-age class, summed over the tested periods."""
        return {
            n: int(sum(m.get(f"clicks {n}", 0.0) for m in self.prequential))
            for n, _, _ in ITEM_AGE_CLASSES
        }


@dataclass(frozen=True)
class BacktestReport:
    """Every arm's results over the periods of one backtest."""

    name: str
    periods: tuple[str, ...]
    arms: tuple[ArmResult, ...]
    k: int
    events_per_period: tuple[int, ...]

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
                    "events_per_update": list(a.events_per_update),
                    "train_s": a.train_s,
                    "eval_s": a.eval_s,
                }
                for a in self.arms
            ],
        }


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


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
