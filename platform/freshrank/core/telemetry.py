# How Ray 2.60 exports application metrics (read in the installed source, measured here):
#
# * Path: `ray.util.metrics.{Counter,Gauge,Histogram}` record into the C++ core worker of the
#   process (driver, task, actor, Serve replica); every report interval the core worker pushes
#   them over OTLP/gRPC to the per-node *dashboard agent* (reporter module,
#   `ray/_private/telemetry/open_telemetry_metric_recorder.py`), which serves Prometheus text on
#   `metrics_export_port` (`ray.init(_metrics_export_port=P)`, `ray start
#   --metrics-export-port=P`; 0/None picks a free port, written to the session dir). The agent is
#   started by the raylet on every node whether or not `include_dashboard` is set; it is the
#   agent, not the head dashboard, that serves metrics. No token is needed to scrape it.
# * Prefix: the agent names every instrument `f"ray_{name}"` (hard-coded `NAMESPACE = "ray"`, no
#   switch), so `freshrank_x` shows as `ray_freshrank_x`. `MetricSpec.exported_name()` returns
#   that; a Prometheus `metric_relabel_configs` rule (regex `ray_(freshrank_.*)`, replacement
#   `$1` on `__name__`) gives one name for both backends. A counter named `..._total` keeps a
#   single `_total` (`ray_freshrank_x_total`, TYPE counter); no gauge twin under OpenTelemetry.
# * Labels: our tag keys plus Ray's `Component`, `NodeAddress`, `SessionName`, `Version`,
#   `WorkerId` (one series per process: sum over WorkerId for totals) and `otel_scope_*`.
#   Tag keys must be declared up front (`tag_keys=` tuple of str); every record must give a
#   str value for each declared key (missing -> ValueError, non-str -> TypeError).
# * Delay: `metrics_report_interval_ms`, default 10000; the export cadence is floored at 1 s.
#   Set env `RAY_metrics_report_interval_ms=1000` (read by every Ray process, so set it before
#   `ray.init`) or `_system_config={"metrics_report_interval_ms": 1000}`. Measured with 1000:
#   a value set in an actor or the driver was scrapeable 0.3-1.3 s later (5 runs).
# * Gauges vanish: the agent keeps a gauge series for 2 x max(interval, 1 s) after its last
#   report and the core worker reports a gauge only when it is set again, so a gauge set once
#   disappears after ~20 s (default) / ~2 s (1000 ms). The Ray backend below therefore re-sets
#   every live gauge at half the interval from a daemon thread (a dead process's gauges still
#   age out, which is what we want for replicas that went away).
# * Histogram `_sum` is approximate: the agent rebuilds observations from bucket counts at bucket
#   midpoints (above the last boundary: 2 x last boundary). `_count` and `_bucket` are exact;
#   choose boundaries that cover the range and do not read means from `_sum / _count`.
#   Boundaries must be > 0.
# * Binding: `dashboard_host="127.0.0.1"` binds the dashboard to loopback, but the metrics port
#   binds to 0.0.0.0 unless the node IP itself is loopback. On Linux the node IP comes from the
#   default route (`_node_ip_address="127.0.0.1"` is rewritten to it); env
#   `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` (single-node mode, the default on macOS/Windows) makes
#   the node 127.0.0.1 and then everything, metrics included, listens on loopback only.
"""Metric definitions for freshrank, and the backends that export them.

One catalogue (`CATALOGUE`) names every metric the platform emits, with its kind, tags and
buckets. Code records through a `Telemetry` facade, whatever the process:

* `Telemetry.for_ray()` inside Ray (driver, trainer workers, Serve replicas): `ray.util.metrics`,
  scraped from each node's metrics export port (names there carry Ray's `ray_` prefix).
* `Telemetry.for_prometheus_client()` outside Ray (producer, CLI tools), served with
  `serve_prometheus_client()`.
* `NullTelemetry()` for unit tests and library use; it still checks names, kinds and tags.

`default_telemetry()` picks the Ray facade when Ray is initialised and `NullTelemetry` otherwise.
Nothing is created at import: instruments appear on first use.

>>> m = NullTelemetry()
>>> m.inc("freshrank_requests_total", tags={"status": "ok"})
>>> m.set("freshrank_window_auc", 0.71)
>>> m.observe("freshrank_window_auc", 0.71)
Traceback (most recent call last):
...
TypeError: freshrank_window_auc is a gauge; use set() or set_function(), not observe()
"""

