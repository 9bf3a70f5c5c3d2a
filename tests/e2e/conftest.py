"""Shared by the end-to-end tests: a real Prometheus (Debian's ``prometheus``) on loopback that
scrapes the session's Ray metrics endpoint with the shipped relabel rule and alert rules.

The server binds 127.0.0.1 on a free port with its storage in a temporary directory, scrapes
``ray_local.metrics_url`` every second, and is stopped at the end. Without the binary the tests
that need it skip and say how to install it (CI installs it through cluster/prometheus/install.sh).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from freshrank.ops.runtime import free_port

PROMETHEUS = shutil.which("prometheus")
PROM_DIR = Path(__file__).resolve().parents[2] / "cluster" / "prometheus"
DEADLINE_S = 30.0
STARTUP_DEADLINE_S = 60.0  # the shared 2-core machine can be slow to start a server
POLL_S = 0.25
T = TypeVar("T")


def _wait_for(probe: Callable[[], T | None], what: str, deadline_s: float = DEADLINE_S) -> T:
    """Call ``probe`` until it returns something other than None, or fail at the deadline."""
    deadline = time.monotonic() + deadline_s
    while True:
        result = probe()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {deadline_s} s")
        time.sleep(POLL_S)


@dataclass
class PrometheusServer:
    url: str
    process: subprocess.Popen
    log: Path

    @staticmethod
    def wait(probe: Callable[[], T | None], what: str, deadline_s: float = DEADLINE_S) -> T:
        """Call ``probe`` until it returns something other than None, or fail at the deadline."""
        return _wait_for(probe, what, deadline_s)

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the result vector (empty when nothing matches or on errors)."""
        try:
            response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5)
            body = response.json()
        except (httpx.HTTPError, ValueError):
            return []
        if body.get("status") != "success":
            raise AssertionError(f"query {expr!r} failed: {body}")
        return body["data"]["result"]

    def scalar(self, expr: str) -> float | None:
        """The single value of an aggregating query, or None while there is none."""
        result = self.query(expr)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None


@contextlib.contextmanager
def _prometheus(ray_local, tmp_path: Path) -> Iterator[PrometheusServer]:
    """A Prometheus scraping the session's Ray, its files under ``tmp_path``."""
    if PROMETHEUS is None:
        pytest.skip(
            "Debian's prometheus is not installed (cluster/prometheus/install.sh or "
            "apt-get install prometheus)"
        )
    shipped = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    (ray_job,) = [j for j in shipped["scrape_configs"] if j["job_name"] == "ray"]
    target = urlsplit(ray_local.metrics_url).netloc
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(PROM_DIR / "alerts.yml")],
        "scrape_configs": [
            {
                "job_name": "ray",
                "static_configs": [{"targets": [target]}],
                # The shipped rule, so this test checks what operators deploy.
                "metric_relabel_configs": ray_job["metric_relabel_configs"],
            }
        ],
    }
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    log = tmp_path / "prometheus.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config_path}",
                f"--web.listen-address=127.0.0.1:{port}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = PrometheusServer(f"http://127.0.0.1:{port}", process, log)
    try:

        def ready() -> bool | None:
            if process.poll() is not None:
                pytest.fail(f"prometheus exited with {process.returncode}: {log.read_text()}")
            try:
                return httpx.get(f"{server.url}/-/ready", timeout=2).status_code == 200 or None
            except httpx.HTTPError:
                return None

        _wait_for(ready, "prometheus ready", STARTUP_DEADLINE_S)
        _wait_for(
            lambda: server.scalar('max(up{job="ray"})') == 1.0 or None,
            "first Ray scrape",
            STARTUP_DEADLINE_S,
        )
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture
def prometheus(ray_local, tmp_path) -> Iterator[PrometheusServer]:
    with _prometheus(ray_local, tmp_path) as server:
        yield server


@pytest.fixture(scope="module")
def module_prometheus(ray_local, tmp_path_factory) -> Iterator[PrometheusServer]:
    """One Prometheus for a module whose tests share a run (e.g. the loop and its page)."""
    with _prometheus(ray_local, tmp_path_factory.mktemp("prometheus")) as server:
        yield server
