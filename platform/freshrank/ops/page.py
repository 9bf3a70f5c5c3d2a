"""The status page: the state of one model line as HTML (inline SVG charts) and as JSON.

Everything comes from one `freshrank.ops.status.collect_status` (registry manifests and
promotion log, landing zone quarantine, the Prometheus text endpoint); nothing is kept here.
The page shows the champion and what each replica serves, a timeline of versions with the
gate's decisions and reasons, freshness and per-window AUC/GAUC over time, drift per statistic
against its threshold, and the quarantined shards. It reloads itself every
``PageConfig.refresh_s`` (``<meta http-equiv="refresh">``; no script, works offline). Only the
newest ``PageConfig.history`` versions and log events are read and drawn, so the page costs the
same with 1,000 versions as with 200.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as root:
...     page = render_page(collect_status(root, None, None, history=10))
>>> "no version has been promoted yet" in page, page.count("<svg")
(True, 4)
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from html import escape
from typing import Any

from freshrank.drift import get_statistic
from freshrank.ops.charts import BarRow, ChartSeries, bar_rows, clock, line_chart
from freshrank.ops.status import Status, _duration, collect_status

DECISION_KINDS = ("promoted", "rejected", "error")
"""Promotion log kinds that are the gate's (or an operator's) decision about a version."""

CHAMPION_KINDS = ("promoted", "rolled_back")
"""Promotion log kinds after which the named version is the champion."""

COLORS = {
    "promoted": "#2da44e",
    "rejected": "#cf222e",
    "error": "#bf8700",
    "rolled_back": "#8250df",
    "pending": "#57606a",
    "not judged": "#afb8c1",
}


@dataclass(frozen=True)
class PageConfig:
    """What the page reads and lists."""

    history: int = 200
    """Newest versions (manifests) and promotion log events read and drawn."""
    listed: int = 60
    """Most rows in the timeline and the quarantine tables."""
    refresh_s: float = 5.0
    """The page reloads itself this often (seconds)."""

    def __post_init__(self) -> None:
        for name in ("history", "listed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"PageConfig.{name} must be an int >= 1, got {value!r}")
        if not (isinstance(self.refresh_s, int | float) and self.refresh_s >= 1):
            raise ValueError(f"PageConfig.refresh_s must be >= 1 second, got {self.refresh_s!r}")


def load_status(
    registry_root: str,
    landing_root: str | None,
    metrics_url: str | None,
    config: PageConfig | None = None,
) -> Status:
    """`collect_status` with the page's history (what `render_page` and `status_document` take)."""
    config = config or PageConfig()
    return collect_status(registry_root, landing_root, metrics_url, history=config.history)


# ---------------------------------------------------------------------------------------------
# What the page derives from a Status


def decisions(status: Status) -> dict[int, Mapping[str, Any]]:
    """The last decision (promoted / rejected / error event) logged for each version."""
    out: dict[int, Mapping[str, Any]] = {}
    for event in status.promotion_log:
        version = event.get("to_version")
        if event.get("kind") in DECISION_KINDS and isinstance(version, int):
            out[version] = event
    return out


def decision_of(status: Status, version: int, judged: Mapping[int, Mapping[str, Any]]) -> str:
    """``promoted``, ``rejected``, ``error``, ``pending`` (waiting for fresh rows) or
    ``not judged`` (superseded before the gate had rows for it)."""
    event = judged.get(version)
    if event is not None:
        return str(event.get("kind"))
    pending = (status.trainer or {}).get("pending")
    return "pending" if pending == version or version == status.latest_version else "not judged"


@dataclass(frozen=True)
class Freshness:
    """Freshness over time: ``promoted`` has one ``(time, seconds, version)`` per champion
    change (its time minus the new champion's event watermark); ``served`` is the sawtooth in
    between (now minus the champion's watermark, growing until the next change; None breaks
    it where the champion's manifest is older than the history); ``checkpointed`` is created_at
    minus watermark per version (the trainer's own lag)."""

    promoted: tuple[tuple[float, float, int], ...]
    served: tuple[tuple[float, float] | None, ...]
    checkpointed: tuple[tuple[float, float, int], ...]


