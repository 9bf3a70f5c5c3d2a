"""A live account of the loop for a terminal: what happened, one line each, and where it stands.

`LoopProgress` reads what the platform already writes (the registry's versions, manifests,
promotion log and trainer status; the landing zone's shards and quarantine; when given, the
Prometheus endpoint for what each replica serves and its freshness) and turns the changes since
its last look into story lines::

    [  48.0 s] v2 trained: window 2, 1,996 events, AUC 0.549, GAUC 0.572
    [  49.1 s] gate: v2 promoted over v1 (auc 0.5399 -> 0.6338: better; ...)
    [  50.3 s] shard 11 quarantined: not readable as parquet: ...
    [  51.0 s] replica 0wrh2579 now serves v2

and one status line (shards landed / trained / quarantined, versions trained / promoted /
rejected, champion, what each replica serves, freshness, and whatever ``extra`` adds, e.g. the
demo's request counts). On a terminal the status line is redrawn in place under the story; into
a file or a pipe (``ray job logs``) it is printed every ``status_every_s``. Nothing is written
to the registry: it is a reader, like ``freshrank status``.

>>> import io, tempfile
>>> with tempfile.TemporaryDirectory() as root:
...     progress = LoopProgress(ProgressConfig(registry=root), out=io.StringIO(), clock=lambda: 0.0)
...     progress.poll()
...     print(progress.status_line())
[]
[   0.0 s] versions 0 trained | champion none
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from freshrank.events.landing import LandingZone
from freshrank.ops.scrape import ScrapeError, scrape_series
from freshrank.registry.store import Registry


@dataclass(frozen=True)
class ProgressConfig:
    """What `LoopProgress` watches and how often."""

    registry: str
    """The registry directory (it may not exist yet)."""
    landing: str | None = None
    """The landing zone (shards landed, trained, quarantined); None leaves them out."""
    metrics_url: str | None = None
    """A Prometheus text endpoint for what each replica serves; None leaves it out."""
    interval_s: float = 1.0
    """How often the background thread looks (`LoopProgress.start`)."""
    status_every_s: float = 10.0
    """How often the status line is printed when the output is not a terminal."""
    max_reason_chars: int = 160
    """Gate and quarantine reasons are cut to this length (the registry keeps them whole)."""

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or self.status_every_s <= 0:
            raise ValueError("interval_s and status_every_s must be > 0")
        if self.max_reason_chars < 20:
            raise ValueError(f"max_reason_chars must be >= 20, got {self.max_reason_chars}")


@dataclass(frozen=True)
class LoopCounts:
    """What the status line shows, as numbers (the demo's summary reads them too)."""

    shards_landed: int | None
    shards_trained: int | None
    shards_quarantined: int | None
    versions_trained: int
    """Versions written since the watch began (pruned ones included)."""
    versions_kept: int
    """Versions in the registry now (retention prunes old ones)."""
    promoted: int
    rejected: int
    rolled_back: int
    champion: int | None
    served: Mapping[str, int]
    """Replica -> the version it serves (from the metrics endpoint)."""
    freshness_s: float | None
    """Now minus the watermark the replicas serve (metrics), else the champion's."""
    trainer_state: str | None


class LoopProgress:
    """Follows the loop and writes its story to ``out`` (see the module doc).

    ``extra()`` may add text to the status line (the demo's request counts). ``live`` forces
    the in-place status line on or off (default: on when ``out`` is a terminal).
    """

    def __init__(
        self,
        config: ProgressConfig,
        out: TextIO | None = None,
        extra: Callable[[], str] | None = None,
        live: bool | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._out = out if out is not None else sys.stdout
        self._extra = extra
        self._live = _isatty(self._out) if live is None else live
        self._clock = clock
        self._started = clock()
        self._registry = Registry(config.registry)
        self._landing = LandingZone(config.landing) if config.landing else None
        self._first_version = (self._registry.latest_version() or 0) + 1
        self._seen_version = self._first_version - 1
        self._seen_events = len(self._registry.promotions())
        self._seen_quarantine: set[str] = {n for n, _ in self._quarantined()}
        self._served: dict[str, int] = {}
        self._cursor = 0  # the newest shard a told version has trained (its manifest's cursor)
        self._freshness: float | None = None
        self._counts: LoopCounts | None = None
        self._last_status_print = float("-inf")
        self._drawn = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0
        self.last_error: str | None = None

    # ----- one look -------------------------------------------------------------------------
    def poll(self) -> list[str]:
        """Look once; print and return the story lines of what changed since the last look."""
        with self._lock:
            lines: list[str] = []
            try:
                self._changes(lines)
            except Exception as exc:  # a half-written file, a registry on a flaky store
                self.errors += 1  # the lines found before it are still told
                self.last_error = f"{type(exc).__name__}: {exc}"
            for line in lines:
                self._write_line(line)
            self._write_status()
            return lines

    def counts(self) -> LoopCounts:
        """The figures of the last look (one look first if there was none)."""
        if self._counts is None:
            self.poll()
        assert self._counts is not None
        return self._counts

    def status_line(self) -> str:
        """The status line of the last look."""
        c = self._counts
        errors = f"{self.errors} read errors (last: {self.last_error})" if self.errors else ""
        if c is None:
            return self._stamp(" | ".join(p for p in ("starting", errors) if p))
        parts = []
        if c.shards_landed is not None:
            parts.append(
                f"shards {c.shards_landed} landed, {c.shards_trained} trained, "
                f"{c.shards_quarantined} quarantined"
            )
        gate = f"versions {c.versions_trained} trained"
        if c.promoted or c.rejected or c.rolled_back:
            gate += f", {c.promoted} promoted, {c.rejected} rejected"
            if c.rolled_back:
                gate += f", {c.rolled_back} rolled back"
        parts.append(gate)
        parts.append(f"champion {'v' + str(c.champion) if c.champion else 'none'}")
        if c.served:
            parts.append("serving " + " ".join(f"v{v}" for _, v in sorted(c.served.items())))
        if c.freshness_s is not None:
            parts.append(f"freshness {c.freshness_s:.1f} s")
        if c.trainer_state and c.trainer_state not in ("ready", "training"):
            parts.append(f"trainer {c.trainer_state}")
        if self._extra is not None:
            extra = self._extra()
            if extra:
                parts.append(extra)
        if errors:
            parts.append(errors)
        return self._stamp(" | ".join(parts))

    # ----- background -----------------------------------------------------------------------
    def start(self) -> LoopProgress:
        """Look every ``interval_s`` in a daemon thread until `stop`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="loop-progress", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread, take a last look and end the in-place line (once)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)
            self._thread = None
        self.poll()
        with self._lock:
            if self._live and self._drawn:
                self._out.write("\n")
                self._out.flush()
                self._drawn = False
            elif not self._live:
                self._out.write(self.status_line() + "\n")
                self._out.flush()

    def __enter__(self) -> LoopProgress:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.config.interval_s):
            self.poll()

    # ----- reading ----------------------------------------------------------------------------
    def _changes(self, lines: list[str]) -> None:
        registry = self._registry
        latest = registry.latest_version() or 0
        kept = registry.list_versions()
        kept_set = set(kept)
        for version in range(self._seen_version + 1, latest + 1):
            if version in kept_set:  # pruned before we looked: counted, not described
                manifest = registry.get(version).manifest
                self._cursor = max(self._cursor, int(manifest.get("cursor") or 0))
                lines.append(self._stamp(_trained_line(manifest)))
        self._seen_version = max(self._seen_version, latest)

        events = registry.promotions()
        for event in events[self._seen_events :]:
            line = self._event_line(event)
            if line:
                lines.append(self._stamp(line))
        self._seen_events = len(events)

        quarantined = self._quarantined()
        for name, reason in quarantined:
            if name not in self._seen_quarantine:
                self._seen_quarantine.add(name)
                lines.append(self._stamp(f"shard {name} quarantined: {self._cut(reason)}"))

        served, freshness = self._scrape()
        for replica, version in sorted(served.items()):
            if self._served.get(replica) != version:
                lines.append(self._stamp(f"replica {replica} now serves v{version}"))
        self._served = served

        kinds = [str(e.get("kind")) for e in events]
        trainer = registry.trainer_status() or {}
        champion = registry.champion_version()
        if freshness is None and champion is not None:
            watermark = registry.get(champion).manifest.get("watermark")
            freshness = max(0.0, self._clock() - float(watermark)) if watermark else None
        landed = trained = None
        if self._landing is not None:
            shards = self._landing.list_shards()
            cursor = max(self._cursor, int(trainer.get("cursor") or 0))
            landed = len(shards) + len(quarantined)
            trained = sum(1 for s in shards if s.seq <= cursor)
        self._counts = LoopCounts(
            shards_landed=landed,
            shards_trained=trained,
            shards_quarantined=len(quarantined) if self._landing is not None else None,
            versions_trained=max(0, latest - self._first_version + 1),
            versions_kept=len(kept),
            promoted=kinds.count("promoted"),
            rejected=kinds.count("rejected"),
            rolled_back=kinds.count("rollback"),
            champion=champion,
            served=dict(served),
            freshness_s=freshness,
            trainer_state=str(trainer["state"]) if trainer.get("state") else None,
        )

    def _event_line(self, event: Mapping[str, Any]) -> str | None:
        kind = event.get("kind")
        to, was = event.get("to_version"), event.get("from_version")
        reason = self._cut(str(event.get("reason", "")))
        if kind == "promoted":
            over = f" over v{was}" if was else ""
            return f"gate: v{to} promoted{over} ({reason})"
        if kind == "rejected":
            return f"gate: v{to} rejected, v{was} stays champion ({reason})"
        if kind == "rollback":
            return f"rollback: v{was} -> v{to} ({reason})"
        return None  # pruned and other housekeeping: counted in versions kept

    def _quarantined(self) -> list[tuple[str, str]]:
        return self._landing.quarantined() if self._landing is not None else []

    def _scrape(self) -> tuple[dict[str, int], float | None]:
        if not self.config.metrics_url:
            return {}, None
        try:
            series = scrape_series(self.config.metrics_url, timeout_s=2.0)
        except ScrapeError:
            return dict(self._served), None
        served: dict[str, int] = {}
        freshness: list[float] = []
        for s in series:
            if s.name == "freshrank_served_model_version" and s.value > 0:
                served[s.labels.get("replica", "?")] = int(s.value)
            elif s.name == "freshrank_freshness_seconds":
                freshness.append(s.value)
        return served, (max(freshness) if freshness else None)

    # ----- writing ----------------------------------------------------------------------------
    def _stamp(self, text: str) -> str:
        return f"[{self._clock() - self._started:6.1f} s] {text}"

    def _cut(self, text: str) -> str:
        limit = self.config.max_reason_chars
        return text if len(text) <= limit else text[: limit - 3] + "..."

    def _write_line(self, line: str) -> None:
        if self._live and self._drawn:
            self._out.write("\r\x1b[K")
            self._drawn = False
        self._out.write(line + "\n")
        self._out.flush()

    def _write_status(self) -> None:
        now = self._clock()
        if self._live:
            self._out.write("\r\x1b[K" + self.status_line())
            self._out.flush()
            self._drawn = True
        elif now - self._last_status_print >= self.config.status_every_s:
            self._out.write(self.status_line() + "\n")
            self._out.flush()
            self._last_status_print = now


def _trained_line(manifest: Mapping[str, Any]) -> str:
    metrics = manifest.get("metrics") or {}
    parts = [f"window {manifest.get('window_index', '?')}"]
    events = manifest.get("window_events")
    if events is not None:
        parts.append(f"{int(events):,} events")
    for key, name in (("eval_auc", "AUC"), ("eval_gauc", "GAUC")):
        value = metrics.get(key)
        if isinstance(value, int | float):
            parts.append(f"{name} {value:.3f}")
    for key, what in (
        ("rows_dropped", "rows dropped (missing field)"),
        ("rows_out_of_time", "rows out of time"),
        ("rows_duplicate", "duplicate rows"),
    ):
        count = int(manifest.get(key) or 0)
        if count:
            parts.append(f"{count} {what}")
    alarms = manifest.get("drift_alarms") or []
    if alarms:
        parts.append("drift alarm " + ", ".join(map(str, alarms)))
    return f"v{manifest.get('version')} trained: " + ", ".join(parts)


def _isatty(out: TextIO) -> bool:
    try:
        return bool(out.isatty())
    except (AttributeError, ValueError):
        return False