from __future__ import annotations

import logging
import math
import numbers
import sys
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from freshrank.core.catalogue import (
    CATALOGUE,
    DRIFT_SOURCES,
    DRIFT_STATISTICS,
    METRIC_PREFIX,
    PROMOTION_OUTCOMES,
    RAY_PROMETHEUS_PREFIX,
    REQUEST_LATENCY_BUCKETS,
    REQUEST_STATUSES,
    STAGE_LATENCY_BUCKETS,
    UPDATE_LATENCY_BUCKETS,
    UPDATE_STAGES,
    MetricKind,
    MetricSpec,
    TagMap,
    TelemetryBackend,
    catalogue_markdown,
    metric_spec,
)

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

_log = logging.getLogger(__name__)


GaugeFunction = Callable[[], float]
"""A zero-argument callable giving a gauge's current value (see `Telemetry.set_function`)."""


# --------------------------------------------------------------------------------------------
# Exporters: the part that differs between backends. The facade validates before calling them.
# --------------------------------------------------------------------------------------------


class _Exporter(Protocol):
    backend: TelemetryBackend
    closed: bool

    def inc(self, spec: MetricSpec, value: float, tags: dict[str, str]) -> None: ...

    def set(self, spec: MetricSpec, value: float, tags: dict[str, str]) -> None: ...

    def set_function(self, spec: MetricSpec, fn: GaugeFunction, tags: dict[str, str]) -> None: ...

    def observe(self, spec: MetricSpec, value: float, tags: dict[str, str]) -> None: ...

    def close(self) -> None: ...


class _NullExporter:
    backend = TelemetryBackend.NULL
    closed = False

    def inc(self, spec: MetricSpec, value: float, tags: dict[str, str]) -> None:
        pass

    def set(self, spec: MetricSpec, value: float, tags: dict[str, str]) -> None:
        pass

    def set_function(self, spec: MetricSpec, fn: GaugeFunction, tags: dict[str, str]) -> None:
        pass

    def observe(self, spec: MetricSpec, value: float, tags: dict[str, str]) -> None:
        pass

    def close(self) -> None:
        pass


def _tag_key(tags: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(tags.items()))


