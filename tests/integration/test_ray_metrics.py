"""Series recorded through `Telemetry.for_ray()` reach the node's Prometheus endpoint, exactly.

Values are recorded in an actor (as the trainer and Serve replicas do) and in the driver, then
the endpoint is polled until they show up. Ray adds a ``WorkerId`` label per process, and other
tests of the session may record the same metrics, so every assertion selects the series of the
process that recorded it.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from freshrank.core import Telemetry, TelemetryBackend, default_telemetry, metric_spec

pytestmark = pytest.mark.integration

T = TypeVar("T")

DEADLINE_S = 30.0
POLL_S = 0.2
WATERMARK_AGE_S = 120.0
REPLICA = "metrics-test-replica"


@ray.remote(num_cpus=0)
class Emitter:
    """Stands in for a trainer worker or a Serve replica."""

    def __init__(self) -> None:
        self.metrics = Telemetry.for_ray()

    def worker_id(self) -> str:
        return ray.get_runtime_context().get_worker_id()

    def backend(self) -> str:
        return self.metrics.backend.value

    def emit(self) -> None:
        for _ in range(3):
            self.metrics.inc("freshrank_requests_total", 2.5, tags={"status": "ok"})
        self.metrics.inc("freshrank_requests_total", tags={"status": "unavailable"})
        self.metrics.set("freshrank_served_model_version", 3, tags={"replica": REPLICA})
        self.metrics.set("freshrank_served_model_version", 7, tags={"replica": REPLICA})
        for seconds in (0.003, 0.003, 0.2, 0.7):
            self.metrics.observe("freshrank_request_latency_seconds", seconds)
        watermark = time.time() - WATERMARK_AGE_S
        self.metrics.set_function(
            "freshrank_freshness_seconds", lambda: time.time() - watermark, {"replica": REPLICA}
        )


def scrape(url: str) -> list[Sample]:
    """All samples the endpoint serves now (empty while it is not up yet)."""
    try:
        response = httpx.get(url, timeout=5.0)
        response.raise_for_status()
    except httpx.HTTPError:
        return []
    return [s for f in text_string_to_metric_families(response.text) for s in f.samples]


def select(samples: list[Sample], name: str, worker_id: str, **labels: str) -> list[Sample]:
    """Samples called ``name`` from process ``worker_id`` whose labels include ``labels``."""
    return [
        s
        for s in samples
        if s.name == name
        and s.labels.get("WorkerId") == worker_id
        and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def value(samples: list[Sample], name: str, worker_id: str, **labels: str) -> float | None:
    """The one matching sample's value, or ``None`` when there is none yet."""
    found = select(samples, name, worker_id, **labels)
    assert len(found) <= 1, found
    return found[0].value if found else None


def wait_for(probe: Callable[[], T | None], what: str, deadline_s: float = DEADLINE_S) -> T:
    """Call ``probe`` until it returns something other than None, or fail at the deadline."""
    deadline = time.monotonic() + deadline_s
    while True:
        result = probe()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {deadline_s} s")
        time.sleep(POLL_S)