def freshness(status: Status) -> Freshness:
    """`Freshness` from the windows' watermarks and the promotion log (no other source)."""
    watermarks = {w.version: w.watermark for w in status.windows if w.watermark is not None}
    changes = []
    for event in status.promotion_log:
        at, version = event.get("at"), event.get("to_version")
        if event.get("kind") in CHAMPION_KINDS and isinstance(version, int) and _finite(at):
            changes.append((float(at), version))
    promoted, served = [], []
    for i, (at, version) in enumerate(changes):
        until = changes[i + 1][0] if i + 1 < len(changes) else max(status.at, at)
        mark = watermarks.get(version)
        if mark is None:
            served.append(None)
            continue
        promoted.append((at, max(0.0, at - mark), version))
        served += [(at, max(0.0, at - mark)), (until, max(0.0, until - mark))]
    checkpointed = tuple(
        (w.created_at, max(0.0, w.created_at - w.watermark), w.version)
        for w in status.windows
        if w.created_at is not None and w.watermark is not None
    )
    return Freshness(tuple(promoted), tuple(served), checkpointed)


# ---------------------------------------------------------------------------------------------
# HTML


_STYLE = """
body{font:14px system-ui,sans-serif;margin:16px 24px;color:#1f2328;background:#fff}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:22px 0 6px}
.muted{color:#57606a} .big{font-size:28px;font-weight:600}
.cards{display:flex;gap:12px;flex-wrap:wrap} .card{border:1px solid #d0d7de;border-radius:6px;
padding:8px 12px;min-width:150px} .grid{display:flex;gap:16px;flex-wrap:wrap}
table{border-collapse:collapse;font-size:13px} td,th{border-bottom:1px solid #eaeef2;
padding:3px 8px;text-align:left;vertical-align:top} th{background:#f6f8fa}
.kind{font-weight:600} .promoted{color:#1a7f37} .rejected{color:#cf222e} .error{color:#9a6700}
.rolled_back{color:#8250df} .alarm{color:#cf222e;font-weight:600} td.reason{max-width:640px}
.over{color:#9a6700} #champion{max-width:420px}
"""


def render_page(status: Status, config: PageConfig | None = None) -> str:
    """The whole page (HTML5, one document, every string escaped)."""
    config = config or PageConfig()
    judged = decisions(status)
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<meta http-equiv='refresh' content='{config.refresh_s:g}'>",
        "<title>freshrank status</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>freshrank: the loop</h1>",
        f"<div class='muted'>registry {escape(status.registry)} · {escape(_clock(status.at))} · "
        f"reloads every {config.refresh_s:g} s · <a href='/status.json'>status.json</a></div>",
        _champion_section(status),
        _charts_section(status, judged),
        _drift_section(status),
        _timeline_section(status, judged, config.listed),
        _quarantine_section(status, config.listed),
        "</body></html>",
    ]
    return "".join(parts)


def _champion_section(status: Status) -> str:
    c = status.champion
    if c is None:
        champion = "<div class='card'><div class='muted'>champion</div><div class='big'>none</div>"
        champion += "<div>no version has been promoted yet</div></div>"
    else:
        champion = (
            "<div class='card' id='champion'><div class='muted'>champion</div>"
            f"<div class='big'>v{c.version}</div><div>promoted "
            f"{escape(_duration(status.champion_age_s))} ago</div>"
            f"<div class='muted'>{escape(c.reason)}</div></div>"
        )
    fresh = status.freshness_s
    live = status.metrics is not None and bool(status.metrics.freshness_s)
    trainer = status.trainer or {}
    cards = [
        champion,
        _card(
            "freshness",
            _duration(fresh),
            "now − event watermark, " + ("slowest replica" if live else "champion"),
        ),
        _card(
            "versions",
            str(status.versions),
            f"latest v{status.latest_version}" if status.latest_version else "none yet",
        ),
        _card(
            "trainer",
            str(trainer.get("state", "not seen")),
            f"cursor {trainer.get('cursor')}" if trainer else "no TRAINER record",
        ),
    ]
    if status.landing is not None:
        cards.append(
            _card(
                "landing zone",
                f"{status.backlog_shards} backlog",
                f"{len(status.quarantined)} quarantined",
            )
        )
    return (
        "<h2>Champion and serving</h2><div class='cards'>"
        + "".join(cards)
        + "</div>"
        + (_replicas(status))
    )


