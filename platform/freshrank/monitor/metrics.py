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
buckets. Code records through a `Metrics` facade, whatever the process:

* `Metrics.for_ray()` inside Ray (driver, trainer workers, Serve replicas): `ray.util.metrics`,
  scraped from each node's metrics export port (names there carry Ray's `ray_` prefix).
* `Metrics.for_prometheus_client()` outside Ray (producer, CLI tools), served with
  `serve_prometheus_client()`.
* `NullMetrics()` for unit tests and library use; it still checks names, kinds and tags.

`default_metrics()` picks the Ray facade when Ray is initialised and `NullMetrics` otherwise.
Nothing is created at import: instruments appear on first use.

>>> m = NullMetrics()
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
import re
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

_log = logging.getLogger(__name__)

TagMap = Mapping[str, str]
"""Tag values of one record, keyed by the metric's declared tag keys."""

GaugeFunction = Callable[[], float]
"""A zero-argument callable giving a gauge's current value (see `Metrics.set_function`)."""


class MetricKind(Enum):
    """What a metric records: a monotonic total, a last value, or a distribution."""

    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


class MetricsBackend(Enum):
    """Where a `Metrics` facade sends values."""

    RAY = "ray"
    PROMETHEUS_CLIENT = "prometheus_client"
    NULL = "null"


RAY_PROMETHEUS_PREFIX = "ray_"
"""Prefix Ray's metrics agent puts before every application metric name (cannot be turned off)."""

METRIC_PREFIX = "freshrank_"
"""Prefix of every freshrank metric name."""

REQUEST_STATUSES: tuple[str, ...] = ("ok", "client_error", "server_error", "unavailable")
"""Values of the `status` tag of `freshrank_requests_total`."""

PROMOTION_OUTCOMES: tuple[str, ...] = ("promoted", "rejected", "rolled_back", "error")
"""Values of the `outcome` tag of `freshrank_promotions_total`."""

DRIFT_STATISTICS: tuple[str, ...] = (
    "psi",
    "js",
    "linf",
    "unseen_rate",
    "ctr_shift",
    "surprise",
)
"""Values of the `statistic` tag of `freshrank_drift_alarm` (`drift.Statistic`)."""

DRIFT_SOURCES: tuple[str, ...] = ("trainer", "serving")
"""Values of the `source` tag of `freshrank_score_psi` (`drift.DriftSource`)."""

UPDATE_STAGES: tuple[str, ...] = (
    "landed_to_read",
    "read_to_trained",
    "trained_to_checkpointed",
    "checkpointed_to_promoted",
    "promoted_to_live",
)
"""The `stage` values of `freshrank_stage_latency_seconds` for the update path, in order:
a shard landing -> read by the trainer -> trained on -> checkpointed -> promoted -> live on a
replica. `freshrank_landed_to_live_seconds` is the whole path."""

REQUEST_LATENCY_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
"""Histogram boundaries (seconds) for one ranking request, 1 ms to 5 s."""

UPDATE_LATENCY_BUCKETS: tuple[float, ...] = (
    1.0,
    2.0,
    5.0,
    10.0,
    20.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1200.0,
    1800.0,
    3600.0,
)
"""Histogram boundaries (seconds) from a shard landing to a trained version, 1 s to 1 h."""

STAGE_LATENCY_BUCKETS: tuple[float, ...] = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
)
"""Histogram boundaries (seconds) for one pipeline stage (read, encode, train, ...)."""

_NAME_RE = re.compile(r"^freshrank_[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")
_TAG_KEY_RE = re.compile(r"^[a-z][a-z0-9_]*$")
# Labels Prometheus or its server reserve, and Ray's own labels in lower case.
_RESERVED_TAG_KEYS = frozenset(
    {
        "le",
        "quantile",
        "job",
        "instance",
        "component",
        "nodeaddress",
        "sessionname",
        "version",
        "workerid",
    }
)