def test_metrics_from_actor_and_driver_reach_prometheus(ray_local):
    url = ray_local.metrics_url
    requests = metric_spec("freshrank_requests_total").exported_name()
    version = metric_spec("freshrank_served_model_version").exported_name()
    latency = metric_spec("freshrank_request_latency_seconds").exported_name()
    freshness = metric_spec("freshrank_freshness_seconds").exported_name()
    promotions = metric_spec("freshrank_promotions_total").exported_name()
    trainer_version = metric_spec("freshrank_trainer_model_version").exported_name()
    assert requests == "ray_freshrank_requests_total"

    emitter = Emitter.remote()
    actor_worker = ray.get(emitter.worker_id.remote())
    assert ray.get(emitter.backend.remote()) == TelemetryBackend.RAY.value
    driver = default_telemetry()
    assert driver is Telemetry.for_ray()
    driver_worker = ray.get_runtime_context().get_worker_id()

    started = time.monotonic()
    ray.get(emitter.emit.remote())
    driver.inc("freshrank_promotions_total", tags={"outcome": "promoted"})
    driver.set("freshrank_trainer_model_version", 12)

    def everything_visible() -> list[Sample] | None:
        samples = scrape(url)
        wanted = [
            value(samples, requests, actor_worker, status="ok"),
            value(samples, version, actor_worker, replica=REPLICA),
            value(samples, f"{latency}_count", actor_worker),
            value(samples, freshness, actor_worker, replica=REPLICA),
            value(samples, promotions, driver_worker, outcome="promoted"),
            value(samples, trainer_version, driver_worker),
        ]
        return samples if all(v is not None for v in wanted) else None

    samples = wait_for(everything_visible, "all recorded metrics on the endpoint")
    appeared_s = time.monotonic() - started
    print(f"\nmetrics visible {appeared_s:.2f} s after recording")

    # Counter: 3 x 2.5, tags as labels; the closed status set keeps other statuses apart.
    assert value(samples, requests, actor_worker, status="ok") == 7.5
    assert value(samples, requests, actor_worker, status="unavailable") == 1.0
    # Gauge: the last value set.
    assert value(samples, version, actor_worker, replica=REPLICA) == 7.0
    # Histogram: counts and cumulative buckets are exact (Ray's _sum is approximate).
    assert value(samples, f"{latency}_count", actor_worker) == 4.0
    buckets = {s.labels["le"]: s.value for s in select(samples, f"{latency}_bucket", actor_worker)}
    assert buckets["0.0025"] == 0.0
    assert buckets["0.005"] == 2.0
    assert buckets["0.25"] == 3.0
    assert buckets["1.0"] == 4.0
    assert buckets["+Inf"] == 4.0
    # Gauge function: now minus a watermark two minutes old.
    first_freshness = value(samples, freshness, actor_worker, replica=REPLICA)
    assert WATERMARK_AGE_S <= first_freshness < WATERMARK_AGE_S + DEADLINE_S
    # From the driver.
    assert value(samples, promotions, driver_worker, outcome="promoted") == 1.0
    assert value(samples, trainer_version, driver_worker) == 12.0

    # Ray drops a gauge two report intervals after its last report; the refresher keeps
    # re-reporting, so the gauge is still there later and the freshness function moved on.
    outlive_at = time.monotonic() + 3 * ray_local.metrics_report_interval_s

    def gauges_outlived_ttl() -> list[Sample] | None:
        if time.monotonic() < outlive_at:
            return None
        later = scrape(url)
        fresh = value(later, freshness, actor_worker, replica=REPLICA)
        if fresh is None or fresh <= first_freshness:
            return None
        return later

    later = wait_for(gauges_outlived_ttl, "freshness gauge refreshed after the gauge TTL")
    assert value(later, version, actor_worker, replica=REPLICA) == 7.0
    assert value(later, trainer_version, driver_worker) == 12.0
    assert value(later, requests, actor_worker, status="ok") == 7.5


def listening_addresses(port: int) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Local addresses of TCP sockets listening on ``port``, read from Linux's /proc/net."""
    found: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address_hex, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:  # 0A = LISTEN
                continue
            raw = bytes.fromhex(address_hex)
            # The kernel prints each 32-bit word in host (little-endian) order.
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            address = ipaddress.ip_address(words)
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
                address = address.ipv4_mapped
            found.add(address)
    return found


def test_ray_endpoints_listen_on_loopback_only(ray_local):
    assert ray_local.node_ip == "127.0.0.1"
    dashboard_port = int(ray_local.dashboard_url.rsplit(":", 1)[1])
    for port in (ray_local.metrics_port, dashboard_port):
        addresses = listening_addresses(port)
        assert addresses, f"nothing listens on port {port}"
        assert all(a.is_loopback for a in addresses), (port, addresses)
    response = httpx.get(ray_local.metrics_url, timeout=5.0)
    assert response.status_code == 200
