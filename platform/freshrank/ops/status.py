"""``freshrank status``: the live state of one model line, for a terminal.

`collect_status` reads what is on disk (the registry's champion, versions, manifests, trainer
status and promotion log; the landing zone's backlog and quarantine) and, when given, a
Prometheus text endpoint (a Ray node's metrics export port, or a prometheus-client server) for
what only the running processes know (served versions and freshness per replica, request
outcomes, stage latency histograms). `render_status` turns it into text. Nothing is written.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as root:
...     print(render_status(collect_status(root, None, None)).splitlines()[2])
champion        none yet (no version has been promoted)
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from freshrank.core.telemetry import UPDATE_STAGES
from freshrank.drift import DriftReport, FeatureDrift, get_statistic
from freshrank.ops.scrape import ScrapeError, histogram_quantile, scrape_series

if TYPE_CHECKING:
    from freshrank.registry.store import Registry

WINDOWS_SHOWN = 5
"""How many of the latest versions (windows) the status lists."""

DRIFT_LEADERS = 3
"""How many drift statistics (closest to or furthest over their thresholds) are shown."""

_TIMING_KEYS = ("read_s", "eval_s", "train_s", "checkpoint_s")


@dataclass(frozen=True)
class ChampionStatus:
    """The served model line's champion."""

    version: int
    promoted_at: float | None
    watermark: float | None
    reason: str = ""


@dataclass(frozen=True)
class WindowStatus:
    """One trained window (a version), from its manifest."""

    version: int
    window_index: int | None
    events: int | None
    auc: float | None
    logloss: float | None
    trained_at: float | None
    timings: Mapping[str, float] = field(default_factory=dict)
    landed_to_checkpointed_s: float | None = None
    gauc: float | None = None
    watermark: float | None = None
    created_at: float | None = None
    drift_alarms: tuple[str, ...] = ()


@dataclass(frozen=True)
class StageLatency:
    """Latency of one stage of the update path: median and count of what was observed."""

    stage: str
    p50_s: float | None
    p95_s: float | None
    count: int
    source: str  # "manifests" or "metrics"


@dataclass(frozen=True)
class LiveMetrics:
    """What a Prometheus text endpoint said (None fields: not exported there)."""

    url: str
    error: str | None = None
    served_versions: Mapping[str, float] = field(default_factory=dict)
    freshness_s: Mapping[str, float] = field(default_factory=dict)
    requests: Mapping[str, float] = field(default_factory=dict)
    request_p50_s: float | None = None
    request_p99_s: float | None = None
    drift_alarms: tuple[tuple[str, str], ...] = ()
    stages: tuple[StageLatency, ...] = ()


@dataclass(frozen=True)
class Status:
    """Everything ``freshrank status`` shows; build it with `collect_status`."""

    at: float
    registry: str
    champion: ChampionStatus | None
    versions: int
    latest_version: int | None
    trainer: Mapping[str, Any] | None
    windows: tuple[WindowStatus, ...]
    drift: DriftReport | None
    drift_version: int | None
    stages: tuple[StageLatency, ...]
    promotions_last_hour: Mapping[str, int]
    last_promotion: Mapping[str, Any] | None
    landing: str | None = None
    backlog_shards: int | None = None
    quarantined: tuple[tuple[str, str], ...] = ()
    metrics: LiveMetrics | None = None
    drift_windows_since: int = 0
    """Windows checked after the one `drift` judged (0: its own; small ones wait for more)."""
    drift_alarms: tuple[str, ...] = ()
    """``feature/statistic`` alarms of ``drift_version``'s window, from its manifest."""
    promotion_log: tuple[Mapping[str, Any], ...] = ()
    """The newest ``history`` events of the promotion log, oldest first."""

    @property
    def champion_age_s(self) -> float | None:
        """Seconds since the champion was promoted."""
        if self.champion is None or self.champion.promoted_at is None:
            return None
        return max(0.0, self.at - self.champion.promoted_at)

    @property
    def freshness_s(self) -> float | None:
        """Now minus the event-time watermark of the champion (what the replicas serve)."""
        if self.metrics is not None and self.metrics.freshness_s:
            return max(self.metrics.freshness_s.values())
        if self.champion is None or self.champion.watermark is None:
            return None
        return max(0.0, self.at - self.champion.watermark)


