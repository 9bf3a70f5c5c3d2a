"""The drift statistics, one small object each, and `STATISTICS`, the registry of all of them.

A statistic declares:

* ``kind``: its `Statistic` member (its name is ``kind.value``), ``metric``: the Prometheus
  series it is exported as, and what its values look like (``signed``: may be negative;
  ``two_sided``: its magnitude is what crosses the threshold; ``unit``; ``null``: its value
  when the window looks like the reference);
* `~DriftStatistic.features`: which features of a `SketchConfig` it judges;
* `~DriftStatistic.value`: its value for one feature, from the reference and the window
  (a `Sides`), or None when there is nothing to compute;
* `~DriftStatistic.threshold`: the fixed threshold it is held to (None: report, never alarm);
* `~DriftStatistic.alarm`: whether a value over a threshold alarms (``alarms = False``: never).

What every statistic shares (too little data: no value; the threshold raised by the statistic's
own noise; no alarm while the reference warms up) is one rule, `freshrank.drift.report.judge`;
`compare`, `DriftMonitor.check` and `DriftMonitor.check_scores` apply it to what they iterate
over here. A new statistic is a subclass, a member of `Statistic` and an instance in
`STATISTICS`; the contract suite (``tests/unit/test_drift_contract.py``) fails until it has a
case for it. For example the CTR shift::

    class CtrShift(DriftStatistic):
        kind, metric = Statistic.CTR_SHIFT, "freshrank_ctr_shift"
        signed = two_sided = True

        def features(self, config):
            return (CTR,)

        def value(self, sides, feature):
            ref, now = sides.reference_window.ctr, sides.window.ctr
            return now / ref - 1.0 if ref and now is not None else None

        def threshold(self, sides, feature):
            return sides.thresholds.ctr_shift

>>> [s.name for s in STATISTICS]
['psi', 'js', 'linf', 'unseen_rate', 'ctr_shift', 'surprise']
>>> get_statistic(Statistic.CTR_SHIFT).magnitude(-0.3)
0.3
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from freshrank.drift.config import (
    CTR,
    PRICE,
    SCORE,
    DriftThresholds,
    SketchConfig,
    Statistic,
)
from freshrank.drift.divergences import js_divergence, linf_distance, psi, top_k_distributions

if TYPE_CHECKING:
    from freshrank.drift.profile import ReferenceProfile
    from freshrank.drift.window import WindowSketch


@dataclass(frozen=True)
class Sides:
    """What a statistic compares: the reference, the window judged against it, and the
    thresholds (``top_k``, the fixed thresholds). Nothing in it is modified."""

    reference: ReferenceProfile
    window: WindowSketch
    thresholds: DriftThresholds

    @cached_property
    def reference_window(self) -> WindowSketch:
        """The reference's kept windows merged into one sketch (its distributions)."""
        return self.reference.distribution()

    def top_k(self, feature: str) -> tuple[np.ndarray, np.ndarray]:
        """Both sides' counts of categorical ``feature`` on their top-k cells plus "other"."""
        return top_k_distributions(
            self.reference_window.categorical[feature].counts,
            self.window.categorical[feature].counts,
            self.thresholds.top_k,
        )


class DriftStatistic(ABC):
    """One drift statistic: its name, value, threshold and alarm rule (see the module)."""

    kind: ClassVar[Statistic]
    metric: ClassVar[str]
    """Prometheus series of its values (tagged ``feature``; see `series`)."""
    signed: ClassVar[bool] = False
    """Whether values may be negative (a shift, an excess over a baseline)."""
    two_sided: ClassVar[bool] = False
    """Whether the magnitude ``|value|`` is what is held to the threshold."""
    alarms: ClassVar[bool] = True
    """False for statistics that are reported beside another and never alarm."""
    unit: ClassVar[str] = ""
    null: ClassVar[float] = 0.0
    """The value when the window's distribution is the reference's."""

    @property
    def name(self) -> str:
        """``kind.value``, e.g. ``"psi"``."""
        return self.kind.value

    @abstractmethod
    def features(self, config: SketchConfig) -> tuple[str, ...]:
        """The features (report entries) this statistic judges under ``config``."""

    @abstractmethod
    def value(self, sides: Sides, feature: str) -> float | None:
        """The statistic of ``feature`` (None or NaN when there is nothing to compute)."""

    @abstractmethod
    def threshold(self, sides: Sides, feature: str) -> float | None:
        """The fixed threshold of ``feature`` (None: reported without an alarm)."""

    def magnitude(self, value: float) -> float:
        """What is compared with the threshold: ``|value|`` when two-sided, else ``value``."""
        return abs(value) if self.two_sided else value

    def alarm(self, value: float | None, threshold: float | None) -> bool:
        """Whether ``value`` is over ``threshold`` and this statistic alarms at all."""
        if not self.alarms or value is None or threshold is None:
            return False
        return self.magnitude(value) > threshold

    def raised(self, threshold: float, centre: float, spread: float, z: float) -> float:
        """``threshold`` raised above the statistic's own noise: at least ``|centre| + z *
        spread`` for a two-sided statistic, ``centre + z * spread`` otherwise."""
        return max(threshold, self.magnitude(centre) + z * spread)

    def series(self, feature: str) -> tuple[str, dict[str, str]]:
        """The Prometheus series (name, tags) of ``feature``'s value."""
        return self.metric, {"feature": feature}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class PopulationStability(DriftStatistic):
    """PSI of the numeric features: ``log1p(price)`` and the relevance score."""

    kind, metric = Statistic.PSI, "freshrank_drift_psi"

    def features(self, config: SketchConfig) -> tuple[str, ...]:
        return (PRICE, SCORE)

    def value(self, sides: Sides, feature: str) -> float | None:
        return psi(
            sides.reference_window.numeric[feature].counts, sides.window.numeric[feature].counts
        )

    def threshold(self, sides: Sides, feature: str) -> float | None:
        t = sides.thresholds
        return t.score_psi if feature == SCORE else t.psi


