"""What a serving replica reports about the model it serves (issue 5, replica side).

:class:`ReplicaObserver` is driven by the replica's :class:`~freshrank.serving.holder.ModelHolder`
(``prepare`` inside the loader, ``swapped`` on a swap, ``load_failed``, ``tick`` on every poll)
and by the request path (``scored`` once per scored batch). It needs no Ray: ``metrics`` is any
`Telemetry` facade, so the unit tests record through a fake one.

Exported (``core/catalogue.py`` has the catalogue):

* ``freshrank_served_model_version{replica}``, ``freshrank_model_swaps_total{replica}``,
  ``freshrank_model_load_failures_total{replica}``, ``freshrank_serving_fallback{replica}`` (1
  while the replica serves another version than its champion or pin, see ``serving``);
* ``freshrank_freshness_seconds{replica}``: now minus the served version's ``watermark``, set on
  every tick of the holder (every ``poll_interval_s``);
* ``freshrank_stage_latency_seconds{stage="promoted_to_live"}``: when the replica starts serving
  the champion, now minus the champion pointer's ``promoted_at``;
* ``freshrank_landed_to_live_seconds``: when the replica starts serving a champion newer than any
  version it served before, now minus each ``shard_landed_at`` of the version's manifest (one
  observation per shard the version trained on, once per replica and version);
* ``freshrank_score_psi{source="serving"}``: drift of the scores this replica served against the
  scores of the version's training reference (its ``drift.npz``), judged by
  ``DriftMonitor.check_scores`` every ``psi_every_rows`` scored rows, or every ``psi_every_s``
  seconds once the rows reach the monitor's ``min_rows``; a fresh histogram follows each check.

The two update-path latencies are observed only for promotions made after the observer started:
a replica (re)starting on a champion promoted an hour ago did not take an hour to swap. A served
version that is not the champion (a pinned one) is not an update and is not observed either.
A version without ``drift.npz`` (older trainers) serves without score drift; that is logged once.

The request path pays one list append per scored batch under an uncontended lock: the scores
are binned (``np.searchsorted`` + ``bincount``, one call for everything since the last look)
when the counts are next read, normally by ``tick`` on the holder's thread, which also runs the
check itself (merging the reference's windows); more than :data:`MAX_PENDING_ROWS` unbinned
scores are binned at once on the request path.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from freshrank.core.telemetry import Telemetry
from freshrank.drift import DriftMonitor, DriftSource, FeatureDrift
from freshrank.drift.sketches import NumericHistogram
from freshrank.registry.checkpoint import DRIFT_FILE, ServingModel
from freshrank.registry.store import Registry
from freshrank.serving.holder import Loaded, ServingStatus

_log = logging.getLogger(__name__)

MAX_PENDING_ROWS = 1 << 16
"""Scores kept unbinned before the request path bins them itself (no tick for a while)."""


def champion_record(registry: Registry) -> dict[str, Any] | None:
    """The champion pointer record as written by ``Registry.set_champion``, or None."""
    return registry.champion_record()


def load_drift_monitor(
    registry: Registry, served: ServingModel, metrics: Telemetry
) -> DriftMonitor | None:
    """The serving drift monitor of a version (from its ``drift.npz``), or None without one.

    The file is read through ``Registry.load_npz`` (checksummed against the manifest,
    ``allow_pickle=False``), which gives the arrays ``freshrank.core.serialization.arrays_from_npz``
    gives for the same bytes.
    """
    files = served.manifest.get("files") or {}
    if DRIFT_FILE not in files:
        return None
    state = registry.load_npz(registry.get(served.version), DRIFT_FILE)
    return DriftMonitor.from_state(state, metrics, source=DriftSource.SERVING)


@dataclass
class _ScoreDrift:
    version: int
    monitor: DriftMonitor
    histogram: NumericHistogram
    since: float
    pending: list[np.ndarray] = field(default_factory=list)
    """Scored batches not binned into ``histogram`` yet (see :meth:`binned`)."""
    pending_rows: int = 0

    def binned(self) -> NumericHistogram:
        """The histogram with every pending batch counted (call under the observer's lock)."""
        if self.pending:
            batches, self.pending, self.pending_rows = self.pending, [], 0
            self.histogram.update(batches[0] if len(batches) == 1 else np.concatenate(batches))
        return self.histogram


class ReplicaObserver:
    """Freshness, update-path latency and served-score drift of one replica (see module doc).

    Args:
        registry: the registry the replica serves from (champion record, ``drift.npz``).
        metrics: where values go (`Telemetry.for_ray()` in a replica).
        replica: the ``replica`` tag value.
        psi_every_rows: judge the score drift after this many scored rows.
        psi_every_s: ... or after this many seconds, once the rows reach the monitor's
            ``thresholds.min_rows`` (fewer rows are not judged; they keep accumulating).
        clock: unix time (tests pass a fake one).
    """

    def __init__(
        self,
        registry: Registry,
        metrics: Telemetry,
        replica: str,
        *,
        psi_every_rows: int = 5000,
        psi_every_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if psi_every_rows < 1:
            raise ValueError(f"psi_every_rows must be >= 1, got {psi_every_rows}")
        if not psi_every_s > 0:
            raise ValueError(f"psi_every_s must be > 0, got {psi_every_s}")
        self._registry = registry
        self._metrics = metrics
        self._tags = {"replica": replica}
        self.psi_every_rows = int(psi_every_rows)
        self.psi_every_s = float(psi_every_s)
        self._clock = clock
        self.started_at = clock()
        self._lock = threading.Lock()  # guards _drift and _pending; held for microseconds
        self._pending: dict[int, DriftMonitor | None] = {}
        self._drift: _ScoreDrift | None = None
        self._observed: set[int] = set()  # versions whose update latencies were observed
        self._newest_served = 0
        self._warned_no_drift = False
        self.last_score_drift: FeatureDrift | None = None

    # ----- holder hooks (background thread) ----------------------------------------------------
    def prepare(self, served: ServingModel) -> ServingModel:
        """Loader hook: read the version's drift reference before the swap (never fails it)."""
        try:
            monitor = load_drift_monitor(self._registry, served, self._metrics)
        except Exception as exc:  # drift is an extra: the model still serves
            _log.warning("version %s: drift.npz unusable (%s), no score drift", served.version, exc)
            monitor = None
        if monitor is None and not self._warned_no_drift:
            self._warned_no_drift = True
            _log.info(
                "version %s has no %s: served-score drift is not judged for such versions "
                "(logged once)",
                served.version,
                DRIFT_FILE,
            )
        with self._lock:
            self._pending[served.version] = monitor
        return served

    def swapped(self, loaded: Loaded) -> None:
        """Swap hook: version gauges, update-path latencies, and the new version's drift.

        Never raises: reporting must not stop a replica from serving (or starting).
        """
        try:
            self._swapped(loaded)
        except Exception:
            _log.exception("reporting the swap to version %s failed", loaded.served.version)

    def _swapped(self, loaded: Loaded) -> None:
        served = loaded.served
        self._metrics.inc("freshrank_model_swaps_total", tags=self._tags)
        self._metrics.set("freshrank_served_model_version", float(served.version), tags=self._tags)
        with self._lock:
            monitor = self._pending.pop(served.version, None)
            self._pending.clear()  # versions loaded but never swapped in
            self._drift = (
                _ScoreDrift(served.version, monitor, monitor.score_histogram(), self._clock())
                if monitor is not None
                else None
            )
        self._observe_update(served)

    def load_failed(self, version: int, message: str) -> None:
        """Error hook: count the failed load (the old model keeps serving)."""
        with self._lock:
            self._pending.pop(version, None)
        try:
            self._metrics.inc("freshrank_model_load_failures_total", tags=self._tags)
        except Exception:
            _log.exception("counting the failed load of version %s failed", version)

    def tick(self, loaded: Loaded | None) -> None:
        """Poll hook: freshness, and the score-drift check when one is due.

        Never raises: it runs on the holder's thread, which must keep following the champion.
        """
        try:
            self._tick(loaded)
        except Exception:
            _log.exception("replica metrics tick failed")

    def _tick(self, loaded: Loaded | None) -> None:
        if loaded is not None and loaded.served.watermark is not None:
            freshness = self._clock() - float(loaded.served.watermark)
            self._metrics.set("freshrank_freshness_seconds", freshness, tags=self._tags)
        if self._check_due():
            self.check_scores()

    def serving(self, status: ServingStatus) -> None:
        """Poll hook: ``freshrank_serving_fallback`` is 1 while the replica serves another
        version than the one it should (or none), 0 otherwise. Never raises."""
        try:
            self._metrics.set(
                "freshrank_serving_fallback", 1.0 if status.fallback else 0.0, tags=self._tags
            )
        except Exception:
            _log.exception("reporting the serving status failed")

    # ----- request path ------------------------------------------------------------------------
    def scored(self, version: int, scores: np.ndarray) -> None:
        """Count a batch of served relevance scores of ``version`` (cheap; no judging here).

        Scores of another version than the live drift monitor's (a batch that started before
        a swap) are left out. ``scores`` is kept, unbinned, until the counts are next read (see
        the module doc): do not modify it afterwards.
        """
        with self._lock:
            drift = self._drift
            if drift is not None and drift.version == version:
                drift.pending.append(scores)
                drift.pending_rows += len(scores)
                if drift.pending_rows > MAX_PENDING_ROWS:
                    drift.binned()

    # ----- judging -----------------------------------------------------------------------------
    @property
    def pending_score_rows(self) -> int:
        """Scores counted since the last check (0 without a drift reference)."""
        with self._lock:
            return self._drift.binned().total if self._drift is not None else 0

    def _check_due(self) -> bool:
        with self._lock:
            drift = self._drift
            if drift is None:
                return False
            rows = drift.binned().total
            if rows >= self.psi_every_rows:
                return True
            waited = self._clock() - drift.since >= self.psi_every_s
            return waited and rows >= drift.monitor.thresholds.min_rows

    def check_scores(self) -> FeatureDrift | None:
        """Judge the scores counted so far (exports ``freshrank_score_psi{source="serving"}``)
        and start a fresh histogram; None without a drift reference or scores."""
        with self._lock:
            drift = self._drift
            if drift is None or drift.binned().total == 0:
                return None
            histogram = drift.histogram
            drift.histogram = drift.monitor.score_histogram()
            drift.since = self._clock()
        result = drift.monitor.check_scores(histogram)
        self.last_score_drift = result
        return result

    # ----- update-path latency -----------------------------------------------------------------
    def _observe_update(self, served: ServingModel) -> None:
        version = served.version
        newest = version > self._newest_served
        self._newest_served = max(self._newest_served, version)
        try:
            record = champion_record(self._registry)
        except Exception as exc:  # a torn read: the latency is lost, serving is not
            _log.warning("champion record unreadable: %s", exc)
            return
        if record is None or record.get("version") != version:
            return  # pinned, or the champion moved on already: not this promotion
        promoted_at = record.get("promoted_at")
        if not isinstance(promoted_at, int | float) or promoted_at < self.started_at:
            return  # promoted before this replica started: not a swap it made
        now = self._clock()
        self._metrics.observe(
            "freshrank_stage_latency_seconds",
            max(0.0, now - float(promoted_at)),
            tags={"stage": "promoted_to_live"},
        )
        if not newest or version in self._observed:
            return  # a rollback to an older version: its shards landed long ago
        self._observed.add(version)
        for landed in (served.manifest.get("shard_landed_at") or {}).values():
            if isinstance(landed, int | float):
                self._metrics.observe(
                    "freshrank_landed_to_live_seconds", max(0.0, now - float(landed))
                )