class _RayExporter:
    """`ray.util.metrics` instruments, created on first use, plus a gauge refresher.

    Ray's agent forgets a gauge series two report intervals after the last report, and a
    process reports a gauge only when it is set. The refresher re-sets every live gauge (and
    re-evaluates gauge functions) at half the report interval so values stay scrapeable.
    """

    backend = TelemetryBackend.RAY

    def __init__(self, refresh_interval_s: float | None = None) -> None:
        self._ray = _require_ray()
        self._lock = threading.Lock()
        self._instruments: dict[str, Any] = {}
        self._gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float | GaugeFunction] = {}
        self._refresh_interval_s = (
            refresh_interval_s if refresh_interval_s is not None else _ray_refresh_interval_s()
        )
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None

    def _instrument(self, spec: MetricSpec) -> Any:  # noqa: ANN401 - a ray.util.metrics.Metric
        with self._lock:
            instrument = self._instruments.get(spec.name)
            if instrument is None:
                from ray.util import metrics as ray_metrics

                if spec.kind is MetricKind.COUNTER:
                    instrument = ray_metrics.Counter(
                        spec.name, spec.description, tag_keys=spec.tag_keys
                    )
                elif spec.kind is MetricKind.GAUGE:
                    instrument = ray_metrics.Gauge(
                        spec.name, spec.description, tag_keys=spec.tag_keys
                    )
                else:
                    instrument = ray_metrics.Histogram(
                        spec.name,
                        spec.description,
                        boundaries=list(spec.boundaries or ()),
                        tag_keys=spec.tag_keys,
                    )
                self._instruments[spec.name] = instrument
            return instrument

    def inc(self, spec: MetricSpec, value: float, tags: dict[str, str]) -> None:
        if value == 0:
            return  # Ray refuses inc(0); it changes nothing anyway.
        self._instrument(spec).inc(value, tags=tags or None)

    def set(self, spec: MetricSpec, value: float, tags: dict[str, str]) -> None:
        self._instrument(spec).set(value, tags=tags or None)
        self._remember(spec, tags, value)

    def set_function(self, spec: MetricSpec, fn: GaugeFunction, tags: dict[str, str]) -> None:
        self._remember(spec, tags, fn)
        self._refresh_one(spec, tags, fn)

    def observe(self, spec: MetricSpec, value: float, tags: dict[str, str]) -> None:
        self._instrument(spec).observe(value, tags=tags or None)

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    def close(self) -> None:
        self._stop.set()
        refresher = self._refresher
        if refresher is not None and refresher is not threading.current_thread():
            refresher.join(timeout=5)

    def _remember(
        self, spec: MetricSpec, tags: dict[str, str], value: float | GaugeFunction
    ) -> None:
        with self._lock:
            self._gauges[(spec.name, _tag_key(tags))] = value
            if self._refresher is None and not self._stop.is_set():
                self._refresher = threading.Thread(
                    target=self._refresh_loop, name="freshrank-gauge-refresher", daemon=True
                )
                self._refresher.start()

    def _refresh_one(
        self, spec: MetricSpec, tags: dict[str, str], value: float | GaugeFunction
    ) -> None:
        try:
            current = float(value()) if callable(value) else value
        except Exception:  # a gauge function must not kill the refresher
            _log.exception("gauge function for %s %s failed", spec.name, tags)
            return
        self._instrument(spec).set(current, tags=tags or None)

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self._refresh_interval_s):
            if not self._ray.is_initialized():
                continue
            with self._lock:
                items = list(self._gauges.items())
            for (name, tag_items), value in items:
                self._refresh_one(metric_spec(name), dict(tag_items), value)


def _require_ray() -> Any:  # noqa: ANN401 - the ray module
    import ray

    if not ray.is_initialized():
        raise RuntimeError(
            "Telemetry.for_ray() needs an initialised Ray (call ray.init() first, or run "
            "inside a Ray task, actor or Serve replica); use default_telemetry() to fall "
            "back to NullTelemetry, or Telemetry.for_prometheus_client() outside Ray"
        )
    return ray


def _ray_refresh_interval_s() -> float:
    """Half of Ray's effective metrics export interval (which is never below 1 s)."""
    try:
        import ray

        interval_ms = int(ray._config.metrics_report_interval_ms())
    except Exception:  # private API; fall back to Ray's default of 10 s
        interval_ms = 10_000
    return max(interval_ms, 1000) / 2000.0


# One set of prometheus_client collectors per registry, so two facades on one registry share
# them instead of failing with "Duplicated timeseries".
_PROM_COLLECTORS: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()
_PROM_LOCK = threading.Lock()


class _PrometheusClientExporter:
    backend = TelemetryBackend.PROMETHEUS_CLIENT
    closed = False

    def __init__(self, registry: CollectorRegistry | None) -> None:
        import prometheus_client

        self._prom = prometheus_client
        self.registry: CollectorRegistry = (
            registry if registry is not None else prometheus_client.REGISTRY
        )

    def _collector(self, spec: MetricSpec) -> Any:  # noqa: ANN401 - a prometheus_client metric
        with _PROM_LOCK:
            collectors = _PROM_COLLECTORS.setdefault(self.registry, {})
            collector = collectors.get(spec.name)
            if collector is None:
                common = {
                    "name": spec.name,
                    "documentation": spec.description,
                    "labelnames": spec.tag_keys,
                    "registry": self.registry,
                }
                if spec.kind is MetricKind.COUNTER:
                    collector = self._prom.Counter(**common)
                elif spec.kind is MetricKind.GAUGE:
                    collector = self._prom.Gauge(**common)
                else:
                    collector = self._prom.Histogram(**common, buckets=spec.boundaries or ())
                collectors[spec.name] = collector
            return collector

    def _child(self, spec: MetricSpec, tags: dict[str, str]) -> Any:  # noqa: ANN401
        collector = self._collector(spec)
        return collector.labels(**tags) if spec.tag_keys else collector

    def inc(self, spec: MetricSpec, value: float, tags: dict[str, str]) -> None:
        self._child(spec, tags).inc(value)

    def set(self, spec: MetricSpec, value: float, tags: dict[str, str]) -> None:
        self._child(spec, tags).set(value)

    def set_function(self, spec: MetricSpec, fn: GaugeFunction, tags: dict[str, str]) -> None:
        self._child(spec, tags).set_function(fn)

    def observe(self, spec: MetricSpec, value: float, tags: dict[str, str]) -> None:
        self._child(spec, tags).observe(value)

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------------------------
# The facade
# --------------------------------------------------------------------------------------------

