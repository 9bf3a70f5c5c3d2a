"""What rank 0 publishes after a window: the checkpoint version (manifest with cursor,
watermark, metrics, timings; weights, optimizer, every rank's strategy state, drift state) and
the window's Prometheus series. Promotion is decided afterwards by the promotion policy.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from freshrank.core.catalogue import ROW_DROP_REASONS
from freshrank.core.serialization import npz_bytes
from freshrank.drift.monitor import DriftMonitor
from freshrank.learn.feed import Window
from freshrank.learn.gating import say
from freshrank.model.ranker import Ranker
from freshrank.registry.checkpoint import DRIFT_FILE, TrainingState, save_checkpoint
from freshrank.registry.store import Registry, VersionInfo

__all__ = [
    "WindowProgress",
    "WindowReport",
    "checkpoint_window",
    "export_row_counts",
    "export_window_metrics",
]


@dataclass
class WindowProgress:
    """Where the trainer stands: the last version it published, windows and events so far,
    and the windows skipped since that version (no row to train: their counts go into the
    next version's manifest, and meanwhile into ``TRAINER``)."""

    version: int | None
    windows: int
    events_trained: int
    watermark: float | None
    skipped: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_state(cls, state: TrainingState | None) -> WindowProgress:
        """Progress as of ``state``; a stored watermark later than now (written before
        watermarks were bounded by the clock) is not trusted, so one bad timestamp cannot
        hold the watermark in the future for good."""
        if state is None:
            return cls(None, 0, 0, None)
        watermark = state.watermark
        if watermark is not None and not watermark <= time.time():
            say(f"v{state.version}'s watermark {watermark} is in the future: not carried on")
            watermark = None
        return cls(
            state.version,
            int(state.manifest.get("window_index", 0)),
            state.events_trained,
            watermark,
        )

    def skip(self, window: Window) -> dict[str, Any]:
        """Count a window with no row to train (every row dropped, or only quarantined
        shards); returns the counts since the last version."""
        s = self.skipped
        s["windows"] = s.get("windows", 0) + 1
        s.setdefault("shards", []).extend(p.seq for p in window.shards if p.final)
        s.setdefault("quarantined", []).extend(list(q) for q in window.quarantined)
        for key, value in window.row_counts().items():
            s[key] = s.get(key, 0) + value
        return s


@dataclass
class WindowReport:
    """What one window did on every rank together: rows, metrics, timings, drift alarms."""

    rows: int
    metrics: dict[str, float | None]
    timings: dict[str, float]
    read_at: float
    """Wall-clock time the window's rows were read (the landed_to_read stage ends here)."""
    trained_at: float
    drift_alarms: tuple[str, ...] = ()


def checkpoint_window(
    registry: Registry,
    window: Window,
    report: WindowReport,
    core: Ranker,
    optimizer: torch.optim.Optimizer,
    strategy_parts: list[dict[str, np.ndarray]],
    drift: DriftMonitor | None,
    progress: WindowProgress,
    extra_files: dict[str, bytes] | None = None,
    extra_manifest: Mapping[str, Any] | None = None,
) -> VersionInfo:
    """Rank 0: publish the window's version (promotion is decided by the caller).

    The manifest accounts for every row read since the previous version: ``rows_read`` =
    ``window_events`` (trained) + ``rows_dropped`` (a required field missing) +
    ``rows_out_of_time`` + ``rows_duplicate``, the windows skipped in between included (listed
    under ``skipped``). The watermark is the latest event time trained, never later than now.
    ``extra_files`` go into the version beside the others (e.g. the de-duplication memory);
    ``extra_manifest`` fields into its manifest (e.g. every rank's digest and node), never
    replacing one of the fields above (ValueError).
    """
    if report.rows != window.rows_valid:
        raise RuntimeError(
            f"window read {report.rows} rows but validation counted {window.rows_valid}: "
            f"shards {[s.seq for s in window.shards]}"
        )
    t0 = time.perf_counter()
    watermark = max(
        (w for w in (progress.watermark, window.max_event_time) if w is not None), default=None
    )
    if watermark is not None:
        watermark = min(watermark, time.time())  # a clock ahead of ours cannot move it past now
    skipped = dict(progress.skipped)
    counts = {k: v + int(skipped.get(k, 0)) for k, v in window.row_counts().items()}
    manifest = {
        "parent": progress.version,
        "cursor": window.cursor,
        "cursor_offset": window.cursor_offset,
        "shards": [s.seq for s in window.shards],
        "shard_rows": {str(s.seq): [s.selection.start, s.selection.stop] for s in window.shards},
        "shard_landed_at": {str(s.seq): s.landed_at for s in window.shards},
        "quarantined": [list(q) for q in window.quarantined] + skipped.get("quarantined", []),
        "rows_read": counts["rows_read"],
        "rows_dropped": counts["missing_field"],
        "rows_out_of_time": counts["out_of_time"],
        "rows_duplicate": counts["duplicate"],
        "skipped": skipped,
        "window_events": report.rows,
        "events_trained": progress.events_trained + report.rows,
        "window_index": progress.windows + 1,
        "watermark": watermark,
        "metrics": report.metrics,
        "timings": dict(report.timings),
        "stage_times": {"read_at": report.read_at, "trained_at": report.trained_at},
        "drift_alarms": list(report.drift_alarms),
        "world_size": len(strategy_parts),
        "trained_at": report.trained_at,
    }
    clash = sorted(set(extra_manifest or {}) & set(manifest))
    if clash:
        raise ValueError(f"extra_manifest may not replace manifest fields {clash}")
    manifest.update(extra_manifest or {})
    strategy_state: dict[str, np.ndarray] = {}
    for r, part in enumerate(strategy_parts):
        strategy_state.update({f"rank{r}/{k}": v for k, v in part.items()})
    extra = (
        {DRIFT_FILE: npz_bytes(drift.state_dict(), compressed=True)} if drift is not None else {}
    )
    info = save_checkpoint(
        registry,
        core.config,
        core.state_dict(),
        optimizer.state_dict(),
        strategy_state,
        manifest,
        extra_files={**extra, **(extra_files or {})},
    )
    progress.skipped = {}
    progress.version = info.version
    progress.windows += 1
    progress.events_trained += report.rows
    progress.watermark = watermark
    report.timings["checkpoint_s"] = time.perf_counter() - t0
    alarms = f" drift {','.join(report.drift_alarms)}" if report.drift_alarms else ""
    say(
        f"v{info.version}: window {progress.windows} "
        f"shards {manifest['shards'][0]}..{manifest['shards'][-1]} events {report.rows} "
        f"auc {_fmt(report.metrics['eval_auc'])} gauc {_fmt(report.metrics['eval_gauc'])} "
        f"loss {_fmt(report.metrics['loss'])} total {progress.events_trained}{alarms}",
    )
    return info


def export_window_metrics(
    metrics: Any, window: Window, report: WindowReport, progress: WindowProgress
) -> None:
    """Rank 0: the window's counters, quality gauges and stage latencies."""
    metrics.inc("freshrank_events_trained_total", float(report.rows))
    metrics.inc("freshrank_windows_trained_total")
    metrics.inc("freshrank_shards_trained_total", float(len(window.shards)))
    export_row_counts(metrics, window)
    for name, key in (
        ("freshrank_window_auc", "eval_auc"),
        ("freshrank_window_logloss", "eval_logloss"),
        ("freshrank_window_gauc", "eval_gauc"),
        ("freshrank_window_ndcg", "eval_ndcg10"),
    ):
        if report.metrics.get(key) is not None:
            metrics.set(name, float(report.metrics[key]))  # type: ignore[arg-type]
    metrics.set("freshrank_trainer_model_version", float(progress.version or 0))
    now = time.time()
    stage = "freshrank_stage_latency_seconds"
    for shard in window.shards:
        metrics.observe("freshrank_update_latency_seconds", now - shard.landed_at)
        metrics.observe(stage, report.read_at - shard.landed_at, tags={"stage": "landed_to_read"})
    metrics.observe(stage, report.trained_at - report.read_at, tags={"stage": "read_to_trained"})
    metrics.observe(stage, now - report.trained_at, tags={"stage": "trained_to_checkpointed"})


def export_row_counts(metrics: Any, window: Window) -> None:
    """The window's dropped rows, by reason (also for a window skipped without a version)."""
    for reason, rows in window.row_counts().items():
        if reason in ROW_DROP_REASONS and rows:
            metrics.inc("freshrank_rows_dropped_total", float(rows), tags={"reason": reason})


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
