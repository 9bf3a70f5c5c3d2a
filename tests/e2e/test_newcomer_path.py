"""A newcomer's path through docs/operating.md, followed literally with the real tools:
cluster/local/start.sh (`ray start --head`), `ray job submit` of the producer and the trainer,
`serve deploy` of serve_apps/ranking.yaml, a ranking request with a real HTTP client, a
declarative pin (`serve deploy` again), `ray job stop`, cluster/local/stop.sh.

It runs its own Ray head (own temp dir, ports and token), not the session's `ray_local`, so it can
run while the session Ray -- or anybody else's -- is up. Every port of that head must be on
loopback, and the job API must refuse a request without the token."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
import yaml

from freshrank.events.landing import LandingZone
from freshrank.registry import Registry

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
"""The venv's bin directory (ray, serve, python), as an activated venv would put on PATH."""

REQUEST = {
    "user_id": "u42",
    "query": "cat3 word40",
    "device": "mobile",
    "candidates": [
        {"item_id": "i1", "category": "c3", "brand": "b7", "price": 19.9},
        {"item_id": "i2", "category": "c3", "price": 5.0},
    ],
}


def _until(cond: Callable[[], object], timeout: float, what: str, every: float = 1.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(every)


def _free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports on 127.0.0.1 that were free a moment ago."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _group_and_descendants(pgid: int) -> set[int]:
    """Processes of process group ``pgid`` and all their descendants (from /proc)."""
    parent, group = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] == "Z":
            continue
        parent[int(entry)], group[int(entry)] = int(fields[1]), int(fields[2])
    found = {pid for pid, g in group.items() if g == pgid}
    grew = True
    while grew:
        more = {pid for pid, ppid in parent.items() if ppid in found and pid not in found}
        found |= more
        grew = bool(more)
    return found


def _listening(
    pids: set[int],
) -> set[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int, int]]:
    """(address, port, pid) of the TCP sockets the processes ``pids`` listen on (Linux /proc)."""
    inodes: dict[str, tuple] = {}
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] != "0A":  # LISTEN
                continue
            hex_ip, hex_port = cols[1].split(":")
            raw = bytes.fromhex(hex_ip)
            if v6:
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                ip = ipaddress.IPv6Address(raw)
            else:
                ip = ipaddress.IPv4Address(raw[::-1])
            inodes[cols[9]] = (ip, int(hex_port, 16))
    out = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            m = re.fullmatch(r"socket:\[(\d+)\]", link)
            if m and m.group(1) in inodes:
                out.add((*inodes[m.group(1)], pid))
    return out


def _process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return "?"


