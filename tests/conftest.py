"""One local Ray for the whole test session (integration and end-to-end tests share it).

Use the session-scoped ``ray_local`` fixture; never call ``ray.init`` in a test. It starts Ray
through ``freshrank.ops.runtime.init_ray`` (the same code the demo and jobs use): every port on
127.0.0.1, application metrics reported every second, Ray Data's V1 parquet datasource.
Unit tests never touch it, so they run without Ray.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from freshrank.ops.runtime import RayInfo, init_ray

METRICS_REPORT_INTERVAL_MS = 1000
"""How often Ray processes export application metrics during the test session."""

NUM_CPUS = 8
"""Logical CPUs given to the local Ray, beyond the physical two (see DESIGN.md)."""


@pytest.fixture(scope="session")
def ray_local() -> Iterator[RayInfo]:
    """Start one local Ray for the test session and shut it down at the end."""
    import ray

    saved = dict(os.environ)
    info = init_ray(
        num_cpus=NUM_CPUS,
        dashboard_port=None,
        metrics_report_interval_ms=METRICS_REPORT_INTERVAL_MS,
    )
    try:
        yield info
    finally:
        ray.shutdown()
        os.environ.clear()
        os.environ.update(saved)


Burst = Callable[[str, dict, int], list[tuple[int, str | None, float]]]


@pytest.fixture
def burst() -> Burst:
    """Send ``n`` POSTs of ``body`` to ``url`` at once (threads behind a barrier, bounded joins);
    returns each answer's (status, Retry-After header, seconds taken)."""

    def run(url: str, body: dict, n: int) -> list[tuple[int, str | None, float]]:
        import httpx

        results: list[tuple[int, str | None, float]] = []
        barrier = threading.Barrier(n)

        def one() -> None:
            with httpx.Client(timeout=60) as http:
                barrier.wait(30)
                started = time.monotonic()
                r = http.post(url, json=body)
                results.append(
                    (r.status_code, r.headers.get("retry-after"), time.monotonic() - started)
                )

        threads = [threading.Thread(target=one) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        return results

    return run