@dataclass(frozen=True)
class MetricSpec:
    """One metric of the catalogue: its name, kind, meaning and the labels it may carry.

    Args:
        name: Prometheus name, ``freshrank_`` + snake case; counters end in ``_total``.
        kind: counter, gauge or histogram.
        description: what is measured (the ``# HELP`` text).
        unit: unit of the value (``"seconds"``, ``"events"``, ``"1"`` for a ratio/score).
        tag_keys: label names; every record gives a value for each. Keep them low-cardinality
            (statuses, replicas, features), never ids of users, requests or items.
        boundaries: histogram bucket upper bounds, strictly increasing and > 0 (Ray's rule);
            ``None`` for counters and gauges.
        tag_values: optional closed sets of values, as ``((key, (value, ...)), ...)``; a record
            with another value for such a key is refused.

    >>> spec = MetricSpec("freshrank_demo_total", MetricKind.COUNTER, "Demo.", "events")
    >>> spec.exported_name(MetricsBackend.RAY)
    'ray_freshrank_demo_total'
    >>> spec.exported_name(MetricsBackend.PROMETHEUS_CLIENT)
    'freshrank_demo_total'
    >>> MetricSpec("freshrank_demo", MetricKind.COUNTER, "Demo.", "events")
    Traceback (most recent call last):
    ...
    ValueError: counter freshrank_demo: a counter name must end in '_total' (Prometheus convention)
    """

    name: str
    kind: MetricKind
    description: str
    unit: str = ""
    tag_keys: tuple[str, ...] = ()
    boundaries: tuple[float, ...] | None = None
    tag_values: tuple[tuple[str, tuple[str, ...]], ...] = field(default=())

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem is not None:
            raise ValueError(f"{self.kind.value} {self.name}: {problem}")

    def _problem(self) -> str | None:
        if not isinstance(self.kind, MetricKind):
            return f"kind must be a MetricKind, got {self.kind!r}"
        if not _NAME_RE.match(self.name):
            return (
                f"name must match {_NAME_RE.pattern} (snake case with the {METRIC_PREFIX!r} prefix)"
            )
        if not self.description.strip():
            return "give a description; it becomes the # HELP line"
        if self.kind is MetricKind.COUNTER and not self.name.endswith("_total"):
            return "a counter name must end in '_total' (Prometheus convention)"
        if self.kind is not MetricKind.COUNTER and self.name.endswith("_total"):
            return "only counters end in '_total'; rename it"
        if self.unit == "seconds" and "_seconds" not in self.name:
            return "a metric in seconds must say so in its name ('..._seconds')"
        if not isinstance(self.tag_keys, tuple):
            return f"tag_keys must be a tuple of str, got {type(self.tag_keys).__name__}"
        if len(set(self.tag_keys)) != len(self.tag_keys):
            return f"tag_keys repeat a key: {self.tag_keys}"
        for key in self.tag_keys:
            if not isinstance(key, str) or not _TAG_KEY_RE.match(key):
                return f"tag key {key!r} must be lower snake case"
            if key in _RESERVED_TAG_KEYS:
                return f"tag key {key!r} is reserved by Prometheus or Ray; pick another"
        for key, values in self.tag_values:
            if key not in self.tag_keys:
                return f"tag_values names {key!r}, which is not in tag_keys {self.tag_keys}"
            if not values or not all(isinstance(v, str) for v in values):
                return f"tag_values for {key!r} must be a non-empty tuple of str"
        if self.kind is MetricKind.HISTOGRAM:
            bounds = self.boundaries
            if not bounds:
                return "a histogram needs boundaries, e.g. (0.01, 0.1, 1.0)"
            if any(not math.isfinite(b) or b <= 0 for b in bounds):
                return f"boundaries must be finite and > 0 (Ray refuses others): {bounds}"
            if any(b >= c for b, c in zip(bounds[:-1], bounds[1:], strict=True)):
                return f"boundaries must be strictly increasing: {bounds}"
        elif self.boundaries is not None:
            return "only histograms take boundaries; leave them None"
        return None

    def exported_name(self, backend: MetricsBackend = MetricsBackend.RAY) -> str:
        """Name of the metric family in the Prometheus text the given backend serves.

        Counter samples carry this name as is (it already ends in ``_total``); histogram
        samples add ``_bucket``, ``_count`` and ``_sum``.
        """
        if backend is MetricsBackend.RAY:
            return RAY_PROMETHEUS_PREFIX + self.name
        return self.name

    def allowed_values(self, key: str) -> tuple[str, ...] | None:
        """The closed set of values for tag ``key``, or ``None`` when any value is allowed.

        >>> metric_spec("freshrank_requests_total").allowed_values("status")
        ('ok', 'client_error', 'server_error', 'unavailable')
        """
        for k, values in self.tag_values:
            if k == key:
                return values
        return None

    def check_tags(self, tags: TagMap | None) -> dict[str, str]:
        """Return ``tags`` as a dict after checking them against the declared keys and values.

        Raises:
            ValueError: a declared key is missing, an undeclared key is given, or a value is
                outside the key's closed set.
            TypeError: a value is not a str.

        >>> metric_spec("freshrank_model_swaps_total").check_tags({"replica": "r1"})
        {'replica': 'r1'}
        >>> metric_spec("freshrank_model_swaps_total").check_tags(None)
        Traceback (most recent call last):
        ...
        ValueError: freshrank_model_swaps_total: missing tag(s) ['replica']; declared: ('replica',)
        """
        given = dict(tags) if tags else {}
        missing = [k for k in self.tag_keys if k not in given]
        if missing:
            raise ValueError(f"{self.name}: missing tag(s) {missing}; declared: {self.tag_keys}")
        unknown = sorted(k for k in given if k not in self.tag_keys)
        if unknown:
            raise ValueError(f"{self.name}: unknown tag(s) {unknown}; declared: {self.tag_keys}")
        for key, value in given.items():
            if not isinstance(value, str):
                raise TypeError(
                    f"{self.name}: tag {key!r} must be a str, got {type(value).__name__}"
                )
            allowed = self.allowed_values(key)
            if allowed is not None and value not in allowed:
                raise ValueError(f"{self.name}: tag {key}={value!r} is not one of {allowed}")
        return given