def collect_status(
    registry_root: str,
    landing_root: str | None,
    metrics_url: str | None,
    history: int = WINDOWS_SHOWN,
) -> Status:
    """Gather the state of the model line under ``registry_root``.

    Args:
        registry_root: the registry directory (versions/, CHAMPION, TRAINER, promotions.jsonl);
            it may not exist yet.
        landing_root: the landing zone, for the shard backlog and the quarantine; None skips.
        metrics_url: a Prometheus text endpoint (``http://127.0.0.1:PORT/metrics``); None
            skips. An endpoint that does not answer is reported, not raised.
        history: how many of the newest versions (manifests) and promotion log events to keep
            in ``windows`` and ``promotion_log`` (the status page draws them over time).
    """
    from freshrank.registry.control import trainer_health
    from freshrank.registry.store import Registry

    if not isinstance(history, int) or history < 1:
        raise ValueError(f"history must be an int >= 1 (versions to read), got {history!r}")
    now = time.time()
    registry = Registry(registry_root)
    versions = registry.list_versions()
    manifests = _manifests(registry, versions[-max(history, WINDOWS_SHOWN) :])
    promotions = registry.promotions()

    champion = None
    champion_version = registry.champion_version()
    if champion_version is not None:
        manifest = manifests.get(champion_version)
        if manifest is None:  # an older champion than the newest ``history`` versions
            manifest = _manifests(registry, [champion_version]).get(champion_version, {})
        promoted = _last(promotions, "promoted", champion_version)
        champion = ChampionStatus(
            version=champion_version,
            promoted_at=_float(promoted.get("at")) if promoted else None,
            watermark=_float(manifest.get("watermark")),
            reason=str(promoted.get("reason", "")) if promoted else "",
        )

    windows = tuple(_window(v, m) for v, m in sorted(manifests.items()))
    drift, drift_version, drift_since, drift_alarms = _latest_drift(registry, manifests)

    recent = [p for p in promotions if _float(p.get("at")) and now - float(p["at"]) <= 3600]
    counts = dict(Counter(str(p.get("kind")) for p in recent))

    backlog, quarantined = None, ()
    if landing_root is not None:
        from freshrank.events.landing import LandingZone

        zone = LandingZone(landing_root)
        trainer = registry.trainer_status() or {}
        latest = manifests.get(versions[-1]) if versions else None
        cursor = int(trainer.get("cursor") or (latest or {}).get("cursor") or 0)
        backlog = len(zone.list_shards(after=cursor))
        quarantined = tuple(zone.quarantined())

    live = _live_metrics(metrics_url) if metrics_url else None
    stages = _stages(windows[-WINDOWS_SHOWN:], manifests, promotions, live)
    return Status(
        at=now,
        registry=str(registry_root),
        champion=champion,
        versions=len(versions),
        latest_version=versions[-1] if versions else None,
        trainer=trainer_health(registry.trainer_status(), now),
        windows=windows,
        drift=drift,
        drift_version=drift_version,
        stages=stages,
        promotions_last_hour=counts,
        last_promotion=promotions[-1] if promotions else None,
        landing=landing_root,
        backlog_shards=backlog,
        quarantined=quarantined,
        metrics=live,
        drift_windows_since=drift_since,
        drift_alarms=drift_alarms,
        promotion_log=tuple(promotions[-history:]),
    )