class JensenShannon(DriftStatistic):
    """Jensen-Shannon divergence (bits) of each categorical feature, on top-k + "other"."""

    kind, metric = Statistic.JS, "freshrank_drift_js"

    def features(self, config: SketchConfig) -> tuple[str, ...]:
        return config.categorical_features

    def value(self, sides: Sides, feature: str) -> float | None:
        return js_divergence(*sides.top_k(feature))

    def threshold(self, sides: Sides, feature: str) -> float | None:
        return sides.thresholds.js


class LInfinity(DriftStatistic):
    """The largest change in any top-k cell's share; reported beside JS, never alarms."""

    kind, metric = Statistic.LINF, "freshrank_drift_linf"
    alarms = False

    def features(self, config: SketchConfig) -> tuple[str, ...]:
        return config.categorical_features

    def value(self, sides: Sides, feature: str) -> float | None:
        return linf_distance(*sides.top_k(feature))

    def threshold(self, sides: Sides, feature: str) -> float | None:
        return None


class UnseenRate(DriftStatistic):
    """Share of a window's ids the reference never trained on; held to the reference's own
    rate (when its windows arrived) plus ``unseen_excess``, with no alarm before it has one."""

    kind, metric = Statistic.UNSEEN_RATE, "freshrank_drift_unseen_rate"

    def features(self, config: SketchConfig) -> tuple[str, ...]:
        return config.unseen_features

    def value(self, sides: Sides, feature: str) -> float | None:
        return sides.window.unseen_rate(feature)

    def threshold(self, sides: Sides, feature: str) -> float | None:
        if not sides.reference.has_unseen_baseline(feature):
            return None  # no baseline yet: report the rate, raise no alarm
        return sides.reference.unseen_baseline(feature) + sides.thresholds.unseen_excess


class CtrShift(DriftStatistic):
    """Relative click-through-rate change ``ctr / ctr_ref - 1`` (signed; magnitude judged)."""

    kind, metric = Statistic.CTR_SHIFT, "freshrank_ctr_shift"
    signed = two_sided = True

    def features(self, config: SketchConfig) -> tuple[str, ...]:
        return (CTR,)

    def value(self, sides: Sides, feature: str) -> float | None:
        ref, now = sides.reference_window.ctr, sides.window.ctr
        return now / ref - 1.0 if ref and now is not None else None

    def threshold(self, sides: Sides, feature: str) -> float | None:
        return sides.thresholds.ctr_shift

    def series(self, feature: str) -> tuple[str, dict[str, str]]:
        return self.metric, {}  # one CTR per window: no feature tag


class Surprise(DriftStatistic):
    """Mean ``-log p(value | key)`` (nats) of each conditional pair (a row's category given its
    user) above what the reference's own windows had when they arrived."""

    kind, metric = Statistic.SURPRISE, "freshrank_drift_surprise"
    signed = True
    unit = "nats"

    def features(self, config: SketchConfig) -> tuple[str, ...]:
        return config.pair_names

    def value(self, sides: Sides, feature: str) -> float | None:
        baseline = sides.reference.surprise_baseline(feature)
        now = sides.window.mean_surprise(feature)
        return now - baseline if now is not None and baseline is not None else None

    def threshold(self, sides: Sides, feature: str) -> float | None:
        return sides.thresholds.surprise


STATISTICS: tuple[DriftStatistic, ...] = (
    PopulationStability(),
    JensenShannon(),
    LInfinity(),
    UnseenRate(),
    CtrShift(),
    Surprise(),
)
"""Every drift statistic, in report order; one per `Statistic` member."""

_BY_KIND = {s.kind: s for s in STATISTICS}


def get_statistic(kind: Statistic) -> DriftStatistic:
    """The registered statistic of ``kind``."""
    try:
        return _BY_KIND[kind]
    except KeyError:
        raise KeyError(f"no drift statistic registered for {kind!r}") from None


__all__ = [
    "STATISTICS",
    "CtrShift",
    "DriftStatistic",
    "JensenShannon",
    "LInfinity",
    "PopulationStability",
    "Sides",
    "Surprise",
    "UnseenRate",
    "get_statistic",
]