def _counter(
    name: str, description: str, unit: str, *tag_keys: str, **tag_values: tuple[str, ...]
) -> MetricSpec:
    return MetricSpec(
        name, MetricKind.COUNTER, description, unit, tag_keys, None, tuple(tag_values.items())
    )


def _gauge(name: str, description: str, unit: str, *tag_keys: str) -> MetricSpec:
    return MetricSpec(name, MetricKind.GAUGE, description, unit, tag_keys)


def _histogram(
    name: str, description: str, unit: str, boundaries: tuple[float, ...], *tag_keys: str
) -> MetricSpec:
    return MetricSpec(name, MetricKind.HISTOGRAM, description, unit, tag_keys, boundaries)


CATALOGUE: tuple[MetricSpec, ...] = (
    # --- landing zone and training -------------------------------------------------------
    _counter(
        "freshrank_events_landed_total", "Event rows committed to the landing zone.", "events"
    ),
    _counter(
        "freshrank_shards_quarantined_total",
        "Shards moved to quarantine because they failed validation.",
        "shards",
    ),
    _counter(
        "freshrank_rows_dropped_total",
        "Event rows dropped before training (missing required fields, bad values).",
        "rows",
    ),
    _counter("freshrank_events_trained_total", "Event rows the trainer has trained on.", "events"),
    _counter(
        "freshrank_shards_trained_total",
        "Shards whose valid rows the trainer has trained on (quarantined ones not included).",
        "shards",
    ),
    _counter(
        "freshrank_windows_trained_total", "Training windows completed by the trainer.", "windows"
    ),
    _gauge(
        "freshrank_window_auc",
        "AUC of the model on the latest window, evaluated before training on it.",
        "1",
    ),
    _gauge(
        "freshrank_window_logloss",
        "Log loss of the model on the latest window, evaluated before training on it.",
        "1",
    ),
    _gauge(
        "freshrank_window_gauc",
        "Per-request AUC (GAUC) of the model's relevance scores on the latest window, "
        "evaluated before training on it.",
        "1",
    ),
    _gauge(
        "freshrank_window_ndcg",
        "NDCG@10 of the model's relevance scores over the latest window's requests with a "
        "click, evaluated before training on it.",
        "1",
    ),
    _gauge(
        "freshrank_trainer_model_version", "Latest model version trained and checkpointed.", "1"
    ),
    _histogram(
        "freshrank_update_latency_seconds",
        "Time from a shard landing to a model version trained on it being checkpointed.",
        "seconds",
        UPDATE_LATENCY_BUCKETS,
    ),
    _histogram(
        "freshrank_stage_latency_seconds",
        "Duration of one stage of the update path (UPDATE_STAGES: landed_to_read, "
        "read_to_trained, trained_to_checkpointed, checkpointed_to_promoted, promoted_to_live).",
        "seconds",
        STAGE_LATENCY_BUCKETS,
        "stage",
    ),
    _histogram(
        "freshrank_landed_to_live_seconds",
        "Time from a shard landing to a model trained on it answering requests on a replica.",
        "seconds",
        UPDATE_LATENCY_BUCKETS,
    ),
    # --- registry ------------------------------------------------------------------------
    _counter(
        "freshrank_promotions_total",
        "Promotion gate decisions on challenger versions.",
        "decisions",
        "outcome",
        outcome=PROMOTION_OUTCOMES,
    ),
    # --- serving -------------------------------------------------------------------------
    _gauge(
        "freshrank_served_model_version",
        "Model version a serving replica answers with.",
        "1",
        "replica",
    ),
    _gauge(
        "freshrank_freshness_seconds",
        "Now minus the event-time watermark of the model a replica serves.",
        "seconds",
        "replica",
    ),
    _counter(
        "freshrank_model_swaps_total",
        "Model hot swaps done by a serving replica.",
        "swaps",
        "replica",
    ),
    _counter(
        "freshrank_model_load_failures_total",
        "Model loads that failed in a serving replica (the old model kept serving).",
        "loads",
        "replica",
    ),
    _counter(
        "freshrank_requests_total",
        "Ranking requests answered, by outcome.",
        "requests",
        "status",
        status=REQUEST_STATUSES,
    ),
    _histogram(
        "freshrank_request_latency_seconds",
        "Time to answer one ranking request inside the service.",
        "seconds",
        REQUEST_LATENCY_BUCKETS,
    ),
    # --- drift (see monitor/drift.py) ----------------------------------------------------
    _gauge(
        "freshrank_drift_psi",
        "Population stability index of a numeric feature in the latest window vs the reference.",
        "1",
        "feature",
    ),
    _gauge(
        "freshrank_drift_js",
        "Jensen-Shannon divergence (bits, top-k + other) of a categorical feature in the latest "
        "window vs the reference.",
        "1",
        "feature",
    ),
    _gauge(
        "freshrank_drift_linf",
        "Largest change in any top-k category's share in the latest window vs the reference.",
        "1",
        "feature",
    ),
    _gauge(
        "freshrank_drift_unseen_rate",
        "Share of ids in the latest window that the model never saw in training.",
        "1",
        "feature",
    ),
    _gauge(
        "freshrank_drift_surprise",
        "Rise of the mean surprise -log p(value | key) in nats (e.g. a row's category given its "
        "user: the users' interests) in the latest window over the reference's own.",
        "1",
        "feature",
    ),
    _gauge(
        "freshrank_ctr_shift",
        "Relative change of the latest window's click-through rate vs the reference "
        "(ctr / ctr_ref - 1).",
        "1",
    ),
    MetricSpec(
        "freshrank_score_psi",
        MetricKind.GAUGE,
        "Population stability index of model scores (trainer: a new window; serving: served "
        "requests) vs the scores on the model's training reference.",
        "1",
        ("source",),
        None,
        (("source", DRIFT_SOURCES),),
    ),
    MetricSpec(
        "freshrank_drift_alarm",
        MetricKind.GAUGE,
        "1 when the latest window's drift statistic of a feature is over its threshold, else 0 "
        "(thresholds: monitor.drift.DriftThresholds).",
        "1",
        ("feature", "statistic"),
        None,
        (("statistic", DRIFT_STATISTICS),),
    ),
)
"""Every metric freshrank emits. Add new ones here, never ad hoc at the call site."""