def _replicas(status: Status) -> str:
    m = status.metrics
    if m is None:
        return "<p class='muted'>No metrics endpoint given (--metrics-url): replicas unknown.</p>"
    if m.error:
        url, error = escape(m.url), escape(m.error)
        return f"<p class='alarm'>Metrics endpoint {url} did not answer: {error}</p>"
    names = sorted(set(m.served_versions) | set(m.freshness_s))
    rows = "".join(
        f"<tr><td>{escape(r)}</td><td>{_version(m.served_versions.get(r))}</td>"
        f"<td>{escape(_duration(m.freshness_s.get(r)))}</td></tr>"
        for r in names
    )
    table = (
        "<table id='replicas'><tr><th>replica</th><th>serves</th><th>freshness</th></tr>"
        + (rows or "<tr><td colspan='3'>no replica reports</td></tr>")
        + "</table>"
    )
    total = sum(m.requests.values())
    if total:
        counts = ", ".join(f"{escape(k)} {int(v)}" for k, v in sorted(m.requests.items()))
        table += (
            f"<p>requests: {counts}; latency p50 {_ms(m.request_p50_s)}, "
            f"p99 {_ms(m.request_p99_s)}</p>"
        )
    return f"<p class='muted'>from {escape(m.url)}</p>{table}"


def _charts_section(status: Status, judged: Mapping[int, Mapping[str, Any]]) -> str:
    f = freshness(status)
    fresh_series = [
        ChartSeries("served", "served (sawtooth)", f.served, color="#8c959f", marks=False),
        ChartSeries(
            "promoted",
            "at promotion",
            tuple((t, s) for t, s, _ in f.promoted),
            line=False,
            color=COLORS["promoted"],
            labels=tuple(f"v{v} promoted {clock(t)}: {_duration(s)}" for t, s, v in f.promoted),
        ),
        ChartSeries(
            "checkpointed",
            "at checkpoint",
            tuple((t, s) for t, s, _ in f.checkpointed),
            line=False,
            color="#1f6feb",
            labels=tuple(f"v{v} checkpointed: {_duration(s)}" for _, s, v in f.checkpointed),
        ),
    ]
    m = status.metrics
    if m is not None and m.freshness_s:
        fresh_series.append(
            ChartSeries(
                "live",
                "live (replicas)",
                tuple((status.at, s) for s in m.freshness_s.values()),
                line=False,
                color="#bf3989",
                labels=tuple(f"{r}: {_duration(s)}" for r, s in m.freshness_s.items()),
            )
        )
    fresh_chart = line_chart(
        "chart-freshness",
        fresh_series,
        x_label="time",
        y_label="freshness (s)",
        x_time=True,
        y_zero=True,
        y_format=lambda v: f"{v:g}",
    )
    windows = status.windows
    kinds = [decision_of(status, w.version, judged) for w in windows]
    auc = [(w.version, w.auc) for w in windows if w.auc is not None]
    quality = line_chart(
        "chart-quality",
        [
            ChartSeries(
                "auc",
                "AUC (dot: gate decision)",
                tuple((float(v), a) for v, a in auc),
                labels=tuple(
                    f"v{w.version}: AUC {w.auc:.4f}, {k}"
                    for w, k in zip(windows, kinds, strict=True)
                    if w.auc is not None
                ),
                colors=tuple(
                    COLORS[k] for w, k in zip(windows, kinds, strict=True) if w.auc is not None
                ),
            ),
            ChartSeries(
                "gauc",
                "GAUC",
                tuple((float(w.version), w.gauc) for w in windows if w.gauc is not None),
                color="#bf8700",
                labels=tuple(
                    f"v{w.version}: GAUC {w.gauc:.4f}" for w in windows if w.gauc is not None
                ),
            ),
        ],
        x_label="version (its window, scored before training on it)",
        y_label="AUC / GAUC",
    )
    alarms = line_chart(
        "chart-drift-alarms",
        [
            ChartSeries(
                "alarms",
                "drift alarms in the window",
                tuple((float(w.version), float(len(w.drift_alarms))) for w in windows),
                color=COLORS["rejected"],
                labels=tuple(
                    f"v{w.version}: {', '.join(w.drift_alarms) or 'none'}" for w in windows
                ),
            )
        ],
        x_label="version",
        y_label="alarms",
        y_zero=True,
    )
    legend = " ".join(f"<span style='color:{c}'>●</span> {escape(k)}" for k, c in COLORS.items())
    return (
        "<h2>Freshness and window quality over time</h2><div class='grid'>"
        f"<div>{fresh_chart}</div><div>{quality}<div class='muted'>{legend}</div></div>"
        f"<div>{alarms}</div></div>"
    )


