"""The ranking app behind HAProxy (``init_ray(serve_ingress="haproxy")``), on a Ray of its own.

The ingress mode is read by Ray's processes when they start, so the session's Ray cannot
have it: a child process starts a second local Ray in HAProxy mode (free ports for HTTP,
HAProxy's stats and Prometheus listeners and the fallback proxy), deploys the ranking app
(one replica) and an overload app (one replica, one request at a time, one queued) and
reports where things are; the tests talk HTTP to them (answers, version header, hot swap,
413/422, overload), check every listening socket of the HAProxy processes is on 127.0.0.1,
then tell the child to shut Serve and Ray down.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
from _schemathesis import run_schemathesis

from freshrank.features.encode import FeatureConfig
from freshrank.model.config import RankerConfig
from freshrank.model.ranker import Ranker
from freshrank.registry import Registry, save_checkpoint

pytestmark = pytest.mark.integration

MAX_BODY = 64 * 1024
CHILD = r"""
import json, os, sys
# Behind HAProxy a stopping replica waits Serve's direct-ingress drain period (30 s by default)
# before it goes: nothing to drain here.
os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = "0.2"
os.environ.pop("RAY_ADDRESS", None)
from freshrank.ops.runtime import free_port, init_ray

registry, max_body = sys.argv[1], int(sys.argv[2])
init_ray(num_cpus=4, dashboard_port=None, serve_ingress="haproxy")
import ray
from ray import serve
from ray.util.state import list_actors
from freshrank.serving.app import RankingAppConfig, build_ranking_app

try:
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    fast = dict(poll_interval_s=0.05, graceful_shutdown_wait_loop_s=0.2, access_log=False)
    ranking = RankingAppConfig(registry=registry, num_replicas=1, max_body_bytes=max_body, **fast)
    overload = RankingAppConfig(
        registry=registry, num_replicas=1, max_batch_size=1, max_ongoing_requests=1,
        max_queued_requests=1, retry_after_s=2, **fast,
    )
    serve.run_many([
        serve.RunTarget(build_ranking_app(ranking), name="ranking", route_prefix="/"),
        serve.RunTarget(build_ranking_app(overload), name="overload", route_prefix="/overload"),
    ])
    actors = list_actors(
        address=ray.get_runtime_context().gcs_address, filters=[("state", "=", "ALIVE")]
    )
    print(json.dumps({
        "url": f"http://127.0.0.1:{port}",
        "http_port": port,
        "stats_port": int(os.environ["RAY_SERVE_HAPROXY_STATS_PORT"]),
        "metrics_port": int(os.environ["RAY_SERVE_HAPROXY_METRICS_PORT"]),
        "managers": [a.pid for a in actors if a.class_name == "HAProxyManager"],
    }), flush=True)
    sys.stdin.readline()  # the test is done (or gone: EOF)
finally:
    serve.shutdown()
    ray.shutdown()
    print(json.dumps({"stopped": True}), flush=True)
"""
BODY = {
    "user_id": "u1",
    "query": "red shoes",
    "candidates": [{"item_id": f"i{i}", "category": "c1", "price": 10.0 + i} for i in range(30)],
}


def _publish(reg: Registry, seed: int = 0) -> int:
    torch.manual_seed(seed)
    cfg = RankerConfig(
        features=FeatureConfig(
            user_buckets=1000, item_buckets=2000, category_buckets=50, brand_buckets=50
        ),
        embedding_dim=8,
    )
    info = save_checkpoint(
        reg,
        cfg,
        Ranker(cfg).state_dict(),
        None,
        {},
        {"cursor": 1, "watermark": time.time(), "metrics": {"loss": 0.5}, "events_trained": 1},
    )
    reg.set_champion(info.version)
    return info.version


def _children(ppid: int, comm: str) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                head, tail = (entry / "stat").read_text().rsplit(")", 1)
            except OSError:
                continue
            if head.split("(", 1)[1] == comm and int(tail.split()[1]) == ppid:
                out.append(int(entry.name))
    return out


def _running_with(text: str) -> list[int]:
    """PIDs of the processes whose command line contains ``text``."""
    out = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text in (entry / "cmdline").read_text():
                out.append(int(entry.name))
        except OSError:
            continue
    return out


def _address(hex_addr: str) -> str:
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return ".".join(str(b) for b in raw[::-1])
    words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]  # four little-endian words
    full = b"".join(words)
    if full[:12] == b"\0" * 10 + b"\xff\xff":
        return "::ffff:" + ".".join(str(b) for b in full[12:])
    return ":".join(full[i : i + 2].hex() for i in range(0, 16, 2))


def listening_sockets(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket ``pid`` listens on, from /proc."""
    inodes = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
        tables = [Path(f"/proc/{pid}/net/{t}").read_text() for t in ("tcp", "tcp6")]
    except OSError:  # it has exited (HAProxy is replaced on every reload)
        return []
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for text in tables:
        for line in text.splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                addr, port = fields[1].split(":")
                found.append((_address(addr), int(port, 16)))
    return found


def test_address_decoding():
    assert _address("0100007F") == "127.0.0.1"
    assert _address("0000000000000000FFFF00000100007F") == "::ffff:127.0.0.1"
    assert _address("00000000000000000000000000000000") == "0000:0000:0000:0000:0000:0000:0000:0000"


