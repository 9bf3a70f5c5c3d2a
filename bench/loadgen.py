"""An HTTP load generator for the ranking endpoint (tests and benchmarks).

``concurrency`` threads each send one request at a time over a kept-alive ``httpx`` connection
and record every answer (send and receive time, status, ``X-Model-Version``, ``X-Replica``).
Closed loop by default (each worker sends its next request when the last one is answered);
with ``rate_rps`` open loop: requests are scheduled at a fixed total rate and latency is counted
from the scheduled time, so a slow server is not hidden by a client that waits for it
("coordinated omission"); ``concurrency`` must then cover rate x latency.
Every worker stops at the first of: ``stop()``, ``max_seconds`` after ``start()``,
``max_requests`` requests sent. Connection errors and timeouts are recorded, never raised.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from freshrank.serving.client import RankingClient


@dataclass(frozen=True)
class Sample:
    """One request: when it was sent and answered (``time.monotonic()``) and what came back."""

    sent: float
    done: float
    status: int
    version: int | None
    replica: str | None
    error: str | None = None

    @property
    def latency_s(self) -> float:
        """Seconds from sending to the full answer."""
        return self.done - self.sent

    @property
    def ok(self) -> bool:
        """True for a 200 answer."""
        return self.status == 200


@dataclass(frozen=True)
class LoadConfig:
    """What to send, how hard and for how long."""

    url: str
    body: Mapping[str, Any]
    path: str = "/rank"
    concurrency: int = 2
    max_seconds: float = 60.0
    max_requests: int = 100_000
    """Per worker."""
    timeout_s: float = 10.0
    rate_rps: float | None = None
    """Open loop: total requests per second over all workers (None: closed loop)."""

    def __post_init__(self) -> None:
        if self.rate_rps is not None and not self.rate_rps > 0:
            raise ValueError(f"rate_rps must be > 0 or None, got {self.rate_rps}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if not 0 < self.max_seconds <= 3600:
            raise ValueError(f"max_seconds must be in (0, 3600], got {self.max_seconds}")
        if self.max_requests < 1:
            raise ValueError(f"max_requests must be >= 1, got {self.max_requests}")


class LoadGenerator:
    """Run a :class:`LoadConfig` in background threads; read ``samples()`` at any time."""

    def __init__(self, config: LoadConfig) -> None:
        self.config = config
        self._payload = json.dumps(dict(config.body)).encode()
        self._samples: list[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._deadline = 0.0
        self._tls: ssl.SSLContext | None = None

    def start(self) -> LoadGenerator:
        """Start the workers (once)."""
        if self._threads:
            raise RuntimeError("already started")
        import httpx

        # One TLS context for every worker's client, made before the clock starts: each
        # httpx.Client would otherwise load the CA bundle itself (~27 ms of CPU), and 64
        # workers doing so at once delayed the first scheduled requests of an open-loop run
        # by 1.6 s, counted as their latency.
        self._tls = httpx.create_ssl_context()
        self._deadline = time.monotonic() + self.config.max_seconds
        self._threads = [
            threading.Thread(target=self._work, args=(i,), name=f"load-{i}", daemon=True)
            for i in range(self.config.concurrency)
        ]
        for t in self._threads:
            t.start()
        return self

    def stop(self, join_timeout_s: float = 30.0) -> list[Sample]:
        """Stop the workers, wait for their last request, and return all samples."""
        self._stop.set()
        for t in self._threads:
            t.join(join_timeout_s)
        return self.samples()

    def samples(self) -> list[Sample]:
        """A copy of the samples so far, in completion order."""
        with self._lock:
            return list(self._samples)

    def __enter__(self) -> LoadGenerator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _work(self, worker: int) -> None:
        cfg = self.config
        start = self._deadline - cfg.max_seconds
        with RankingClient(cfg.url, timeout_s=cfg.timeout_s, verify=self._tls) as client:
            for k in range(cfg.max_requests):
                if self._stop.is_set() or time.monotonic() >= self._deadline:
                    return
                if cfg.rate_rps is None:
                    sent = time.monotonic()
                else:  # open loop: the k-th request of this worker has a fixed slot
                    sent = start + (k * cfg.concurrency + worker) / cfg.rate_rps
                    if sent >= self._deadline:
                        return
                    if self._stop.wait(max(0.0, sent - time.monotonic())):
                        return
                a = client.rank(self._payload, cfg.path)
                sample = Sample(
                    sent, time.monotonic(), a.status, a.model_version, a.replica, a.error
                )
                with self._lock:
                    self._samples.append(sample)


@dataclass(frozen=True)
class LatencySummary:
    """Throughput and latency of a set of samples."""

    requests: int
    failed: int
    seconds: float
    throughput_rps: float
    p50_ms: float
    p99_ms: float


def summarise(samples: list[Sample], seconds: float | None = None) -> LatencySummary:
    """Throughput over ``seconds`` (default: first send to last answer) and ok-latency quantiles.

    >>> s = [Sample(0.0, 0.01, 200, 1, "r"), Sample(0.01, 0.03, 200, 1, "r")]
    >>> r = summarise(s)
    >>> r.requests, r.failed, round(r.throughput_rps), round(r.p50_ms)
    (2, 0, 67, 15)
    """
    ok = [s.latency_s for s in samples if s.ok]
    if seconds is None:
        seconds = (max(s.done for s in samples) - min(s.sent for s in samples)) if samples else 0
    lat = np.asarray(ok) * 1000.0
    return LatencySummary(
        requests=len(samples),
        failed=len(samples) - len(ok),
        seconds=float(seconds),
        throughput_rps=len(ok) / seconds if seconds else 0.0,
        p50_ms=float(np.percentile(lat, 50)) if len(lat) else float("nan"),
        p99_ms=float(np.percentile(lat, 99)) if len(lat) else float("nan"),
    )
