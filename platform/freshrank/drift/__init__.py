"""Drift: mergeable window sketches, the reference profile, the drift statistics and the monitor."""

from freshrank.drift.config import DriftSource, DriftThresholds, SketchConfig, Statistic
from freshrank.drift.monitor import DriftMonitor
from freshrank.drift.profile import ReferenceProfile
from freshrank.drift.report import DriftReport, FeatureDrift, compare, judge
from freshrank.drift.statistics import STATISTICS, DriftStatistic, Sides, get_statistic
from freshrank.drift.window import WindowSketch

__all__ = [
    "STATISTICS",
    "DriftMonitor",
    "DriftReport",
    "DriftSource",
    "DriftStatistic",
    "DriftThresholds",
    "FeatureDrift",
    "ReferenceProfile",
    "Sides",
    "SketchConfig",
    "Statistic",
    "WindowSketch",
    "compare",
    "get_statistic",
    "judge",
]