_VERBS = {
    MetricKind.COUNTER: "inc()",
    MetricKind.GAUGE: "set() or set_function()",
    MetricKind.HISTOGRAM: "observe()",
}


class Telemetry:
    """Record catalogue metrics, whatever the backend.

    Every method checks the name against `CATALOGUE`, the kind against the method and the tags
    against the metric's declared keys, then hands the value to the backend.

    Raises (all methods):
        KeyError: the name is not in the catalogue (the message lists the known names).
        TypeError: the method does not fit the metric's kind, or a value is not a number.
        ValueError: tags are missing, undeclared or outside a closed set; a counter is
            decreased; a value is NaN.
    """

    def __init__(self, exporter: _Exporter) -> None:
        """Wrap an exporter; use `for_ray`, `for_prometheus_client` or `NullTelemetry` instead."""
        self._exporter = exporter

    @classmethod
    def for_ray(cls) -> Telemetry:
        """The process-wide facade over `ray.util.metrics` for the current Ray session.

        Instruments are created on first use. Values appear on each node's metrics export port
        named ``ray_<name>`` (see `MetricSpec.exported_name`).

        Raises:
            RuntimeError: Ray is not initialised in this process.
        """
        ray = _require_ray()
        session = ray.get_runtime_context().get_session_name()
        with _RAY_FACADES_LOCK:
            facade = _RAY_FACADES.get(session)
            if facade is None or facade._exporter.closed:
                for stale in _RAY_FACADES.values():
                    stale.close()
                _RAY_FACADES.clear()
                facade = _RAY_FACADES[session] = cls(_RayExporter())
            return facade

    @classmethod
    def for_prometheus_client(cls, registry: CollectorRegistry | None = None) -> Telemetry:
        """A facade over `prometheus_client`, for processes outside Ray.

        Args:
            registry: where the collectors live; ``None`` means prometheus_client's global
                ``REGISTRY`` (what `serve_prometheus_client` serves by default). Facades on the
                same registry share collectors.
        """
        return cls(_PrometheusClientExporter(registry))

    @property
    def backend(self) -> TelemetryBackend:
        """Which backend receives the values."""
        return self._exporter.backend

    @property
    def registry(self) -> CollectorRegistry | None:
        """The prometheus_client registry of this facade, or ``None`` for other backends."""
        return getattr(self._exporter, "registry", None)

    def exported_name(self, name: str) -> str:
        """Name under which metric ``name`` appears in this backend's Prometheus text."""
        return metric_spec(name).exported_name(self.backend)

    def inc(self, name: str, value: float = 1.0, tags: TagMap | None = None) -> None:
        """Add ``value`` (>= 0) to counter ``name``."""
        spec, checked = self._check(name, MetricKind.COUNTER, "inc()", tags)
        value = _number(name, value)
        if value < 0:
            raise ValueError(f"{name}: a counter only goes up; got inc({value})")
        self._exporter.inc(spec, value, checked)

    def set(self, name: str, value: float, tags: TagMap | None = None) -> None:
        """Set gauge ``name`` to ``value``."""
        spec, checked = self._check(name, MetricKind.GAUGE, "set()", tags)
        self._exporter.set(spec, _number(name, value), checked)

    def set_function(self, name: str, fn: GaugeFunction, tags: TagMap | None = None) -> None:
        """Make gauge ``name`` report ``fn()``, evaluated at scrape (or refresh) time.

        For values that change with the clock, such as freshness (now minus a watermark).
        In Ray it is evaluated at half the metrics report interval. ``fn`` must be cheap,
        thread-safe and return a float.
        """
        spec, checked = self._check(name, MetricKind.GAUGE, "set_function()", tags)
        if not callable(fn):
            raise TypeError(f"{name}: set_function() needs a callable, got {type(fn).__name__}")
        self._exporter.set_function(spec, fn, checked)

    def observe(self, name: str, value: float, tags: TagMap | None = None) -> None:
        """Record one observation of histogram ``name``."""
        spec, checked = self._check(name, MetricKind.HISTOGRAM, "observe()", tags)
        self._exporter.observe(spec, _number(name, value), checked)

    def close(self) -> None:
        """Stop background work (the Ray gauge refresher; other backends have none).

        After closing the shared Ray facade, the next `for_ray()` returns a new one.
        """
        self._exporter.close()

    @staticmethod
    def _check(
        name: str, kind: MetricKind, verb: str, tags: TagMap | None
    ) -> tuple[MetricSpec, dict[str, str]]:
        spec = metric_spec(name)
        if spec.kind is not kind:
            raise TypeError(f"{name} is a {spec.kind.value}; use {_VERBS[spec.kind]}, not {verb}")
        return spec, spec.check_tags(tags)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(backend={self.backend.value})"