def _drift_section(status: Status) -> str:
    head = "<h2>Drift</h2>"
    report = status.drift
    if report is None:
        if status.drift_alarms:
            items = ", ".join(escape(a) for a in status.drift_alarms)
            return head + f"<p class='alarm'>ALARM in v{status.drift_version}'s window: {items}</p>"
        return (
            head
            + "<p class='muted'>no drift report yet</p>"
            + bar_rows("chart-drift", [], ref_label="threshold")
        )
    since = status.drift_windows_since
    where = (
        f"v{status.drift_version}'s window"
        if since == 0
        else f"the last judged window, {since} before v{status.drift_version}'s"
    )
    verdict = "<span class='alarm'>ALARM</span>" if report.alarm else "ok"
    judged = [e for e in report.entries if e.value is not None and e.threshold]
    judged.sort(key=lambda e: (-e.severity, e.feature, e.statistic.value))
    bars = [
        BarRow(
            f"{e.feature} {e.statistic.value}",
            e.severity,
            e.alarm,
            f"{e.feature} {e.statistic.value}: {_drift_value(e.statistic, e.value)} "
            f"(threshold {e.threshold:.3f})",
        )
        for e in judged
    ]
    rows = "".join(
        f"<tr><td>{escape(e.feature)}</td><td>{escape(e.statistic.value)}</td>"
        f"<td>{escape(_drift_value(e.statistic, e.value))}</td><td>"
        + ("-" if e.threshold is None else f"{e.threshold:.3f}")
        + "</td><td>"
        + (
            "<span class='alarm'>ALARM</span>"
            if e.alarm
            else "<span class='over'>over, no alarm</span>"
            if e.severity > 1.0
            else ""
        )
        + "</td></tr>"
        for e in sorted(report.entries, key=lambda e: (-e.severity, e.feature, e.statistic.value))
    )
    live = ""
    if status.metrics is not None and status.metrics.drift_alarms:
        items = ", ".join(f"{escape(f)} {escape(s)}" for f, s in status.metrics.drift_alarms)
        live = f"<p class='alarm'>live alarms (serving): {items}</p>"
    return (
        head + f"<p>{verdict} in {escape(where)}: {report.rows} rows against a reference of "
        f"{report.reference_rows}; bars are value ÷ threshold (red: alarm; amber: over the "
        "threshold without an alarm, as before the reference has absorbed its warm-up windows)."
        f"</p>{live}<div class='grid'>"
        + bar_rows("chart-drift", bars, ref_label="threshold")
        + "<table id='drift'><tr><th>feature</th><th>statistic</th><th>value</th>"
        "<th>threshold</th><th></th></tr>" + rows + "</table></div>"
    )


def _timeline_section(status: Status, judged: Mapping[int, Mapping[str, Any]], listed: int) -> str:
    entries: list[tuple[float, str]] = []
    for w in status.windows:
        if w.created_at is None:
            continue
        kind = decision_of(status, w.version, judged)
        detail = (
            f"window {_n(w.window_index)}, {_n(w.events)} events, AUC {_f4(w.auc)}, "
            f"GAUC {_f4(w.gauc)}" + (f"; {kind}" if kind in ("pending", "not judged") else "")
        )
        entries.append((w.created_at, _row(w.created_at, "trained", w.version, None, detail)))
    for e in status.promotion_log:
        at = float(e["at"]) if _finite(e.get("at")) else 0.0
        kind = str(e.get("kind"))
        if kind == "pruned":
            gone = list(e.get("versions") or ())
            names = ", ".join(f"v{v}" for v in gone[:10]) + (" ..." if len(gone) > 10 else "")
            detail = f"{len(gone)} version(s): {names} ({e.get('reason', '')})"
            entries.append((at, _row(at, kind, None, None, detail)))
            continue
        detail = str(e.get("reason", ""))
        challenger = e.get("challenger_metrics") or {}
        champion = e.get("champion_metrics") or {}
        if _finite(challenger.get("auc")) and _finite(champion.get("auc")):
            detail += f" [AUC {champion['auc']:.4f} → {challenger['auc']:.4f}]"
        entries.append((at, _row(at, kind, e.get("to_version"), e.get("from_version"), detail)))
    entries.sort(key=lambda x: -x[0])
    shown = entries[:listed]
    counts: dict[str, int] = {}
    for e in status.promotion_log:
        counts[str(e.get("kind"))] = counts.get(str(e.get("kind")), 0) + 1
    summary = ", ".join(f"{n} {escape(k)}" for k, n in sorted(counts.items())) or "no decision yet"
    return (
        f"<h2>Timeline</h2><p class='muted'>newest first; {len(shown)} of {len(entries)} entries "
        f"from the last {len(status.windows)} versions and {len(status.promotion_log)} log "
        f"events ({summary})</p><table id='timeline'><tr><th>time (UTC)</th><th>event</th>"
        "<th>version</th><th>what and why</th></tr>" + "".join(r for _, r in shown) + "</table>"
    )


