"""What judging a window gives: one `FeatureDrift` per feature and statistic in a `DriftReport`;
`judge`, the one threshold and alarm rule every statistic is held to; and `compare`, which
judges a window against a reference with every statistic in `STATISTICS`.

>>> from freshrank.drift.config import Statistic
>>> from freshrank.drift.statistics import get_statistic
>>> t = DriftThresholds()
>>> judge(get_statistic(Statistic.JS), "query", 0.09, 0.05, t).alarm
True
>>> noisy = {("query", Statistic.JS): (0.06, 0.02)}  # centre, spread: threshold 0.06 + 3 * 0.02
>>> e = judge(get_statistic(Statistic.JS), "query", 0.09, 0.05, t, noise=noisy)
>>> round(e.threshold, 6), e.alarm
(0.12, False)
>>> judge(get_statistic(Statistic.CTR_SHIFT), "ctr", -0.3, 0.25, t).alarm  # magnitude judged
True
>>> judge(get_statistic(Statistic.LINF), "query", 0.9, None, t).alarm  # reported, never alarms
False
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from freshrank.drift.config import DriftThresholds, Statistic
from freshrank.drift.statistics import STATISTICS, DriftStatistic, Sides, get_statistic

if TYPE_CHECKING:
    from freshrank.drift.profile import ReferenceProfile
    from freshrank.drift.window import WindowSketch


@dataclass(frozen=True)
class FeatureDrift:
    """One statistic of one feature for one window.

    ``value`` is None when there was too little data to judge. For ``UNSEEN_RATE`` the
    threshold is the reference's own unseen rate plus the allowed excess; for ``CTR_SHIFT`` the
    value is signed and its magnitude is compared. ``alarm`` is False for non-alarming
    statistics (``LINF`` is reported beside ``JS`` and alarms never).
    """

    feature: str
    statistic: Statistic
    value: float | None
    threshold: float | None
    alarm: bool = False

    @property
    def severity(self) -> float:
        """``value / threshold`` (``|value|`` for the two-sided CTR shift): above 1 means over
        the threshold; 0 when not judged."""
        if self.value is None or not self.threshold:
            return 0.0
        return get_statistic(self.statistic).magnitude(self.value) / self.threshold

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "feature": self.feature,
            "statistic": self.statistic.value,
            "value": self.value,
            "threshold": self.threshold,
            "alarm": self.alarm,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureDrift:
        """Inverse of `to_dict`."""
        return cls(
            feature=str(data["feature"]),
            statistic=Statistic(data["statistic"]),
            value=None if data.get("value") is None else float(data["value"]),
            threshold=None if data.get("threshold") is None else float(data["threshold"]),
            alarm=bool(data.get("alarm", False)),
        )


@dataclass(frozen=True)
class DriftReport:
    """Drift of one window against a reference: one `FeatureDrift` per feature and statistic."""

    rows: int
    reference_rows: int
    entries: tuple[FeatureDrift, ...] = field(default=())

    @property
    def alarm(self) -> bool:
        """Whether any statistic is over its threshold."""
        return any(e.alarm for e in self.entries)

    @property
    def alarms(self) -> tuple[FeatureDrift, ...]:
        """The entries over their thresholds."""
        return tuple(e for e in self.entries if e.alarm)

    def get(self, feature: str, statistic: Statistic) -> FeatureDrift | None:
        """The entry for ``feature`` and ``statistic``, if the report has one."""
        for e in self.entries:
            if e.feature == feature and e.statistic is statistic:
                return e
        return None

    def value(self, feature: str, statistic: Statistic) -> float | None:
        """The value for ``feature`` and ``statistic`` (None if absent or not judged)."""
        entry = self.get(feature, statistic)
        return entry.value if entry is not None else None

    def leaders(self, n: int = 3) -> list[FeatureDrift]:
        """The ``n`` judged entries closest to (or furthest over) their thresholds."""
        judged = [e for e in self.entries if e.value is not None and e.threshold]
        judged.sort(key=lambda e: (-e.severity, e.feature, e.statistic.value))
        return judged[:n]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the monitor's state keeps its last report in this form)."""
        return {
            "rows": self.rows,
            "reference_rows": self.reference_rows,
            "alarm": self.alarm,
            "entries": [e.to_dict() for e in self.entries],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DriftReport:
        """Inverse of `to_dict`."""
        return cls(
            rows=int(data.get("rows", 0)),
            reference_rows=int(data.get("reference_rows", 0)),
            entries=tuple(FeatureDrift.from_dict(e) for e in data.get("entries", ())),
        )


Noise = Mapping[tuple[str, Statistic], tuple[float, float]]
"""Per (feature, statistic): its typical value and noise (robust centre and spread)."""


def judge(
    statistic: DriftStatistic,
    feature: str,
    value: float | None,
    threshold: float | None,
    thresholds: DriftThresholds,
    *,
    judged: bool = True,
    warm: bool = True,
    noise: Noise | None = None,
) -> FeatureDrift:
    """The one rule every statistic is judged by.

    No value when there was too little data (``judged`` False) or it is not finite; with
    ``noise`` (what `DriftMonitor` keeps), the threshold is raised to the statistic's typical
    value plus ``noise_z`` times its spread (`DriftStatistic.raised`); the statistic's own
    `~DriftStatistic.alarm` rule decides, and nothing alarms before the reference is ``warm``.
    """
    if not judged or (value is not None and not math.isfinite(value)):
        value = None
    guard = (noise or {}).get((feature, statistic.kind))
    if guard is not None and threshold is not None and thresholds.noise_z > 0:
        centre, spread = guard
        threshold = statistic.raised(threshold, centre, spread, thresholds.noise_z)
    alarm = warm and statistic.alarm(value, threshold)
    return FeatureDrift(feature, statistic.kind, value, threshold, alarm)


def compare(
    reference: ReferenceProfile,
    current: WindowSketch,
    thresholds: DriftThresholds | None = None,
    noise: Noise | None = None,
) -> DriftReport:
    """Judge ``current`` against ``reference`` with every statistic. Pure: neither argument
    is modified.

    Statistics without enough data on either side (``min_rows``) come back with value None
    and never alarm, so an empty window, or the first window before any reference, is judged
    as "nothing to say". With ``noise`` (what `DriftMonitor` keeps), each threshold becomes
    ``max(fixed threshold, centre + noise_z * spread)`` (magnitudes for the CTR shift).
    """
    t = thresholds if thresholds is not None else DriftThresholds()
    if current.config != reference.config:
        raise ValueError("the window and the reference were sketched with different configs")
    sides = Sides(reference, current, t)
    judged = current.rows >= t.min_rows and sides.reference_window.rows >= t.min_rows
    warm = reference.windows_absorbed >= t.warmup_windows
    entries = tuple(
        judge(
            stat,
            feature,
            stat.value(sides, feature),
            stat.threshold(sides, feature),
            t,
            judged=judged,
            warm=warm,
            noise=noise,
        )
        for stat in STATISTICS
        for feature in stat.features(current.config)
    )
    return DriftReport(
        rows=current.rows, reference_rows=sides.reference_window.rows, entries=entries
    )


__all__ = ["DriftReport", "FeatureDrift", "Noise", "compare", "judge"]
