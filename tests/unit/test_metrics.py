"""The metric catalogue and the prometheus_client / null facades (no Ray)."""

from __future__ import annotations

import re
import sys
import types

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from freshrank.core import (
    CATALOGUE,
    METRIC_PREFIX,
    REQUEST_STATUSES,
    MetricKind,
    MetricSpec,
    NullTelemetry,
    Telemetry,
    TelemetryBackend,
    default_telemetry,
    metric_spec,
    serve_prometheus_client,
)

REQUIRED = {
    "freshrank_events_trained_total": MetricKind.COUNTER,
    "freshrank_events_landed_total": MetricKind.COUNTER,
    "freshrank_shards_quarantined_total": MetricKind.COUNTER,
    "freshrank_rows_dropped_total": MetricKind.COUNTER,
    "freshrank_windows_trained_total": MetricKind.COUNTER,
    "freshrank_window_auc": MetricKind.GAUGE,
    "freshrank_window_logloss": MetricKind.GAUGE,
    "freshrank_trainer_model_version": MetricKind.GAUGE,
    "freshrank_served_model_version": MetricKind.GAUGE,
    "freshrank_freshness_seconds": MetricKind.GAUGE,
    "freshrank_model_swaps_total": MetricKind.COUNTER,
    "freshrank_requests_total": MetricKind.COUNTER,
    "freshrank_request_latency_seconds": MetricKind.HISTOGRAM,
    "freshrank_update_latency_seconds": MetricKind.HISTOGRAM,
    "freshrank_promotions_total": MetricKind.COUNTER,
}


def scrape(registry: CollectorRegistry) -> dict[str, dict[tuple, float]]:
    """Sample name -> {sorted label items -> value}, parsed from the text exposition."""
    text = generate_latest(registry).decode()
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


@pytest.fixture
def prom() -> Telemetry:
    return Telemetry.for_prometheus_client(CollectorRegistry())


# --- catalogue -------------------------------------------------------------------------------


def test_catalogue_names_unique_and_prefixed():
    names = [spec.name for spec in CATALOGUE]
    assert len(names) == len(set(names))
    assert all(name.startswith(METRIC_PREFIX) for name in names)
    assert all(isinstance(spec, MetricSpec) for spec in CATALOGUE)


def test_catalogue_has_the_agreed_metrics_with_their_kinds_and_tags():
    kinds = {spec.name: spec.kind for spec in CATALOGUE}
    for name, kind in REQUIRED.items():
        assert kinds.get(name) is kind, name
    assert metric_spec("freshrank_served_model_version").tag_keys == ("replica",)
    assert metric_spec("freshrank_freshness_seconds").tag_keys == ("replica",)
    assert metric_spec("freshrank_model_swaps_total").tag_keys == ("replica",)
    assert metric_spec("freshrank_requests_total").tag_keys == ("status",)
    assert metric_spec("freshrank_requests_total").allowed_values("status") == REQUEST_STATUSES
    assert metric_spec("freshrank_promotions_total").tag_keys == ("outcome",)


def test_catalogue_kinds_follow_prometheus_conventions():
    for spec in CATALOGUE:
        assert spec.description.strip(), spec.name
        assert spec.name.endswith("_total") == (spec.kind is MetricKind.COUNTER), spec.name
        if spec.kind is MetricKind.HISTOGRAM:
            assert spec.boundaries and list(spec.boundaries) == sorted(set(spec.boundaries))
            assert spec.boundaries[0] > 0
        else:
            assert spec.boundaries is None