@pytest.fixture(scope="module")
def haproxy_app(tmp_path_factory):
    """A second local Ray in HAProxy mode with the ranking app at ``/`` (one replica)."""
    reg = Registry(tmp_path_factory.mktemp("registry"))
    version = _publish(reg)
    # HAProxy's config, admin socket and logs go under /tmp/haproxy-serve/<node> by default;
    # a short directory of our own instead (a unix socket path is at most 107 bytes).
    files = Path(tempfile.mkdtemp(prefix="frh-", dir="/tmp"))
    env = {
        **os.environ,
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(files / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(files / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(files),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(files / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(files / "metrics.sock"),
    }
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(reg.root), str(MAX_BODY)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in child.stdout], daemon=True).start()

    def next_json(timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line.startswith("{"):
                return json.loads(line)
        raise AssertionError(f"no report from the child within {timeout_s} s")

    try:
        info = next_json(180)
        assert info["managers"], "no HAProxyManager: the child's Ray is not in HAProxy mode"
        yield {**info, "version": version, "registry": reg}
    finally:
        try:
            child.stdin.write("stop\n")
            child.stdin.flush()
            child.wait(90)
        except (OSError, subprocess.TimeoutExpired):
            os.killpg(child.pid, signal.SIGTERM)  # the child's own session: its Ray only
            child.wait(30)
        for pid in _running_with(str(files)):  # never leave a listener of ours behind
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(files, ignore_errors=True)


def test_ranks_and_names_the_version(haproxy_app):
    r = httpx.post(haproxy_app["url"] + "/rank", json=BODY, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["X-Model-Version"] == str(haproxy_app["version"])
    body = r.json()
    assert body["model_version"] == haproxy_app["version"]
    assert sorted(x["item_id"] for x in body["ranked"]) == sorted(
        c["item_id"] for c in BODY["candidates"]
    )
    model = httpx.get(haproxy_app["url"] + "/model", timeout=30)
    assert model.status_code == 200 and model.json()["model_version"] == haproxy_app["version"]
    health = httpx.get(haproxy_app["url"] + "/healthz", timeout=30)
    assert health.status_code == 200 and health.json()["ok"] is True
    docs = httpx.get(haproxy_app["url"] + "/openapi.json", timeout=30)
    assert docs.status_code == 200 and "/rank" in docs.json()["paths"]


def test_hot_swap_behind_haproxy(haproxy_app):
    """A new champion reaches the replica behind HAProxy like behind Serve's proxy."""
    reg = haproxy_app["registry"]
    new = _publish(reg, seed=1)
    deadline = time.monotonic() + 30
    with httpx.Client(timeout=30) as http:
        while True:
            r = http.post(haproxy_app["url"] + "/rank", json=BODY)
            assert r.status_code == 200, r.text
            if r.headers["X-Model-Version"] == str(new):
                break
            assert time.monotonic() < deadline, f"still v{r.headers['X-Model-Version']}"
            time.sleep(0.05)
    assert r.json()["model_version"] == new


def test_overload_is_503_with_retry_after_behind_haproxy(haproxy_app, burst):
    """Saturated replicas answer 503 + Retry-After themselves (direct ingress checks
    max_queued_requests per replica); HAProxy passes it on, nothing hangs or turns into 500."""
    url = haproxy_app["url"] + "/overload/rank"
    body = dict(BODY, candidates=[{"item_id": f"i{i}", "price": 1.0} for i in range(1000)])
    # HAProxy spreads a burst's arrivals over a few ms, and a quiet replica may keep up with all
    # of them: burst again (at most 3 times) until one overloads it. Every answer of every burst
    # must be a 200 or a 503, and nobody may hang.
    codes: list[int] = []
    for _ in range(3):
        results = burst(url, body, 32)
        assert len(results) == 32  # nobody hangs
        codes = [c for c, _, _ in results]
        assert set(codes) <= {200, 503}, codes
        if 503 in codes:
            break
    assert 200 in codes and 503 in codes, codes
    assert {ra for c, ra, _ in results if c == 503} == {"2"}
    assert max(dt for c, _, dt in results if c == 503) < 30


def test_limits_hold_behind_haproxy(haproxy_app):
    url = haproxy_app["url"] + "/rank"
    big = httpx.post(
        url,
        content=b"x" * (MAX_BODY + 1),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert big.status_code == 413 and big.json()["limit_bytes"] == MAX_BODY
    bad = httpx.post(url, json={"user_id": "u1"}, timeout=30)
    assert bad.status_code == 422 and "candidates" in bad.text


def test_haproxy_listens_on_loopback_only(haproxy_app):
    """Every listener of the HAProxy processes (the Serve port, stats, Prometheus) is on
    127.0.0.1. Ray replaces HAProxy on each reload, so the processes are looked up until
    the current one listens on all three ports."""
    wanted = {haproxy_app["http_port"], haproxy_app["stats_port"], haproxy_app["metrics_port"]}
    deadline = time.monotonic() + 30
    while True:
        pids = [pid for m in haproxy_app["managers"] for pid in _children(m, "haproxy")]
        sockets = [s for pid in pids for s in listening_sockets(pid)]
        if pids and wanted <= {port for _, port in sockets}:
            break
        assert time.monotonic() < deadline, f"HAProxy {pids} listens on {sockets}"
        time.sleep(0.1)
    assert {addr for addr, _ in sockets} <= {"127.0.0.1", "::ffff:127.0.0.1"}, sockets


def test_schemathesis_finds_nothing_behind_haproxy(haproxy_app, tmp_path):
    """Issue 17: schemathesis (``--checks all``, positive and negative data) against the live
    app's own OpenAPI document, through HAProxy (direct ingress)."""
    counts = run_schemathesis(haproxy_app["url"], tmp_path)
    assert counts["tests"] >= 3
