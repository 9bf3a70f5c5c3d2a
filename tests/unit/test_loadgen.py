"""The load generator against a tiny loopback HTTP server (no Ray)."""

from http.server import BaseHTTPRequestHandler

import pytest
from _loopback import serving
from loadgen import LoadConfig, LoadGenerator, summarise


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers["content-length"]))
        status = 503 if self.path == "/busy" else 200
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("x-model-version", "7")
        self.send_header("x-replica", "r1")
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def url():
    with serving(_Handler) as base:
        yield base


def test_closed_loop_is_bounded_by_count(url):
    load = LoadGenerator(LoadConfig(url=url, body={"a": 1}, concurrency=2, max_requests=5))
    load.start()
    load._threads[0].join(10)
    load._threads[1].join(10)
    samples = load.stop()
    assert len(samples) == 10 and all(
        s.ok and s.version == 7 and s.replica == "r1" for s in samples
    )
    summary = summarise(samples)
    assert summary.failed == 0 and summary.p50_ms > 0


def test_open_loop_keeps_its_schedule_and_time_bound(url):
    import httpx  # noqa: F401 - imported before the clock starts, as a warm process would

    cfg = LoadConfig(url=url, body={}, concurrency=2, max_seconds=2.0, rate_rps=20)
    load = LoadGenerator(cfg).start()
    start = load._deadline - cfg.max_seconds
    for t in load._threads:
        t.join(10)
    samples = load.stop()
    # at most one request per 50 ms slot of the 2 s, each sent (and timed) from its slot
    assert 1 <= len(samples) <= 40
    slots = sorted(round((s.sent - start) * cfg.rate_rps, 6) for s in samples)
    assert all(slot == int(slot) for slot in slots) and len(set(slots)) == len(slots)
    assert max(slots) < 40


def test_many_workers_do_not_count_their_setup_as_latency(url):
    """48 open-loop workers each start on a slot of the first half second: making their HTTP
    clients (a CA bundle each, ~27 ms of CPU, before they shared one TLS context) must not
    delay those first requests, which are timed from their slots."""
    import httpx  # noqa: F401 - imported before the clock starts, as a warm process would

    cfg = LoadConfig(url=url, body={}, concurrency=48, max_seconds=1.5, rate_rps=96)
    load = LoadGenerator(cfg).start()
    for t in load._threads:
        t.join(20)
    samples = load.stop()
    assert len(samples) >= 96 and all(s.ok for s in samples)
    first = sorted(samples, key=lambda s: s.sent)[:48]
    assert max(s.latency_s for s in first) < 0.4, sorted(s.latency_s for s in first)[-5:]


def test_errors_are_recorded_not_raised(url):
    load = LoadGenerator(LoadConfig(url=url, body={}, path="/busy", max_requests=2))
    with load:
        for t in load._threads:
            t.join(10)
    assert [s.status for s in load.samples()] == [503] * 4
    dead = LoadGenerator(LoadConfig(url="http://127.0.0.1:9", body={}, max_requests=1))
    with dead:
        for t in dead._threads:
            t.join(10)
    assert all(s.status == 0 and "ConnectError" in s.error for s in dead.samples())


def test_config_is_validated():
    with pytest.raises(ValueError, match="concurrency"):
        LoadConfig(url="x", body={}, concurrency=0)
    with pytest.raises(ValueError, match="rate_rps"):
        LoadConfig(url="x", body={}, rate_rps=0)