def render_status(status: Status) -> str:
    """The status as aligned text lines (no colours, fits 100 columns)."""
    lines = [f"freshrank status  {_clock(status.at)}", _kv("registry", status.registry)]
    add = lines.append

    if status.champion is None:
        add(_kv("champion", "none yet (no version has been promoted)"))
    else:
        c = status.champion
        age, why = _duration(status.champion_age_s), f" ({c.reason})" if c.reason else ""
        add(_kv("champion", f"v{c.version}, promoted {age} ago{why}"))
    fresh = status.freshness_s
    if fresh is not None:
        where = "slowest replica" if status.metrics and status.metrics.freshness_s else "champion"
        add(_kv("freshness", f"{_duration(fresh)} (now - event watermark, {where})"))
    trainer = status.trainer
    latest = f"v{status.latest_version}" if status.latest_version else "none"
    text = f"latest {latest} of {status.versions} versions"
    if trainer:
        ago = _duration(status.at - float(trainer.get("at", status.at)))
        state, cursor = trainer.get("state", "?"), trainer.get("cursor")
        if trainer.get("reported_state"):  # stale or dead: no heartbeat for too long
            state = f"{state} (no heartbeat; last said {trainer['reported_state']})"
        elif trainer.get("reason"):
            state = f"{state} ({str(trainer['reason'])[:80]})"
        text += f"; trainer {state} (said so {ago} ago), cursor {cursor}"
    add(_kv("versions", text))
    if status.landing is not None:
        q = len(status.quarantined)
        text = f"backlog {status.backlog_shards} shard(s), {q} quarantined"
        if status.quarantined:
            name, reason = status.quarantined[-1]
            text += f" (last: {name}: {reason})"
        add(_fit(_kv("landing", text)))

    if status.windows:
        add(_kv("last windows", ""))
        add(
            f"  {'version':>8} {'window':>6} {'events':>8} {'AUC':>7} {'logloss':>8} "
            f"{'read':>7} {'eval':>7} {'train':>7} {'ckpt':>7} {'landed->ckpt':>13}"
        )
        for w in reversed(status.windows[-WINDOWS_SHOWN:]):
            t = w.timings
            add(
                f"  {'v' + str(w.version):>8} {_num(w.window_index, 'd'):>6} "
                f"{_num(w.events, 'd'):>8} {_num(w.auc, '.4f'):>7} {_num(w.logloss, '.4f'):>8} "
                + " ".join(f"{_secs(t.get(k)):>7}" for k in _TIMING_KEYS)
                + f" {_secs(w.landed_to_checkpointed_s):>13}"
            )

    if status.drift is not None:
        report, v, since = status.drift, status.drift_version, status.drift_windows_since
        where = f"v{v}'s window" if since == 0 else f"the last judged window, {since} before v{v}'s"
        add(_kv("drift", f"{'ALARM' if report.alarm else 'ok'} in {where} ({report.rows} rows)"))
        for e in report.leaders(DRIFT_LEADERS):
            add("  " + _drift_line(e))
    elif status.drift_alarms:
        alarms = ", ".join(status.drift_alarms)
        add(_kv("drift", f"ALARM in v{status.drift_version}'s window: {alarms} (its manifest)"))
    elif status.metrics is not None and status.metrics.drift_alarms:
        alarms = ", ".join(f"{f} {s}" for f, s in status.metrics.drift_alarms)
        add(_kv("drift", f"ALARM (live): {alarms}"))
    else:
        add(_kv("drift", "no drift report yet"))

    if status.stages:
        add(_kv("stage latency", "p50 / p95 (count, source)"))
        for s in status.stages:
            add(
                f"  {s.stage:<26} {_secs(s.p50_s):>8} / {_secs(s.p95_s):<8} ({s.count}, {s.source})"
            )

    counts = status.promotions_last_hour
    text = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "none"
    if status.last_promotion:
        p = status.last_promotion
        ago = _duration(status.at - float(p.get("at", status.at)))
        text += f"; last: {p.get('kind')} v{p.get('to_version')} {ago} ago"
    add(_kv("promotions (1h)", text))

    m = status.metrics
    if m is not None:
        if m.error:
            add(_kv("live metrics", f"{m.url} did not answer ({m.error})"))
        else:
            served = (
                ", ".join(f"{r}=v{int(v)}" for r, v in sorted(m.served_versions.items()))
                or "no replica reports"
            )
            add(_kv("served", served))
            total = sum(m.requests.values())
            if total:
                parts = ", ".join(f"{k} {int(v)}" for k, v in sorted(m.requests.items()))
                bad = sum(v for k, v in m.requests.items() if k in ("server_error", "unavailable"))
                add(_kv("requests", f"{parts} (failed {bad / total:.2%})"))
                p50, p99 = _secs(m.request_p50_s), _secs(m.request_p99_s)
                add(_kv("request latency", f"p50 {p50}, p99 {p99}"))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Registry helpers