def test_exported_name_per_backend():
    spec = metric_spec("freshrank_requests_total")
    assert spec.exported_name() == "ray_freshrank_requests_total"
    assert spec.exported_name(TelemetryBackend.RAY) == "ray_freshrank_requests_total"
    assert spec.exported_name(TelemetryBackend.PROMETHEUS_CLIENT) == "freshrank_requests_total"
    prom = Telemetry.for_prometheus_client(CollectorRegistry())
    assert prom.exported_name("freshrank_window_auc") == "freshrank_window_auc"


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"name": "rank_total", "kind": MetricKind.COUNTER}, "name must match"),
        ({"name": "freshrank_x", "kind": MetricKind.COUNTER}, "must end in '_total'"),
        ({"name": "freshrank_x_total", "kind": MetricKind.GAUGE}, "only counters"),
        ({"name": "freshrank_x", "kind": MetricKind.HISTOGRAM}, "needs boundaries"),
        (
            {"name": "freshrank_x", "kind": MetricKind.HISTOGRAM, "boundaries": (1.0, 0.5)},
            "strictly increasing",
        ),
        (
            {"name": "freshrank_x", "kind": MetricKind.HISTOGRAM, "boundaries": (0.0, 1.0)},
            "> 0",
        ),
        ({"name": "freshrank_x", "kind": MetricKind.GAUGE, "boundaries": (1.0,)}, "only hist"),
        ({"name": "freshrank_x", "kind": MetricKind.GAUGE, "tag_keys": ("le",)}, "reserved"),
        ({"name": "freshrank_x", "kind": MetricKind.GAUGE, "tag_keys": ("Replica",)}, "snake"),
        ({"name": "freshrank_x", "kind": MetricKind.GAUGE, "tag_keys": ("a", "a")}, "repeat"),
        ({"name": "freshrank_x", "kind": MetricKind.GAUGE, "unit": "seconds"}, "_seconds"),
        (
            {"name": "freshrank_x", "kind": MetricKind.GAUGE, "tag_values": (("a", ("b",)),)},
            "not in tag_keys",
        ),
    ],
)
def test_metric_spec_refuses_bad_definitions(kwargs, fragment):
    kwargs = {"description": "d", **kwargs}
    with pytest.raises(ValueError, match=re.escape(fragment)):
        MetricSpec(**kwargs)


# --- prometheus_client backend ---------------------------------------------------------------


def test_prometheus_client_counter_gauge_and_tags(prom):
    for _ in range(3):
        prom.inc("freshrank_requests_total", 2.5, tags={"status": "ok"})
    prom.inc("freshrank_requests_total", tags={"status": "unavailable"})
    prom.inc("freshrank_events_trained_total", 1000)
    prom.inc("freshrank_events_trained_total", 0)
    prom.set("freshrank_served_model_version", 3, tags={"replica": "r1"})
    prom.set("freshrank_served_model_version", 7, tags={"replica": "r1"})
    prom.set("freshrank_served_model_version", 6, tags={"replica": "r2"})
    prom.set("freshrank_window_auc", 0.731)

    samples = scrape(prom.registry)
    assert samples["freshrank_requests_total"] == {
        (("status", "ok"),): 7.5,
        (("status", "unavailable"),): 1.0,
    }
    assert samples["freshrank_events_trained_total"] == {(): 1000.0}
    assert samples["freshrank_served_model_version"] == {
        (("replica", "r1"),): 7.0,
        (("replica", "r2"),): 6.0,
    }
    assert samples["freshrank_window_auc"] == {(): 0.731}


def test_prometheus_client_histogram_counts_observations(prom):
    for value in (0.0005, 0.003, 0.003, 0.2, 60.0):
        prom.observe("freshrank_request_latency_seconds", value)

    samples = scrape(prom.registry)
    assert samples["freshrank_request_latency_seconds_count"] == {(): 5.0}
    assert samples["freshrank_request_latency_seconds_sum"][()] == pytest.approx(60.2065)
    buckets = {
        dict(k)["le"]: v for k, v in samples["freshrank_request_latency_seconds_bucket"].items()
    }
    assert buckets["0.001"] == 1.0
    assert buckets["0.005"] == 3.0
    assert buckets["0.25"] == 4.0
    assert buckets["5.0"] == 4.0
    assert buckets["+Inf"] == 5.0
    spec = metric_spec("freshrank_request_latency_seconds")
    assert len(buckets) == len(spec.boundaries) + 1


def test_prometheus_client_gauge_function_is_read_at_scrape(prom):
    clock = {"now": 100.0}
    prom.set_function(
        "freshrank_freshness_seconds", lambda: clock["now"] - 40.0, tags={"replica": "r1"}
    )
    assert scrape(prom.registry)["freshrank_freshness_seconds"] == {(("replica", "r1"),): 60.0}
    clock["now"] = 130.0
    assert scrape(prom.registry)["freshrank_freshness_seconds"] == {(("replica", "r1"),): 90.0}


