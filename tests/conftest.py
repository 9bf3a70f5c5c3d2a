"""One local Ray for the whole test session (integration and end-to-end tests share it).

Use the session-scoped ``ray_local`` fixture; never call ``ray.init`` in a test. It starts Ray
through ``freshrank.runtime.init_ray`` (the same code the demo and jobs use): every port on
127.0.0.1, application metrics reported every second, Ray Data's V1 parquet datasource.
Unit tests never touch it, so they run without Ray.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from freshrank.runtime import RayInfo, init_ray

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
