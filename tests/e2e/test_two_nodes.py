"""The loop across two Ray nodes: a head and a worker node started with `ray start` on this
machine, each offering one ``train_slot``, so the trainer's two workers (STRICT_SPREAD, one
slot each) run on different raylets and exchange gradients between them. Shards land, the
trainer trains them window by window with the gate on, the ranking endpoint serves the
champion; every version must say which node each rank ran on and that every rank's model was
the same after its window (``rank_nodes``, ``rank_digests``).

A multi-node Ray is in cluster mode: ``ray start --address`` refuses to join in single-node mode,
and in cluster mode Ray turns 127.0.0.1 into the machine's network address. So the nodes take
other loopback addresses (127.0.0.2 for the head, 127.0.0.3 for the worker), which Ray keeps as
given; its GCS and raylets then listen on every interface, as on any multi-node cluster, with
this cluster's own token required. It runs its own cluster (own temp dirs, ports and token), not
the session's ``ray_local``, and stops it (cluster/local/stop.sh, per node) whatever happens."""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from freshrank.events.produce import ProducerConfig, run_producer
from freshrank.ops.runtime import RAY_ENV
from freshrank.registry import Registry

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"
PGID_FILE = "freshrank-head.pgid"
"""What cluster/local/stop.sh reads in the temp dir it is given (one per node here)."""
SHARDS = 3
"""Three one-shard windows: v1 is promoted at once, v2 is judged by the gate on window 3."""

REQUEST = {
    "user_id": "u42",
    "query": "cat3 word40",
    "device": "mobile",
    "candidates": [
        {"item_id": "i1", "category": "c3", "brand": "b7", "price": 19.9},
        {"item_id": "i2", "category": "c3", "price": 5.0},
    ],
}

# The driver: deploys the ranking endpoint (in a thread, while the trainer starts) and runs
# `freshrank train` on the cluster, one process for both, as the demo does.
DRIVER = """
import os, sys, threading, traceback
from ray import serve
from freshrank.apps.cli import main
from freshrank.ops.runtime import init_ray
from freshrank.serving.app import RankingAppConfig, build_ranking_app

address, registry, http_port, *train = sys.argv[1:]
init_ray(address=address, log_to_driver=False)
def deploy():
    try:
        serve.start(
            http_options={"host": "127.0.0.1", "port": int(http_port)}, proxy_location="HeadOnly"
        )
        app = build_ranking_app(RankingAppConfig(registry=registry, num_replicas=1))
        serve.run(app, name="ranking", route_prefix="/", blocking=False)
        print("[two-nodes driver] ranking endpoint deployed", flush=True)
    except BaseException:
        traceback.print_exc()
        print("[two-nodes driver] the ranking endpoint failed to deploy", flush=True)
        os._exit(3)  # fail now, not after training

serving = threading.Thread(target=deploy, daemon=True)
serving.start()
code = main(["train", "--address", address, *train])
serving.join(120)
sys.exit(code if not serving.is_alive() else 3)
"""


_HANDED_OUT: set[int] = set()


