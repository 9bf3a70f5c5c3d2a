"""`DriftMonitor`: sketch windows against a reference, judge them, export the statistics.

The trainer keeps one per run and stores its ``state_dict()`` (the reference, each
statistic's recent values and the last report) in each checkpoint as ``drift.npz``
(`freshrank.core.serialization.npz_bytes`, compressed); a serving replica keeps one per
loaded model, built from that file, and judges only the scores it served.

>>> from freshrank.features.encode import FeatureConfig, encode
>>> from freshrank.events.simulator import Simulator, SimulatorConfig
>>> sim = Simulator(SimulatorConfig(seed=1, n_users=300))
>>> monitor = DriftMonitor(thresholds=DriftThresholds(min_rows=1000))
>>> for _ in range(4):
...     window = monitor.sketch(encode(sim.generate(200), FeatureConfig()))
...     _ = monitor.check(window)
...     monitor.absorb(window)
>>> monitor.check(monitor.sketch(encode(sim.generate(200), FeatureConfig()))).alarm
False
>>> sim.planted_shift()  # every user's interests move to other categories
>>> report = monitor.check(monitor.sketch(encode(sim.generate(200), FeatureConfig())))
>>> [(e.feature, e.statistic.value) for e in report.alarms]
[('user_category', 'surprise')]
>>> DriftMonitor.from_state(monitor.state_dict()).last_report == report
True
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from freshrank.drift.config import SCORE, DriftSource, DriftThresholds, SketchConfig, Statistic
from freshrank.drift.profile import ReferenceProfile
from freshrank.drift.report import DriftReport, FeatureDrift, compare, judge
from freshrank.drift.sketches import NumericHistogram, State
from freshrank.drift.statistics import Sides, get_statistic
from freshrank.drift.window import WindowSketch

if TYPE_CHECKING:
    from freshrank.core.telemetry import Telemetry

_HISTORY = "monitor/history/"
_LAST_REPORT = "monitor/last_report"  # utf-8 JSON of DriftReport.to_dict()
_SINCE_REPORT = "monitor/windows_since_report"


class DriftMonitor:
    """Sketch windows against a reference, judge them, and export the statistics.

    The trainer keeps one (source ``TRAINER``): per window it sketches (each worker its part),
    ``check``s the merged sketch before training on it and ``absorb``s it afterwards; the
    reference goes into the checkpoint. A serving replica keeps one per loaded model (source
    ``SERVING``, reference from the model's checkpoint) and exports only the score drift of
    what it served: feature drift is judged by the trainer on the landed events.

    The monitor also remembers each statistic's values over its recent windows, to raise a
    threshold that the statistic's own noise would cross (`DriftThresholds.noise_z`); its
    `state_dict` (the reference, that history and the last report) is what the trainer stores
    as ``drift.npz``, and what ``freshrank status`` reads the latest drift report from.

    Exports (through ``metrics``, skipped for statistics not judged):
    ``freshrank_drift_psi{feature}``, ``freshrank_drift_js{feature}``,
    ``freshrank_drift_linf{feature}``, ``freshrank_drift_unseen_rate{feature}``,
    ``freshrank_drift_surprise{feature}``, ``freshrank_ctr_shift``,
    ``freshrank_score_psi{source}`` and ``freshrank_drift_alarm{feature,statistic}`` (1 when
    over the threshold, else 0; what the Prometheus alert pages on).
    """

    def __init__(
        self,
        reference: ReferenceProfile | None = None,
        metrics: Telemetry | None = None,
        thresholds: DriftThresholds | None = None,
        source: DriftSource = DriftSource.TRAINER,
    ) -> None:
        from freshrank.core.telemetry import NullTelemetry

        if not isinstance(source, DriftSource):
            raise TypeError(f"source must be a DriftSource, got {source!r}")
        self._reference = reference if reference is not None else ReferenceProfile()
        self._metrics = metrics if metrics is not None else NullTelemetry()
        self.thresholds = thresholds if thresholds is not None else DriftThresholds()
        self.source = source
        self.last_report: DriftReport | None = None
        """The last judged report (windows below ``min_rows`` are kept, not judged)."""
        self.windows_since_report = 0
        """Non-empty windows checked since `last_report` was judged (0: the last one was)."""
        self._history: dict[tuple[str, Statistic], np.ndarray] = {}
        self._pending: WindowSketch | None = None
        self._pending_reference: ReferenceProfile | None = None

    def state_dict(self) -> State:
        """The reference's arrays plus ``monitor/history/<feature>/<statistic>`` (float64),
        ``monitor/last_report`` (utf-8 JSON of `DriftReport.to_dict`, when there is one) and
        ``monitor/windows_since_report`` (int64)."""
        state = self._reference.state_dict()
        for (feature, stat), values in self._history.items():
            state[f"{_HISTORY}{feature}/{stat.value}"] = values.copy()
        if self.last_report is not None:
            text = json.dumps(self.last_report.to_dict(), sort_keys=True)
            state[_LAST_REPORT] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()
        state[_SINCE_REPORT] = np.array([self.windows_since_report], dtype=np.int64)
        return state

    @classmethod
    def from_state(
        cls,
        state: Mapping[str, np.ndarray],
        metrics: Telemetry | None = None,
        thresholds: DriftThresholds | None = None,
        source: DriftSource = DriftSource.TRAINER,
    ) -> DriftMonitor:
        """A monitor continuing from `state_dict` (e.g. the latest checkpoint's ``drift.npz``)."""
        monitor = cls(ReferenceProfile.from_state(state), metrics, thresholds, source)
        for key, values in state.items():
            if key.startswith(_HISTORY):
                feature, _, stat = key[len(_HISTORY) :].rpartition("/")
                history = np.asarray(values, dtype=np.float64).ravel()
                monitor._history[(feature, Statistic(stat))] = history.copy()
        if _LAST_REPORT in state:
            text = np.asarray(state[_LAST_REPORT], dtype=np.uint8).tobytes().decode("utf-8")
            monitor.last_report = DriftReport.from_dict(json.loads(text))
        if _SINCE_REPORT in state:
            monitor.windows_since_report = int(np.asarray(state[_SINCE_REPORT]).ravel()[0])
        return monitor

    def noise(self) -> dict[tuple[str, Statistic], tuple[float, float]]:
        """Centre and spread (median, 1.4826 x MAD) of each statistic's recent values."""
        out = {}
        for key, values in self._history.items():
            if len(values) >= self.thresholds.noise_min_windows:
                centre = float(np.median(values))
                out[key] = (centre, 1.4826 * float(np.median(np.abs(values - centre))))
        return out

    @property
    def reference(self) -> ReferenceProfile:
        """The current reference profile (checkpoint `state_dict`, which includes it)."""
        return self._reference

    @property
    def config(self) -> SketchConfig:
        """The sketch layout of the reference."""
        return self._reference.config

    def sketch(
        self,
        rows: Mapping[str, np.ndarray],
        scores: np.ndarray | None = None,
        labelled: bool | None = None,
    ) -> WindowSketch:
        """Sketch encoded ``rows`` against the reference (labelled unless serving)."""
        serving = self.source is DriftSource.SERVING
        return WindowSketch.from_rows(
            rows,
            self.config,
            scores=scores,
            labelled=(not serving) if labelled is None else labelled,
            reference=self._reference,
            track_ids=not serving,
        )

    @property
    def pending_rows(self) -> int:
        """Rows of windows kept for judging together with the next ones (see ``min_rows``)."""
        return self._pending.rows if self._pending is not None else 0

    def check(self, window: WindowSketch) -> DriftReport:
        """Judge ``window`` against the reference, export what was judged, and remember the
        values (they make the noise estimate of the following windows).

        A window smaller than ``thresholds.min_rows`` is kept and judged together with the
        next windows once they add up to that many rows; meanwhile the report says "not
        judged" (values None) and nothing is exported. An empty window changes nothing.
        """
        if window.rows == 0:
            return compare(self._reference, window, self.thresholds)
        self.windows_since_report += 1
        if self._pending is None:
            # Judge the kept windows against the reference from before the first of them.
            self._pending, self._pending_reference = window, self._reference
        else:
            self._pending = self._pending.merge(window)
        reference = self._pending_reference or self._reference
        if self._pending.rows < self.thresholds.min_rows:
            return compare(reference, self._pending, self.thresholds)
        pending, self._pending, self._pending_reference = self._pending, None, None
        report = compare(reference, pending, self.thresholds, self.noise())
        self.last_report, self.windows_since_report = report, 0
        self._export(report)
        self._remember(report)
        return report

    def absorb(self, window: WindowSketch) -> None:
        """Make ``window`` part of the reference (after the model trained on it)."""
        self._reference = self._reference.absorb(window)

    def replace_reference(self, reference: ReferenceProfile) -> None:
        """Judge against another reference from now on (e.g. a newly loaded model's)."""
        self._reference = reference

    def score_histogram(self) -> NumericHistogram:
        """An empty histogram on the reference's score edges: cheap to `update` per request."""
        return NumericHistogram(self.config.score_edges)

    def check_scores(self, scores: NumericHistogram) -> FeatureDrift:
        """Judge a score histogram alone against the reference and export its PSI.

        The serving path: a replica updates a `score_histogram` with every response's scores
        (microseconds) and checks it now and then, instead of sketching whole requests. The
        same statistic and rule as `check` (no warm-up: the reference is a trained model's).
        """
        t = self.thresholds
        sides = Sides(self._reference, WindowSketch(self.config, track_ids=False), t)
        reference = sides.reference_window.numeric[SCORE]
        if not reference.same_layout(scores):
            raise ValueError("the score histogram is not on the reference's score edges")
        judged = scores.total >= t.min_rows and reference.total >= t.min_rows
        sides.window.numeric[SCORE] = scores.copy()
        stat = get_statistic(Statistic.PSI)
        value = stat.value(sides, SCORE) if judged else None
        entry = judge(stat, SCORE, value, stat.threshold(sides, SCORE), t, noise=self.noise())
        report = DriftReport(rows=scores.total, reference_rows=reference.total, entries=(entry,))
        self._remember(report)
        self._export(report)
        return entry

    def _remember(self, report: DriftReport) -> None:
        """Append each judged value to its statistic's recent values (the noise estimate)."""
        keep = self.thresholds.noise_windows
        for e in report.entries:
            if e.value is not None and e.threshold is not None:
                key = (e.feature, e.statistic)
                values = np.append(self._history.get(key, np.zeros(0)), e.value)
                self._history[key] = values[-keep:]

    def _export(self, report: DriftReport) -> None:
        m = self._metrics
        serving = self.source is DriftSource.SERVING
        for e in report.entries:
            if e.value is None:
                continue
            stat = get_statistic(e.statistic)
            if e.feature == SCORE and e.statistic is Statistic.PSI:
                m.set("freshrank_score_psi", e.value, tags={"source": self.source.value})
            elif serving:
                continue  # feature drift is the trainer's to judge
            else:
                name, tags = stat.series(e.feature)
                m.set(name, e.value, tags=tags or None)
            if not serving and e.threshold is not None and stat.alarms:
                tags = {"feature": e.feature, "statistic": e.statistic.value}
                m.set("freshrank_drift_alarm", 1.0 if e.alarm else 0.0, tags=tags)


__all__ = ["DriftMonitor"]
