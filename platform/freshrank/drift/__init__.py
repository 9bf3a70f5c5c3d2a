"""Drift: mergeable window sketches, the reference profile, the drift statistics and the monitor
that compares serving and training windows against the reference."""

from freshrank.drift.monitor import (
    DriftMonitor,
    DriftReport,
    DriftSource,
    DriftThresholds,
    FeatureDrift,
    ReferenceProfile,
    SketchConfig,
    Statistic,
    WindowSketch,
    compare,
)

__all__ = [
    "DriftMonitor",
    "DriftReport",
    "DriftSource",
    "DriftThresholds",
    "FeatureDrift",
    "ReferenceProfile",
    "SketchConfig",
    "Statistic",
    "WindowSketch",
    "compare",
]