def _grpc_status_without_token(port: int) -> str:
    """Status of a Serve replica gRPC call made without the cluster token."""
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(
            "/ray.serve.ASGIService/HandleRequest",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        try:
            call(b"", timeout=10)
        except grpc.RpcError as exc:
            return exc.code().name
    return "OK"


def _is_loopback(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


class _Head:
    """A Ray head started with cluster/local/start.sh, and the CLIs pointed at it."""

    def __init__(self, temp_dir: str, token_path: Path) -> None:
        names = ["RAY", "DASHBOARD", "CLIENT", "METRICS", "AGENT", "AGENT_GRPC"]
        names += ["RUNTIME_ENV_AGENT", "NODE_MANAGER", "OBJECT_MANAGER", "SERVE"]
        self.ports = dict(zip(names, _free_ports(len(names)), strict=True))
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RAY_", "FRESHRANK_")) and k != "PYTHONPATH"
        }
        base["PATH"] = f"{BIN}{os.pathsep}{base.get('PATH', '')}"
        base["RAY_AUTH_TOKEN_PATH"] = str(token_path)
        self.temp_dir = temp_dir
        self.start_env = {
            **base,
            **{f"FRESHRANK_{k}_PORT": str(v) for k, v in self.ports.items() if k != "SERVE"},
            "FRESHRANK_RAY_TEMP_DIR": temp_dir,
            "FRESHRANK_NUM_CPUS": "4",
            "FRESHRANK_STOP_GRACE_S": "10",
            "FRESHRANK_VENV": str(BIN.parent),
        }
        self.dashboard = f"http://127.0.0.1:{self.ports['DASHBOARD']}"
        # What the docs tell a client shell to export.
        self.client_env = {
            **base,
            "RAY_AUTH_MODE": "token",
            "RAY_API_SERVER_ADDRESS": self.dashboard,
            "RAY_DASHBOARD_ADDRESS": self.dashboard,
        }

    def run(self, *cmd: str, timeout: float = 120, check: bool = True, start: bool = False):
        env = self.start_env if start else self.client_env
        done = subprocess.run(
            list(cmd), cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
        if check:
            assert done.returncode == 0, (
                f"{' '.join(cmd)} -> {done.returncode}\n{done.stdout}\n{done.stderr}"
            )
        return done

    def submit(self, name: str, *entrypoint: str) -> str:
        job_id = f"{name}-{uuid.uuid4().hex[:8]}"
        self.run(
            "ray", "job", "submit", "--no-wait", "--submission-id", job_id,
            "--working-dir", ".", "--runtime-env", "jobs/runtime_env.yaml",
            "--", *entrypoint,
        )  # fmt: skip
        return job_id

    def status(self, job_id: str) -> str:
        """The job's status as `ray job status` reports it (PENDING, RUNNING, STOPPED, ...)."""
        done = self.run("ray", "job", "status", job_id, timeout=180)
        out = done.stdout + done.stderr
        for pattern, status in (
            (r"Job '[^']+' succeeded", "SUCCEEDED"),
            (r"Job '[^']+' was stopped", "STOPPED"),
            (r"Job '[^']+' failed", "FAILED"),
        ):
            if re.search(pattern, out):
                return status
        m = re.search(r"Status for job '[^']+': (\w+)", out)
        assert m, out
        return m.group(1)

    def logs(self, job_id: str) -> str:
        return self.run("ray", "job", "logs", job_id, timeout=180, check=False).stdout

    def start(self) -> subprocess.CompletedProcess:
        """cluster/local/start.sh; one retry when the raylet misses Ray's fixed 30 s to register
        (an overloaded machine), then a skip: that is not something the project can fix."""
        for _attempt in range(2):
            done = self.run("cluster/local/start.sh", start=True, timeout=240, check=False)
            if done.returncode == 0:
                return done
            output = done.stdout + done.stderr
            self.run("cluster/local/stop.sh", start=True, check=False)
            if "timed out during startup" not in output:
                raise AssertionError(f"cluster/local/start.sh failed:\n{output[-4000:]}")
        pytest.skip("the machine is too loaded: Ray's raylet did not register within 30 s, twice")

    @property
    def pgid(self) -> int | None:
        try:
            return int(Path(self.temp_dir, "freshrank-head.pgid").read_text())
        except (OSError, ValueError):
            return None


@pytest.fixture
def head(tmp_path) -> Iterator[_Head]:
    if shutil.which("setsid") is None or not Path("/proc/net/tcp").exists():
        pytest.skip("needs Linux (setsid, /proc) to start and stop its own Ray head")
    if not (BIN / "ray").exists() or not (BIN / "serve").exists():
        pytest.skip(f"the ray and serve CLIs are not in {BIN}")
    # Short: Ray's Unix socket paths under it must fit in 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="fr-e2e-", dir="/tmp")
    token_path = tmp_path / "auth_token"
    token_path.write_text(secrets.token_hex(32))  # this head's own token, not ~/.ray/auth_token
    h = _Head(temp_dir, token_path)
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, temp_dir, True)
        stack.callback(lambda: h.run("cluster/local/stop.sh", start=True, check=False))
        yield h


def test_newcomer_path(head, tmp_path):
    t0 = time.monotonic()
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        timings[name] = round(time.monotonic() - t0, 1)
        print(f"newcomer path: {name} done at {timings[name]} s", flush=True)

    # 1. cluster/local/start.sh: `ray start --head`, everything on loopback, token on.
    started = head.start()
    assert head.dashboard in started.stdout
    assert head.pgid is not None
    # The token file this head uses was written with the umask (0644); start.sh made it 0600.
    assert stat.S_IMODE(Path(head.start_env["RAY_AUTH_TOKEN_PATH"]).stat().st_mode) == 0o600
    lap("start")
    # A driver joining this head at its loopback address, as `freshrank train --address
    # 127.0.0.1:PORT` does, connects (it used to retry the machine's own IP for minutes).
    joined = head.run(
        str(BIN / "python"),
        "-c",
        "import ray; from freshrank.ops.runtime import init_ray; "
        f"info = init_ray(address='127.0.0.1:{head.ports['RAY']}', log_to_driver=False); "
        "print('joined', info.node_ip, int(ray.cluster_resources()['CPU']))",
        timeout=90,
    )
    assert "joined 127.0.0.1 4" in joined.stdout, joined.stdout + joined.stderr
    lap("join at 127.0.0.1")
    with httpx.Client(timeout=10) as client:
        assert client.get(f"{head.dashboard}/api/jobs/").status_code == 401
        token = Path(head.start_env["RAY_AUTH_TOKEN_PATH"]).read_text()
        auth = {"Authorization": f"Bearer {token}"}
        assert client.get(f"{head.dashboard}/api/jobs/", headers=auth).status_code == 200

    # 2. `ray job submit` of the producer and the trainer, then `serve deploy`.
    landing, registry = tmp_path / "landing", tmp_path / "registry"
    with ThreadPoolExecutor(2) as pool:  # side by side: each CLI call spends seconds starting
        producer_call = pool.submit(
            head.submit, "producer", "python", "jobs/simulate.py", "--landing-path", str(landing),
            "--events-per-second", "1000", "--shard-events", "500", "--progress-every-s", "2",
        )  # fmt: skip
        trainer_call = pool.submit(
            head.submit, "trainer", "python", "jobs/train.py", "--landing", str(landing),
            "--registry", str(registry), "--num-workers", "1",
        )  # fmt: skip
        producer, trainer = producer_call.result(), trainer_call.result()
    lap("submit")
    config = yaml.safe_load((ROOT / "serve_apps" / "ranking.yaml").read_text())
    config["http_options"]["port"] = head.ports["SERVE"]
    (app,) = config["applications"]
    app["args"]["registry"] = str(registry)
    app["deployments"][0]["num_replicas"] = 1  # one replica is enough here and lighter
    serve_config = tmp_path / "ranking.yaml"
    serve_config.write_text(yaml.safe_dump(config))
    head.run("serve", "deploy", str(serve_config))
    lap("serve deploy")

    # 3. A ranking request over HTTP, answered by a trained version.
    reg = Registry(registry)
    url = f"http://127.0.0.1:{head.ports['SERVE']}"

    checked = [time.monotonic()]

    def ranked() -> httpx.Response | None:
        if not reg.list_versions():
            if time.monotonic() - checked[0] > 30:  # `ray job status` now and then: fail fast
                checked[0] = time.monotonic()
                for job in (producer, trainer):
                    assert head.status(job) in ("PENDING", "RUNNING"), head.logs(job)[-3000:]
            return None
        try:
            r = httpx.post(f"{url}/rank", json=REQUEST, timeout=10)
        except httpx.HTTPError:
            return None
        return r if r.status_code == 200 else None

    response = _until(ranked, 300, "a version in the registry and a 200 from /rank", every=2)
    lap("first ranking")
    body = response.json()
    assert body["model_version"] >= 1
    assert response.headers["X-Model-Version"] == str(body["model_version"])
    assert sorted(r["item_id"] for r in body["ranked"]) == ["i1", "i2"]
    assert [r["rank"] for r in body["ranked"]] == [0, 1]
    assert body["ranked"][0]["score"] >= body["ranked"][1]["score"]
    replica = response.headers["X-Replica"]

    # Every listening socket of this head (Serve proxy and replicas included) is on loopback.
    sockets = _listening(_group_and_descendants(head.pgid))
    ports = {port for _, port, _ in sockets}
    for name in ("RAY", "DASHBOARD", "METRICS", "SERVE"):
        assert head.ports[name] in ports, f"{name} port {head.ports[name]} not listening"
    exposed = [(ip, port, _process_name(pid)) for ip, port, pid in sockets if not _is_loopback(ip)]
    # Two listeners beyond loopback that no setting moves (docs/operating.md, "Security"): Ray
    # Serve 2.60 replicas' inter-deployment gRPC server on [::]:0 (ray/serve/_private/replica.py),
    # which must demand the token, and torch.distributed's rendezvous store that the rank-0
    # training worker opens on [::] (other ranks must reach it).
    allowed = ("ray::ServeReplica", "ray::RayTrainWorker")
    assert [e for e in exposed if not e[2].startswith(allowed)] == []
    for _ip, port, name in exposed:
        if name.startswith("ray::ServeReplica"):
            assert _grpc_status_without_token(port) == "UNAUTHENTICATED", port

    # 4. Rollback, declaratively: pin version 1 and `serve deploy` again -> reconfigured in place.
    app["deployments"][0]["user_config"]["pinned_version"] = 1
    serve_config.write_text(yaml.safe_dump(config))
    head.run("serve", "deploy", str(serve_config))

    def pinned() -> dict | None:
        status = httpx.get(f"{url}/model", timeout=10).json()
        return status if status["model_version"] == 1 else None

    status = _until(pinned, 60, "the replica to serve the pinned version 1")
    assert status["pinned_version"] == 1
    assert status["replica"] == replica, "the replica was replaced instead of reconfigured"
    lap("pin")

    # 5. `ray job stop` of the trainer (SIGTERM first, so it is the signal that stops it, not the
    # producer's end), then of the producer; both must stop cleanly and report.
    head.run("ray", "job", "stop", "--no-wait", trainer)
    head.run("ray", "job", "stop", producer, timeout=120)
    _until(lambda: head.status(trainer) in ("STOPPED", "SUCCEEDED"), 180, "the trainer to stop")
    lap("stop jobs")
    with ThreadPoolExecutor(3) as pool:
        producer_status = pool.submit(head.status, producer)
        logs, plogs = pool.map(head.logs, (trainer, producer))
        assert producer_status.result() in ("STOPPED", "SUCCEEDED")

    # The trainer checkpointed the window it was on: every version verifies, none is torn.
    assert "signal 15: stopping after this window" in logs
    versions = reg.list_versions()
    m = re.search(
        r"\[freshrank train\] stopped: (\d+) version\(s\) trained, (\d+) kept, champion (\d+)",
        logs,
    )
    assert m, logs[-3000:]
    # a fresh registry: every version this run trained is numbered 1..n, none pruned yet
    assert int(m.group(1)) == int(m.group(2)) == len(versions) == versions[-1] >= 1
    # the job's log tells the loop's story (not Ray's lines): a line per version trained
    assert len(re.findall(r"\] v\d+ trained: window \d+", logs)) >= len(versions) - 1, logs[-3000:]
    # The promotion gate judged every version but the last (which waits for fresh rows) against
    # the champion on the next window's rows; the champion is the last one it promoted.
    assert int(m.group(3)) == reg.champion_version()
    events = reg.promotions()
    judged = {e["to_version"] for e in events if e["kind"] in ("promoted", "rejected")}
    assert set(versions[:-1]) <= judged
    promoted = [e["to_version"] for e in events if e["kind"] == "promoted"]
    assert promoted and reg.champion_version() == promoted[-1]
    assert reg.trainer_status()["state"] == "stopped"
    last = reg.verify(versions[-1]).manifest
    assert last["cursor"] >= max(last["shards"])
    trained = [s for v in versions for s in reg.get(v).manifest["shards"]]
    assert len(trained) == len(set(trained)), "a shard was trained twice"

    # 6. The producer landed its last shard, marked the zone done and printed its stats.
    stats = json.loads(plogs[plogs.rindex("{\n") : plogs.rindex("}") + 1])
    zone = LandingZone(landing)
    assert zone.is_done()
    assert stats["shards_written"] == len(zone.list_shards()) >= max(trained)
    assert stats["events_written"] == 500 * stats["shards_written"]

    # 7. cluster/local/stop.sh stops this head, and only it.
    pgid = head.pgid
    head.run("cluster/local/stop.sh", start=True, timeout=90)
    _until(lambda: not _group_and_descendants(pgid), 30, "the head's processes to exit")
    lap("stop head")
    print("newcomer path timings (s since start):", timings)