def _manifests(registry: Registry, versions: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Manifests by version (8 read at once on an object store); one pruned since the listing
    is left out."""

    def get(version: int) -> dict[str, Any] | None:
        try:
            return registry.get(version).manifest
        except KeyError:
            return None

    with ThreadPoolExecutor(max_workers=1 if registry.is_local else 8) as pool:
        found = zip(versions, pool.map(get, versions), strict=True)
        return {v: m for v, m in found if m is not None}


def _last(events: Sequence[Mapping[str, Any]], kind: str, version: int) -> Mapping[str, Any] | None:
    for event in reversed(events):
        if event.get("kind") == kind and event.get("to_version") == version:
            return event
    return None


def _window(version: int, manifest: Mapping[str, Any]) -> WindowStatus:
    metrics = manifest.get("metrics") or {}
    timings = {
        k: float(v) for k, v in (manifest.get("timings") or {}).items() if _float(v) is not None
    }
    landed = [_float(t) for t in (manifest.get("shard_landed_at") or {}).values()]
    landed = [t for t in landed if t is not None]
    created = _float(manifest.get("created_at"))
    return WindowStatus(
        version=version,
        window_index=_int(manifest.get("window_index")),
        events=_int(manifest.get("window_events")),
        auc=_float(metrics.get("eval_auc")),
        logloss=_float(metrics.get("eval_logloss")),
        trained_at=_float(manifest.get("trained_at")),
        timings=timings,
        landed_to_checkpointed_s=(created - min(landed)) if landed and created else None,
        gauc=_float(metrics.get("eval_gauc")),
        watermark=_float(manifest.get("watermark")),
        created_at=created,
        drift_alarms=tuple(str(a) for a in manifest.get("drift_alarms") or ()),
    )


def _stages(
    windows: Sequence[WindowStatus],
    manifests: Mapping[int, Mapping[str, Any]],
    promotions: Sequence[Mapping[str, Any]],
    live: LiveMetrics | None,
) -> tuple[StageLatency, ...]:
    """Stage latencies of the update path from the metrics endpoint (when given), then the
    per-window step timings from the latest manifests."""
    per_stage: dict[str, list[float]] = {}
    for w in windows:
        for key in _TIMING_KEYS:
            if key in w.timings:
                per_stage.setdefault(key.removesuffix("_s"), []).append(w.timings[key])
        if w.landed_to_checkpointed_s is not None:
            per_stage.setdefault("landed_to_checkpointed", []).append(w.landed_to_checkpointed_s)
        promoted = _last(promotions, "promoted", w.version)
        created = _float(manifests.get(w.version, {}).get("created_at"))
        if promoted and created and _float(promoted.get("at")) is not None:
            per_stage.setdefault("checkpointed_to_promoted", []).append(
                max(0.0, float(promoted["at"]) - created)
            )
    from_manifests = tuple(
        StageLatency(stage, _quantile(v, 0.5), _quantile(v, 0.95), len(v), "manifests")
        for stage, v in per_stage.items()
    )
    return (live.stages if live is not None else ()) + from_manifests


# ---------------------------------------------------------------------------------------------
# Prometheus text endpoint


def _live_metrics(url: str) -> LiveMetrics:
    try:
        series = scrape_series(url, timeout_s=3.0)
    except ScrapeError as exc:  # unreachable, refused, not Prometheus text
        return LiveMetrics(url=url, error=str(exc))

    served: dict[str, float] = {}
    freshness: dict[str, float] = {}
    requests: dict[str, float] = {}
    alarms: set[tuple[str, str]] = set()
    request_buckets: dict[float, float] = {}
    stage_buckets: dict[str, dict[float, float]] = {}
    for sample in series:
        name, labels = sample.name, sample.labels
        if name == "freshrank_served_model_version":
            served[labels.get("replica", "?")] = sample.value
        elif name == "freshrank_freshness_seconds":
            freshness[labels.get("replica", "?")] = sample.value
        elif name == "freshrank_requests_total":
            status = labels.get("status", "?")
            requests[status] = requests.get(status, 0.0) + sample.value
        elif name == "freshrank_drift_alarm" and sample.value >= 1:
            alarms.add((labels.get("feature", "?"), labels.get("statistic", "?")))
        elif name == "freshrank_request_latency_seconds_bucket":
            le = float(labels["le"])
            request_buckets[le] = request_buckets.get(le, 0.0) + sample.value
        elif name == "freshrank_stage_latency_seconds_bucket":
            le = float(labels["le"])
            b = stage_buckets.setdefault(labels.get("stage", "?"), {})
            b[le] = b.get(le, 0.0) + sample.value
    order = {s: i for i, s in enumerate(UPDATE_STAGES)}
    stages = tuple(
        StageLatency(
            stage,
            histogram_quantile(0.5, buckets),
            histogram_quantile(0.95, buckets),
            int(buckets.get(math.inf, 0)),
            "metrics",
        )
        for stage, buckets in sorted(
            stage_buckets.items(), key=lambda kv: (order.get(kv[0], 99), kv[0])
        )
        if buckets.get(math.inf, 0) > 0
    )
    return LiveMetrics(
        url=url,
        served_versions=served,
        freshness_s=freshness,
        requests=requests,
        request_p50_s=histogram_quantile(0.5, request_buckets),
        request_p99_s=histogram_quantile(0.99, request_buckets),
        drift_alarms=tuple(sorted(alarms)),
        stages=stages,
    )


# ---------------------------------------------------------------------------------------------
# Formatting


def _quantile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _latest_drift(
    registry: Registry,
    manifests: Mapping[int, Mapping[str, Any]],
) -> tuple[DriftReport | None, int | None, int, tuple[str, ...]]:
    """The newest drift the trainer wrote, ``(report, version, windows since, alarms)``: the
    monitor's last report from ``drift.npz``, and the manifest's ``drift_alarms``."""
    from freshrank.drift import DriftMonitor
    from freshrank.registry.checkpoint import DRIFT_FILE
    from freshrank.registry.store import CorruptVersion

    for v in sorted(manifests, reverse=True):
        manifest = manifests[v]
        alarms = tuple(str(a) for a in manifest.get("drift_alarms") or ())
        if DRIFT_FILE in (manifest.get("files") or {}):
            try:
                state = registry.load_npz(registry.get(v), DRIFT_FILE)
                monitor = DriftMonitor.from_state(state)
            except (CorruptVersion, OSError, KeyError, ValueError):  # what the manifest says
                monitor = None
            if monitor is not None and monitor.last_report is not None:
                return monitor.last_report, v, monitor.windows_since_report, alarms
        if alarms:
            return None, v, 0, alarms
    return None, None, 0, ()


def _drift_line(e: FeatureDrift) -> str:
    mark = "ALARM" if e.alarm else "     "
    stat = get_statistic(e.statistic)
    unit = f" {stat.unit}" if stat.unit else ""
    value = f"{e.value:+.3f}" if stat.signed else f"{e.value:.3f}"
    return (
        f"{mark} {e.feature:<14} {e.statistic.value:<12} {value}{unit} "
        f"(threshold {e.threshold:.3f})"
    )


def _fit(line: str, width: int = 100) -> str:
    return line if len(line) <= width else line[: width - 3] + "..."


def _kv(key: str, value: str) -> str:
    return f"{key:<15} {value}".rstrip()


def _clock(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float | None) -> str:
    """``95.0`` -> ``'1m 35s'``.

    >>> _duration(95.0), _duration(7300), _duration(3.25), _duration(None)
    ('1m 35s', '2h 1m', '3.2s', 'n/a')
    """
    if seconds is None or not math.isfinite(seconds):
        return "n/a"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m {secs}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes}m"
    return f"{hours // 24}d {hours % 24}h"


def _secs(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.2f}s"


def _num(value: float | int | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _float(value: Any) -> float | None:  # noqa: ANN401
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if math.isfinite(result) else None


def _int(value: Any) -> int | None:  # noqa: ANN401
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


__all__ = [
    "ChampionStatus",
    "LiveMetrics",
    "StageLatency",
    "Status",
    "WindowStatus",
    "collect_status",
    "histogram_quantile",
    "render_status",
]