def _index(specs: Iterable[MetricSpec]) -> dict[str, MetricSpec]:
    index: dict[str, MetricSpec] = {}
    for spec in specs:
        if spec.name in index:
            raise ValueError(f"metric {spec.name} is defined twice")
        index[spec.name] = spec
    return index


_BY_NAME: dict[str, MetricSpec] = _index(CATALOGUE)


def metric_spec(name: str) -> MetricSpec:
    """Look a metric up in the catalogue.

    Raises:
        KeyError: ``name`` is not in the catalogue; the message lists the known names.

    >>> metric_spec("freshrank_window_auc").kind
    <MetricKind.GAUGE: 'gauge'>
    """
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(
            f"unknown metric {name!r}; known metrics: {', '.join(sorted(_BY_NAME))}"
        ) from None


def catalogue_markdown() -> str:
    """The catalogue as a Markdown table (name, type, labels, unit, meaning), as
    docs/observability.md shows it between its ``catalogue`` markers.

    >>> print(catalogue_markdown().splitlines()[0])
    | name | type | labels | unit | meaning |
    """
    rows = ["| name | type | labels | unit | meaning |", "|---|---|---|---|---|"]
    for spec in CATALOGUE:
        labels = []
        for key in spec.tag_keys:
            allowed = spec.allowed_values(key)
            labels.append(f"`{key}`" + (f" ({', '.join(allowed)})" if allowed else ""))
        kind = spec.kind.value
        if spec.boundaries:
            kind += f" ({spec.boundaries[0]:g} to {spec.boundaries[-1]:g})"
        meaning = spec.description.replace("|", "\\|")
        rows.append(
            f"| `{spec.name}` | {kind} | {', '.join(labels) or '-'} | {spec.unit or '-'} "
            f"| {meaning} |"
        )
    return "\n".join(rows)


