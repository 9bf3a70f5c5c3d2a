"""Starting (or joining) Ray the way freshrank needs it, in one place.

A local Ray started here keeps every port on loopback, reports application metrics every
``metrics_report_interval_ms`` and uses Ray Data's V1 parquet datasource:

* ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` puts Ray in single-node mode (its default on macOS
  and Windows): the node IP becomes 127.0.0.1, so the metrics export port listens on loopback
  too. Without it Linux takes the default-route address and the metrics port binds 0.0.0.0
  even with ``dashboard_host="127.0.0.1"``.
* ``RAY_metrics_report_interval_ms`` is read by every Ray process; Ray's default is 10 s.
* ``RAY_DATA_USE_DATASOURCE_V2=0``: V2 starts footer-reader actors on every execution (9-13 s
  per small window measured here), V1 reads a small window in well under a second.

Token authentication stays as Ray 2.60 sets it (on for a local ``ray.init``).
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass

RAY_ENV: dict[str, str] = {"RAY_DATA_USE_DATASOURCE_V2": "0"}
"""Environment every freshrank Ray process gets (driver, workers, replicas)."""


@dataclass(frozen=True)
class RayInfo:
    """Where the running Ray can be reached."""

    gcs_address: str
    node_ip: str
    dashboard_url: str | None
    metrics_port: int | None
    metrics_url: str | None
    metrics_report_interval_s: float | None
    """How often processes export metrics (None: as the joined cluster was configured)."""
    started_here: bool


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def init_ray(
    address: str | None = None,
    num_cpus: int = 8,
    dashboard_port: int | None = 8265,
    metrics_port: int | None = None,
    metrics_report_interval_ms: int = 5000,
) -> RayInfo:
    """Join the Ray at ``address``, or start a local one bound to 127.0.0.1.

    ``num_cpus`` is logical: more than the physical cores, so Train workers, Serve replicas and
    Ray Data tasks can all be placed on a small machine. Raises when Ray is already initialised.
    """
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        raise RuntimeError("Ray is already initialised in this process")
    os.environ.update(RAY_ENV)
    if address:
        import ray

        ctx = ray.init(address=address, runtime_env={"env_vars": RAY_ENV})
        return _info(ctx, None, started_here=False)
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["RAY_metrics_report_interval_ms"] = str(int(metrics_report_interval_ms))
    import ray
    from ray._private import ray_constants

    # Ray reads the single-node switch at import, which may have happened before this call.
    ray_constants.ENABLE_RAY_CLUSTER = False
    if "ray.data" in sys.modules:
        from ray.data import DataContext

        DataContext.get_current().use_datasource_v2 = False
    ctx = ray.init(
        num_cpus=num_cpus,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=dashboard_port if dashboard_port is not None else free_port(),
        _metrics_export_port=metrics_port if metrics_port is not None else free_port(),
        runtime_env={"env_vars": RAY_ENV},
    )
    return _info(ctx, metrics_report_interval_ms / 1000, started_here=True)


def _info(ctx: object, interval_s: float | None, started_here: bool) -> RayInfo:
    node = getattr(ctx, "address_info", {}) or {}
    dashboard = getattr(ctx, "dashboard_url", None)
    port = node.get("metrics_export_port")
    return RayInfo(
        gcs_address=str(node.get("gcs_address", "")),
        node_ip=str(node.get("node_ip_address", "")),
        dashboard_url=f"http://{dashboard}" if dashboard else None,
        metrics_port=int(port) if port else None,
        metrics_url=f"http://127.0.0.1:{port}/metrics" if port else None,
        metrics_report_interval_s=interval_s,
        started_here=started_here,
    )


def current_metrics_url() -> str | None:
    """The Prometheus endpoint of this node's Ray metrics agent, when Ray is initialised."""
    import ray

    if not ray.is_initialized():
        return None
    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == node_id and node.get("MetricsExportPort"):
            return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    return None


def scrape_freshrank_metrics(url: str, timeout_s: float = 2.0) -> dict[str, float]:
    """Read the ``freshrank_`` series from a Prometheus text endpoint.

    Ray's ``ray_`` prefix is removed; series of one metric from several processes (Ray's
    ``WorkerId`` label) are summed for counters and histogram counts, and the largest value is
    kept for gauges. Returns {} when the endpoint does not answer.
    """
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = httpx.get(url, timeout=timeout_s).text
    except httpx.HTTPError:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        name = family.name.removeprefix("ray_")
        if not name.startswith("freshrank_"):
            continue
        for sample in family.samples:
            key = sample.name.removeprefix("ray_")
            if family.type == "gauge":
                out[key] = max(out.get(key, float("-inf")), sample.value)
            elif family.type in ("counter", "histogram") and not key.endswith("_bucket"):
                out[key] = out.get(key, 0.0) + sample.value
    return out