def _row(at: float, kind: str, to: Any, frm: Any, detail: str) -> str:  # noqa: ANN401
    version = _version(to) + (f" (from {_version(frm)})" if frm is not None else "")
    return (
        f"<tr class='ev-{escape(kind)}'><td>{escape(_clock(at))}</td>"
        f"<td class='kind {escape(kind)}'>{escape(kind)}</td><td>{version}</td>"
        f"<td class='reason'>{escape(detail)}</td></tr>"
    )


def _quarantine_section(status: Status, listed: int) -> str:
    head = "<h2>Quarantined shards</h2>"
    if status.landing is None:
        return head + "<p class='muted'>no landing zone given (--landing)</p>"
    q = status.quarantined
    if not q:
        return head + "<p>none</p>"
    shown = list(reversed(q))[:listed]
    rows = "".join(
        f"<tr><td>{escape(name)}</td><td class='reason'>{escape(reason)}</td></tr>"
        for name, reason in shown
    )
    return (
        head + f"<p class='muted'>{len(shown)} of {len(q)}, newest first</p>"
        "<table id='quarantine'><tr><th>shard</th><th>reason</th></tr>" + rows + "</table>"
    )


# ---------------------------------------------------------------------------------------------
# JSON


def status_document(status: Status) -> dict[str, Any]:
    """The status as JSON-able data (what ``/status.json`` serves): every field of `Status`,
    plus ``freshness_s`` and the derived ``freshness`` series; non-finite numbers become null."""
    doc = {f.name: getattr(status, f.name) for f in dataclasses.fields(status)}
    doc["drift"] = status.drift.to_dict() if status.drift is not None else None
    doc["freshness_s"] = status.freshness_s
    doc["champion_age_s"] = status.champion_age_s
    f = freshness(status)
    doc["freshness"] = {
        "promoted": [{"at": t, "seconds": s, "version": v} for t, s, v in f.promoted],
        "checkpointed": [{"at": t, "seconds": s, "version": v} for t, s, v in f.checkpointed],
    }
    return _plain(doc)


def _plain(value: Any) -> Any:  # noqa: ANN401
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---------------------------------------------------------------------------------------------
# Formatting


def _card(title: str, value: str, note: str) -> str:
    return (
        f"<div class='card'><div class='muted'>{escape(title)}</div>"
        f"<div class='big'>{escape(value)}</div><div class='muted'>{escape(note)}</div></div>"
    )


def _drift_value(statistic: Any, value: float | None) -> str:  # noqa: ANN401
    if value is None:
        return "-"
    stat = get_statistic(statistic)
    text = f"{value:+.3f}" if stat.signed else f"{value:.3f}"
    return f"{text} {stat.unit}".rstrip()


def _version(value: Any) -> str:  # noqa: ANN401
    try:
        return f"v{int(value)}"
    except (TypeError, ValueError):
        return "-"


def _clock(t: float) -> str:
    if not t:
        return "-"
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def _f4(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _n(value: int | None) -> str:
    return "-" if value is None else str(value)


def _finite(value: Any) -> bool:  # noqa: ANN401
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


__all__ = [
    "CHAMPION_KINDS",
    "DECISION_KINDS",
    "Freshness",
    "PageConfig",
    "decision_of",
    "decisions",
    "freshness",
    "load_status",
    "render_page",
    "status_document",
]