# --------------------------------------------------------------------------------------------
# Exporters: the part that differs between backends. The facade validates before calling them.
# --------------------------------------------------------------------------------------------


class _Exporter(Protocol):
    backend: MetricsBackend
    closed: bool

    def inc(self, spec: MetricSpec, value: float, tags: dict[str, str]) -> None: ...

    def set(self, spec: MetricSpec, value: float, tags: dict[str, str]) -> None: ...

    def set_function(self, spec: MetricSpec, fn: GaugeFunction, tags: dict[str, str]) -> None: ...

    def observe(self, spec: MetricSpec, value: float, tags: dict[str, str]) -> None: ...

    def close(self) -> None: ...


class _NullExporter:
    backend = MetricsBackend.NULL
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

    backend = MetricsBackend.RAY

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
                self._refresh_one(_BY_NAME[name], dict(tag_items), value)


def _require_ray() -> Any:  # noqa: ANN401 - the ray module
    import ray

    if not ray.is_initialized():
        raise RuntimeError(
            "Metrics.for_ray() needs an initialised Ray (call ray.init() first, or run "
            "inside a Ray task, actor or Serve replica); use default_metrics() to fall "
            "back to NullMetrics, or Metrics.for_prometheus_client() outside Ray"
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
    backend = MetricsBackend.PROMETHEUS_CLIENT
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


class Metrics:
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
        """Wrap an exporter; use `for_ray`, `for_prometheus_client` or `NullMetrics` instead."""
        self._exporter = exporter

    @classmethod
    def for_ray(cls) -> Metrics:
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
    def for_prometheus_client(cls, registry: CollectorRegistry | None = None) -> Metrics:
        """A facade over `prometheus_client`, for processes outside Ray.

        Args:
            registry: where the collectors live; ``None`` means prometheus_client's global
                ``REGISTRY`` (what `serve_prometheus_client` serves by default). Facades on the
                same registry share collectors.
        """
        return cls(_PrometheusClientExporter(registry))

    @property
    def backend(self) -> MetricsBackend:
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


class NullMetrics(Metrics):
    """A `Metrics` that checks every call like the others and records nothing.

    For unit tests and for library code used without a metrics backend.
    """

    def __init__(self) -> None:
        """Create a facade whose values go nowhere."""
        super().__init__(_NullExporter())


_RAY_FACADES: dict[str, Metrics] = {}
_RAY_FACADES_LOCK = threading.Lock()


def default_metrics() -> Metrics:
    """`Metrics.for_ray()` when Ray is initialised in this process, else a `NullMetrics`.

    Does not import Ray when nothing has imported it yet.

    >>> default_metrics().backend in (MetricsBackend.NULL, MetricsBackend.RAY)
    True
    """
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return Metrics.for_ray()
    return NullMetrics()


def _number(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: value must be an int or float, got {type(value).__name__}")
    result = float(value)
    if math.isnan(result):
        raise ValueError(f"{name}: value is NaN")
    return result


@dataclass(frozen=True)
class MetricsServer:
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
) -> MetricsServer:
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
    return MetricsServer(host=addr, port=int(server.server_port), _server=server, _thread=thread)


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
    "Metrics",
    "MetricsBackend",
    "MetricsServer",
    "NullMetrics",
    "TagMap",
    "catalogue_markdown",
    "default_metrics",
    "metric_spec",
    "serve_prometheus_client",
]
