"""The telemetry catalogue: every Prometheus series freshrank emits, with its kind, tags,
allowed tag values, unit and buckets (`CATALOGUE`, `metric_spec`). Exporters are in
`freshrank.core.telemetry`; nothing here needs Ray or prometheus_client.

>>> metric_spec("freshrank_window_auc").kind
<MetricKind.GAUGE: 'gauge'>
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

TagMap = Mapping[str, str]
"""Tag values of one record, keyed by the metric's declared tag keys."""


class MetricKind(Enum):
    """What a metric records: a monotonic total, a last value, or a distribution."""

    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


class TelemetryBackend(Enum):
    """Where a `Telemetry` facade sends values."""

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

ROW_DROP_REASONS: tuple[str, ...] = ("missing_field", "out_of_time", "duplicate")
"""Values of the `reason` tag of `freshrank_rows_dropped_total` (the same words as
`freshrank.events.selection.DROP_REASONS` and the manifest's row counts)."""

DRIFT_STATISTICS: tuple[str, ...] = (
    "psi",
    "js",
    "linf",
    "unseen_rate",
    "ctr_shift",
    "surprise",
)
"""Values of the `statistic` tag of `freshrank_drift_alarm` (`drift.Statistic`)."""

UNREADABLE_RECORDS: tuple[str, ...] = ("champion", "pinned", "promotion_log")
"""Values of the `record` tag of `freshrank_registry_unreadable_total`."""

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
    >>> spec.exported_name(TelemetryBackend.RAY)
    'ray_freshrank_demo_total'
    >>> spec.exported_name(TelemetryBackend.PROMETHEUS_CLIENT)
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

    def exported_name(self, backend: TelemetryBackend = TelemetryBackend.RAY) -> str:
        """Name of the metric family in the Prometheus text the given backend serves.

        Counter samples carry this name as is (it already ends in ``_total``); histogram
        samples add ``_bucket``, ``_count`` and ``_sum``.
        """
        if backend is TelemetryBackend.RAY:
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
        "Event rows read from valid shards and not trained, by reason (ROW_DROP_REASONS: a "
        "missing required field, an event time beyond the allowed skew or age, an event id "
        "already trained).",
        "rows",
        "reason",
        reason=ROW_DROP_REASONS,
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
    _counter(
        "freshrank_registry_unreadable_total",
        "Reads of a registry record that could not be parsed and were skipped: a garbled "
        "CHAMPION or PINNED (read as none), promotion log lines that are not JSON events.",
        "reads",
        "record",
        record=UNREADABLE_RECORDS,
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
    _gauge(
        "freshrank_serving_fallback",
        "1 while a serving replica answers with another version than the one it should serve "
        "(champion or pin) because that one failed to load or verify; 0 otherwise.",
        "1",
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
    # --- drift (see freshrank/drift/) ------------------------------------------------------
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
        "(thresholds: freshrank.drift.DriftThresholds).",
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