def _free_port() -> int:
    """A TCP port free on every interface, from below the kernel's ephemeral range and above
    Ray's default worker ports (10002-19999): the kernel never hands one of these to a process
    asking for port 0 (Ray's workers here, anybody else's) between now and its use."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(200):
        port = random.randrange(20000, max(low, 20001))
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise AssertionError(f"no free port in 20000-{low}")


def _until(cond: Callable[[], object], timeout: float, what: str, every: float = 0.25) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(every)


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _raylet_node_id(pgid: int) -> str | None:
    """The node id of the raylet in process group ``pgid`` (from its command line)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            args = Path(f"/proc/{entry}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[2]) != pgid or not args[0].endswith("raylet"):
            continue
        for arg in args:
            if arg.startswith("--node_id="):
                return arg.removeprefix("--node_id=")
    return None


class _Cluster:
    """A head and a worker node, each a `ray start` in a process group of its own."""

    def __init__(self, tmp: Path) -> None:
        token = tmp / "auth_token"
        token.write_text(secrets.token_hex(32))  # this cluster's own token
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RAY_", "FRESHRANK_")) and k != "PYTHONPATH"
        }
        self.env = {
            **base,
            **RAY_ENV,
            "PATH": f"{BIN}{os.pathsep}{base.get('PATH', '')}",
            "PYTHONPATH": str(ROOT / "platform"),  # the replicas and workers import freshrank
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token),
            # Two processes this test does not need, on 2 cores: Ray Train's preemption
            # watcher (nothing is preempted here) and Ray Data's usage-collection actor (usage
            # stats off, as --disable-usage-stats means; ~3 s of CPU each measured).
            "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        # Short: Ray's Unix socket paths under them must fit in 107 bytes.
        self.dirs = [tempfile.mkdtemp(prefix=f"fr-2n{i}-", dir="/tmp") for i in range(2)]
        self.port = _free_port()
        self.address = f"{HEAD_IP}:{self.port}"
        self.logs = [tmp / "head.log", tmp / "worker.log"]
        self.pgids: list[int] = []
        self._joining: subprocess.Popen | None = None

    def _start(self, index: int, args: list[str]) -> subprocess.Popen:
        """``ray start`` under setsid, writing its group id where stop.sh looks for it."""
        ports = ["--dashboard-agent-listen-port", "--dashboard-agent-grpc-port"]
        ports += ["--runtime-env-agent-port", "--metrics-export-port"]
        args = [*args, *(x for flag in ports for x in (flag, str(_free_port())))]
        args += ["--min-worker-port", "0", "--max-worker-port", "0", "--disable-usage-stats"]
        args += ["--temp-dir", self.dirs[index], "--include-log-monitor", "false"]
        pgid_file = Path(self.dirs[index], PGID_FILE)
        with open(self.logs[index], "wb") as log:
            process = subprocess.Popen(
                ["setsid", "--wait", "bash", "-c", 'echo $$ >"$1"; shift; exec ray start "$@"']
                + ["_", str(pgid_file), *args],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.pgids.append(int(_until(lambda: pgid_file.exists() and pgid_file.read_text(), 10,
                                     "ray start's process group")))  # fmt: skip
        return process

    def start(self) -> None:
        """Start the head, and the worker node as soon as the head's GCS listens; return once
        the head is up (the worker node joins meanwhile: see `joined`)."""
        slot = json.dumps({"train_slot": 1})  # one per node: no node can hold two trainers
        head = self._start(
            0,
            ["--head", "--node-ip-address", HEAD_IP, "--port", str(self.port)]
            + ["--num-cpus", "3", "--resources", slot, "--no-monitor"]
            + ["--include-dashboard", "false", "--dashboard-port", str(_free_port())]
            + ["--ray-client-server-port", str(_free_port())],
        )
        _until(lambda: _listening(HEAD_IP, self.port) or head.poll() is not None, 60, "the GCS")
        self._joining = self._start(
            1,
            ["--address", self.address, "--node-ip-address", WORKER_IP]
            + ["--num-cpus", "2", "--resources", slot],
        )
        assert head.wait(timeout=90) == 0, self.logs[0].read_text()[-3000:]

    def joined(self) -> list[str]:
        """Wait for the worker node's `ray start`; the two raylets' node ids."""
        assert self._joining is not None, "start() first"
        assert self._joining.wait(timeout=90) == 0, self.logs[1].read_text()[-3000:]
        ids = [_raylet_node_id(pgid) for pgid in self.pgids]
        assert None not in ids and len(set(ids)) == 2, ids
        return [i for i in ids if i is not None]

    def stop(self) -> None:
        """cluster/local/stop.sh for each node (its group and every descendant), together."""

        def stop_node(temp_dir: str) -> None:
            env = {**self.env, "FRESHRANK_RAY_TEMP_DIR": temp_dir, "FRESHRANK_STOP_GRACE_S": "3"}
            subprocess.run(
                [str(ROOT / "cluster" / "local" / "stop.sh")],
                env=env,
                capture_output=True,
                timeout=60,
            )

        threads = [threading.Thread(target=stop_node, args=(d,)) for d in self.dirs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def cluster(tmp_path) -> Iterator[_Cluster]:
    if shutil.which("setsid") is None or not Path("/proc/self/stat").exists():
        pytest.skip("needs Linux (setsid, /proc) to start and stop its own Ray nodes")
    if not (BIN / "ray").exists():
        pytest.skip(f"the ray CLI is not in {BIN}")
    for ip in (HEAD_IP, WORKER_IP):
        try:
            with socket.socket() as s:
                s.bind((ip, 0))
        except OSError:
            pytest.skip(f"{ip} is not a loopback address here (Linux routes all of 127/8)")
    c = _Cluster(tmp_path)
    with ExitStack() as stack:
        stack.callback(c.stop)
        yield c


def test_two_nodes_train_the_same_model_and_serve_the_champion(cluster, tmp_path):
    t0 = time.monotonic()
    laps: dict[str, float] = {}

    def lap(name: str) -> None:
        laps[name] = round(time.monotonic() - t0, 1)

    landing, registry_dir = tmp_path / "landing", tmp_path / "registry"
    http_port = _free_port()
    # The shards land while the head starts (the producer marks the zone done, so the trainer
    # stops once they are trained); the trainer starts while the worker node joins.
    with ThreadPoolExecutor(1) as pool:
        starting = pool.submit(cluster.start)
        stats = run_producer(
            ProducerConfig(
                landing_path=str(landing),
                events_per_second=1e6,
                shard_events=500,
                max_shards=SHARDS,
            )
        )
        assert stats.shards_written == SHARDS
        starting.result(timeout=150)  # raises what went wrong, with the head's log
    lap("head up")

    train_args = ["--landing", str(landing), "--registry", str(registry_dir)]
    train_args += ["--num-workers", "2", "--placement-strategy", "STRICT_SPREAD"]
    train_args += ["--resources-per-worker", json.dumps({"CPU": 1, "train_slot": 1})]
    train_args += ["--max-shards-per-window", "1", "--promotion", "gate", "--gate-min-rows", "200"]
    driver_log = tmp_path / "driver.log"
    with open(driver_log, "wb") as out:
        driver = subprocess.Popen(
            [str(BIN / "python"), "-c", DRIVER, cluster.address, str(registry_dir)]
            + [str(http_port), *train_args],
            cwd=ROOT,
            env=cluster.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    registry = Registry(registry_dir)
    try:
        nodes = cluster.joined()
        lap("worker node joined")
        _check_the_run(registry, driver, driver_log, nodes, http_port, lap)
    finally:
        if driver.poll() is None:  # still tearing Ray Train down: the cluster stops next
            driver.kill()
            driver.wait(30)
    print("two nodes: seconds since start", laps, flush=True)


def _check_the_run(
    registry: Registry,
    driver: subprocess.Popen,
    driver_log: Path,
    nodes: list[str],
    http_port: int,
    lap: Callable[[str], None],
) -> None:
    # The trainer says it stopped (every shard trained, the producer done) once its last
    # version is published and judged; Ray Train's teardown after that is not waited for.
    def stopped() -> bool:
        if driver.poll() is not None:
            assert driver.returncode == 0, driver_log.read_text()[-4000:]
        return (registry.trainer_status() or {}).get("state") == "stopped"

    _until(stopped, 150, "the trainer to train every shard and stop")
    log = driver_log.read_text()
    lap("trained")

    versions = registry.list_versions()
    assert versions == list(range(1, SHARDS + 1)), log[-3000:]
    champion = registry.champion_version()
    judged = [e for e in registry.promotions() if e["kind"] in ("promoted", "rejected")]
    assert champion is not None and judged[0]["to_version"] == 1
    assert {e["to_version"] for e in judged} == {1, 2}  # v1 promoted at once, v2 by the gate
    for v in versions:
        manifest = registry.get(v).manifest
        assert manifest["world_size"] == 2
        # Both ranks' nodes, one each: the two raylets this test started.
        assert sorted(manifest["rank_nodes"]) == sorted(nodes), (v, manifest["rank_nodes"])
        digests = manifest["rank_digests"]
        assert len(digests) == 2 and len(set(digests)) == 1 and len(digests[0]) == 64, v
    # Each version's weights changed from the last (the digests track the model).
    assert len({registry.get(v).manifest["rank_digests"][0] for v in versions}) == SHARDS

    # The endpoint on this cluster serves the champion.
    def served() -> httpx.Response | None:
        try:
            r = httpx.post(f"http://127.0.0.1:{http_port}/rank", json=REQUEST, timeout=10)
        except httpx.HTTPError:
            return None
        return r if r.status_code == 200 and r.json()["model_version"] == champion else None

    response = _until(served, 30, f"a 200 from /rank served by the champion v{champion}")
    body = response.json()
    assert response.headers["X-Model-Version"] == str(champion)
    assert sorted(r["item_id"] for r in body["ranked"]) == ["i1", "i2"]
    lap("served")