class NullTelemetry(Telemetry):
    """A `Telemetry` that checks every call like the others and records nothing.

    For unit tests and for library code used without a metrics backend.
    """

    def __init__(self) -> None:
        """Create a facade whose values go nowhere."""
        super().__init__(_NullExporter())


_RAY_FACADES: dict[str, Telemetry] = {}
_RAY_FACADES_LOCK = threading.Lock()


def default_telemetry() -> Telemetry:
    """`Telemetry.for_ray()` when Ray is initialised in this process, else a `NullTelemetry`.

    Does not import Ray when nothing has imported it yet.

    >>> default_telemetry().backend in (TelemetryBackend.NULL, TelemetryBackend.RAY)
    True
    """
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return Telemetry.for_ray()
    return NullTelemetry()


def _number(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: value must be an int or float, got {type(value).__name__}")
    result = float(value)
    if math.isnan(result):
        raise ValueError(f"{name}: value is NaN")
    return result


@dataclass(frozen=True)
class TelemetryServer:
    """A running prometheus_client HTTP endpoint (see `serve_prometheus_client`)."""

    host: str
    port: int
    _server: Any = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    @property
    def url(self) -> str:
        """The scrape URL, e.g. ``http://127.0.0.1:9100/metrics``."""
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and free the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve_prometheus_client(
    port: int, registry: CollectorRegistry | None = None, addr: str = "127.0.0.1"
) -> TelemetryServer:
    """Serve a prometheus_client registry over HTTP from a daemon thread, on loopback by default.

    Args:
        port: TCP port; 0 picks a free one (read it from the result's ``port``).
        registry: what to serve; ``None`` means the global ``REGISTRY``. Pass
            ``metrics.registry`` for a facade made with its own registry.
        addr: address to bind; only widen it on purpose (the endpoint has no authentication).
    """
    import prometheus_client

    server, thread = prometheus_client.start_http_server(
        port, addr=addr, registry=registry if registry is not None else prometheus_client.REGISTRY
    )
    return TelemetryServer(host=addr, port=int(server.server_port), _server=server, _thread=thread)


__all__ = [
    "CATALOGUE",
    "DRIFT_SOURCES",
    "DRIFT_STATISTICS",
    "METRIC_PREFIX",
    "PROMOTION_OUTCOMES",
    "RAY_PROMETHEUS_PREFIX",
    "REQUEST_LATENCY_BUCKETS",
    "REQUEST_STATUSES",
    "STAGE_LATENCY_BUCKETS",
    "UPDATE_LATENCY_BUCKETS",
    "UPDATE_STAGES",
    "GaugeFunction",
    "MetricKind",
    "MetricSpec",
    "Telemetry",
    "TelemetryBackend",
    "TelemetryServer",
    "NullTelemetry",
    "TagMap",
    "catalogue_markdown",
    "default_telemetry",
    "metric_spec",
    "serve_prometheus_client",
]