def test_facades_on_one_registry_share_collectors():
    registry = CollectorRegistry()
    first = Telemetry.for_prometheus_client(registry)
    second = Telemetry.for_prometheus_client(registry)
    first.inc("freshrank_windows_trained_total")
    second.inc("freshrank_windows_trained_total")
    assert scrape(registry)["freshrank_windows_trained_total"] == {(): 2.0}


def test_serve_prometheus_client_on_loopback():
    registry = CollectorRegistry()
    metrics = Telemetry.for_prometheus_client(registry)
    metrics.inc("freshrank_events_landed_total", 42)
    server = serve_prometheus_client(0, registry=metrics.registry)
    try:
        assert server.host == "127.0.0.1" and server.port > 0
        response = httpx.get(server.url, timeout=5)
        response.raise_for_status()
        families = {f.name: f for f in text_string_to_metric_families(response.text)}
        (sample,) = [
            s for s in families["freshrank_events_landed"].samples if s.name.endswith("_total")
        ]
        assert sample.value == 42.0
    finally:
        server.close()


# --- errors, on every backend that runs without Ray -----------------------------------------


@pytest.fixture(params=["prometheus_client", "null"])
def any_metrics(request) -> Telemetry:
    if request.param == "null":
        return NullTelemetry()
    return Telemetry.for_prometheus_client(CollectorRegistry())


def test_unknown_name_raises_key_error_listing_known_names(any_metrics):
    with pytest.raises(KeyError) as info:
        any_metrics.inc("freshrank_nope_total")
    message = str(info.value)
    assert "freshrank_nope_total" in message
    assert all(spec.name in message for spec in CATALOGUE)


@pytest.mark.parametrize(
    ("method", "name"),
    [
        ("inc", "freshrank_window_auc"),
        ("set", "freshrank_windows_trained_total"),
        ("observe", "freshrank_trainer_model_version"),
        ("set", "freshrank_request_latency_seconds"),
    ],
)
def test_wrong_kind_raises_type_error(any_metrics, method, name):
    with pytest.raises(TypeError, match="use "):
        getattr(any_metrics, method)(name, 1.0)


def test_bad_tags_and_values_are_refused(any_metrics):
    with pytest.raises(ValueError, match="missing tag"):
        any_metrics.inc("freshrank_requests_total")
    with pytest.raises(ValueError, match="unknown tag"):
        any_metrics.set("freshrank_window_auc", 0.5, tags={"replica": "r1"})
    with pytest.raises(ValueError, match="not one of"):
        any_metrics.inc("freshrank_requests_total", tags={"status": "teapot"})
    with pytest.raises(TypeError, match="must be a str"):
        any_metrics.set("freshrank_served_model_version", 1, tags={"replica": 1})
    with pytest.raises(ValueError, match="only goes up"):
        any_metrics.inc("freshrank_windows_trained_total", -1)
    with pytest.raises(TypeError, match="int or float"):
        any_metrics.set("freshrank_window_auc", "0.5")
    with pytest.raises(ValueError, match="NaN"):
        any_metrics.set("freshrank_window_auc", float("nan"))
    with pytest.raises(TypeError, match="callable"):
        any_metrics.set_function("freshrank_window_auc", 0.5)


def test_null_metrics_accepts_valid_calls():
    metrics = NullTelemetry()
    assert metrics.backend is TelemetryBackend.NULL
    assert metrics.registry is None
    metrics.inc("freshrank_promotions_total", tags={"outcome": "promoted"})
    metrics.set("freshrank_trainer_model_version", 12)
    metrics.set_function("freshrank_freshness_seconds", lambda: 1.0, tags={"replica": "r"})
    metrics.observe("freshrank_update_latency_seconds", 12.5)
    metrics.close()


def test_default_metrics_without_ray_is_null(monkeypatch):
    # Ray not imported at all: no import is triggered, the result is a NullTelemetry.
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    assert isinstance(default_telemetry(), NullTelemetry)
    assert "ray" not in sys.modules
    # Ray imported but not initialised.
    fake_ray = types.SimpleNamespace(is_initialized=lambda: False)
    monkeypatch.setitem(sys.modules, "ray", fake_ray)
    assert isinstance(default_telemetry(), NullTelemetry)
