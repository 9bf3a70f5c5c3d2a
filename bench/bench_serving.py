"""Serving throughput and latency: our ranking app against Ray's floor and a plain server.

Run: ``python bench/bench_serving.py [--seconds 6] [--levels 1,2,4,8,16] [--candidates 100]
[--ingress proxy|haproxy|both]``.

Four servers on this machine, measured in the same run, one after the other at each level:

* ``ranking``: our Ray Serve app (``build_ranking_app``: 2 replicas, ``@serve.batch``, limits);
* ``noop``: a Ray Serve FastAPI deployment, same replicas and ingress, that answers a constant
  without reading the body (Ray's own floor for an HTTP request); its replicas get the same
  ``ray_actor_options`` as ours (so the same user-code thread setting, see
  ``RankingAppConfig.user_code_on_event_loop``);
* ``noop_body``: the same, but it reads the body first (with Serve's Python proxy the replica
  pulls the body from the proxy with one more actor call, which every real endpoint pays);
* ``plain``: FastAPI + uvicorn in one process on 127.0.0.1 that loads the same version and
  answers with ``freshrank.serving.scoring.rank_requests_json`` (same model, same encoder and
  response writer as our replicas; FastAPI's own body parsing).

Serve's ingress (``freshrank.ops.runtime.init_ray(serve_ingress=...)``) is chosen when Ray
starts, so each ``--ingress`` mode runs in a child process of its own (this file with
``--child MODE``) on
its own Ray; the child writes its runs as JSON and this process prints the tables of every mode,
each with its goals judged against the floor of the same mode. In ``haproxy`` mode the child
shortens Serve's direct-ingress drain at shutdown
(``RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S``, 30 s by default), which changes nothing while
requests are measured.

Every request carries ``--candidates`` candidates. Closed loop at each concurrency level
(``LoadGenerator`` threads with kept-alive connections), then open loop at half of our peak
throughput for the p99 goal. Tables go to stdout and ``bench/RESULTS.md`` ("Issue 4").
"""

# No `from __future__ import annotations`: the Serve deployments below are made inside functions
# and shipped by value; FastAPI must see their annotations as objects (see serving/app.py).
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np
import torch
from loadgen import LatencySummary, LoadConfig, LoadGenerator, summarise

from freshrank.model.config import RankerConfig
from freshrank.model.ranker import Ranker
from freshrank.registry import Registry, load_serving_model, save_checkpoint
from freshrank.serving.api import RankRequest
from freshrank.serving.gctune import tune_gc
from freshrank.serving.scoring import (
    rank_requests_json,
    responses_json,
    score_batch,
    warm_up,
)
from freshrank.serving.wire import decode_search

SERVERS = ("ranking", "noop", "noop_body", "plain")
MODES = ("proxy", "haproxy")
"""Serve ingress modes (``freshrank.ops.runtime.ServeIngress``)."""
HAPROXY_DRAIN_S = "0.5"
"""Direct-ingress drain at shutdown in the haproxy child (Ray's default: 30 s per replica)."""
RAY_WORKER_NICENESS = 15
"""Ray's default niceness for worker processes (Serve proxy and replicas run at it)."""


def make_body(n: int) -> dict:
    rng = np.random.default_rng(0)
    return {
        "user_id": "u123",
        "query": "red running shoes",
        "device": "ios",
        "candidates": [
            {
                "item_id": f"item{int(rng.integers(100_000))}",
                "category": f"c{int(rng.integers(200))}",
                "brand": f"b{int(rng.integers(1000))}",
                "price": float(rng.uniform(1, 300)),
            }
            for _ in range(n)
        ],
    }


def publish(root: Path) -> Registry:
    reg = Registry(root)
    torch.manual_seed(0)
    cfg = RankerConfig()
    meta = {"cursor": 1, "watermark": time.time(), "metrics": {"loss": 0.5}, "events_trained": 1}
    info = save_checkpoint(reg, cfg, Ranker(cfg).state_dict(), None, {}, meta)
    reg.set_champion(info.version)
    return reg


# ----- the plain server (a subprocess running this file with --plain-server) -----------------


def plain_server(registry: str, port: int) -> None:
    import uvicorn
    from fastapi import FastAPI, Response

    torch.set_num_threads(1)
    reg = Registry(registry)
    served = warm_up(load_serving_model(reg, reg.champion_version()))
    app = FastAPI()
    tune_gc()  # the collector settings our replicas use (RankingAppConfig.gc_gen0_threshold)

    @app.post("/rank")
    async def rank(request: RankRequest) -> Response:
        (body,) = rank_requests_json(served, [request])
        return Response(
            body, media_type="application/json", headers={"X-Model-Version": str(served.version)}
        )

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"ok": True}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ----- Ray Serve apps --------------------------------------------------------------------------


def noop_app(replicas: int, max_ongoing: int, read_body: bool, actor_options: dict):
    from fastapi import FastAPI, Request, Response
    from ray import serve

    app = FastAPI()
    constant = b'{"model_version":0,"ranked":[]}'

    @serve.deployment(
        name="NoopBody" if read_body else "Noop",
        num_replicas=replicas,
        ray_actor_options=actor_options,
        max_ongoing_requests=max_ongoing,
    )
    @serve.ingress(app)
    class Noop:
        @app.post("/rank")
        async def rank(self, request: Request) -> Response:
            if read_body:
                await request.body()
            return Response(constant, media_type="application/json")

    return Noop.bind()


def wait_ok(url: str, body: dict, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.post(url + "/rank", json=body, timeout=10).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer 200 within {timeout_s} s")


@dataclass(frozen=True)
class Run:
    server: str
    level: str
    summary: LatencySummary
    cpu_ms: dict[str, float] | None = None
    """CPU milliseconds per answered request, by process group (proxy, replicas, server...)."""
    round: int = 0
    """Which sweep over the closed-loop levels (``--rounds``) it belongs to."""


_TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu_s(pid: int, reaped_children: bool = False) -> float:
    """CPU seconds of ``pid`` (utime + stime), plus those of its exited and reaped children
    (cutime + cstime) when asked."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    used = int(fields[11]) + int(fields[12])
    if reaped_children:
        used += int(fields[13]) + int(fields[14])
    return used / _TICK


def _children(ppid: int, comm: str) -> list[int]:
    """PIDs of the processes named ``comm`` whose parent is ``ppid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            head, tail = (entry / "stat").read_text().rsplit(")", 1)
        except OSError:
            continue
        if head.split("(", 1)[1] == comm and int(tail.split()[1]) == ppid:
            out.append(int(entry.name))
    return out


TREE = "tree:"
"""Prefix of a group whose processes count with their HAProxy children (see cpu_snapshot)."""


def process_groups(app: str, plain_pid: int) -> dict[str, list[int]]:
    """PIDs of the processes that serve ``app``: the ingress tier ("proxy") and the replicas,
    or the plain server. In HAProxy mode the ingress tier is the HAProxyManager actor with the
    HAProxy processes it runs (``tree:proxy``), and the head's fallback Serve proxy (idle while
    replicas are up); with Serve's proxy it is the ProxyActor."""
    if app == "plain":
        return {"server": [plain_pid]}
    import ray
    from ray.util.state import list_actors

    # This Ray's address: other Rays on the machine (tests, other benchmarks) would make the
    # state API refuse to guess.
    actors = list_actors(
        address=ray.get_runtime_context().gcs_address,
        filters=[("state", "=", "ALIVE")],
        limit=1000,
    )
    return {
        "proxy": [a.pid for a in actors if a.class_name == "ProxyActor" and a.pid],
        TREE + "proxy": [a.pid for a in actors if a.class_name == "HAProxyManager" and a.pid],
        "replicas": [
            a.pid for a in actors if a.class_name.startswith(f"ServeReplica:{app}:") and a.pid
        ],
    }


def cpu_snapshot(groups: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds used so far by each group, and by this process (the client).

    A ``tree:`` group counts its processes, their live HAProxy children (looked up now: Ray
    replaces HAProxy on every reload, also while a run is measured) and their reaped ones
    (whose CPU the kernel adds to the parent's), so a reload neither loses nor double counts.
    """
    snap: dict[str, float] = {}
    for name, pids in groups.items():
        if name.startswith(TREE):
            name = name.removeprefix(TREE)
            used = sum(
                _proc_cpu_s(pid, reaped_children=True)
                + sum(_proc_cpu_s(child) for child in _children(pid, "haproxy"))
                for pid in pids
            )
        else:
            used = sum(_proc_cpu_s(pid) for pid in pids)
        snap[name] = snap.get(name, 0.0) + used
    snap["client"] = sum(os.times()[:2])
    return snap


def measure(
    url: str,
    body: dict,
    seconds: float,
    concurrency: int,
    rate: float | None,
    groups: dict[str, list[int]] | None = None,
) -> tuple[LatencySummary, dict[str, float] | None]:
    """Latency over ``seconds`` after 1 s of warm-up; CPU per answered request of ``groups``."""
    warm = 1.0
    load = LoadGenerator(
        LoadConfig(
            url=url,
            body=body,
            concurrency=concurrency,
            max_seconds=seconds + warm,
            rate_rps=rate,
            timeout_s=30,
        )
    )
    # The client must not stall the requests it times: a full collection of this process (Ray,
    # torch and the samples: ~300,000 objects) took 150 ms in the middle of an open-loop run
    # and made every server's p99. Same settings as the servers' (freeze, higher threshold).
    tune_gc()
    t0 = time.monotonic()
    load.start()
    time.sleep(warm)
    before = cpu_snapshot(groups) if groups else None
    n_before = sum(s.ok for s in load.samples())
    for t in load._threads:
        t.join(seconds + warm + 60)
    all_samples = load.stop()
    cpu = None
    if before is not None:
        after = cpu_snapshot(groups)
        answered = max(sum(s.ok for s in all_samples) - n_before, 1)
        cpu = {k: (after[k] - before[k]) * 1000 / answered for k in before}
    samples = [s for s in all_samples if s.sent >= t0 + warm]
    return summarise(samples, seconds), cpu


@dataclass(frozen=True)
class InProcess:
    """CPU milliseconds per request of the replica's work, measured in this process (no HTTP)."""

    stages: dict[str, float]
    """One request of ``--candidates``: parse + validate, encode, forward pass, response."""
    one: float
    """All stages, one request at a time."""
    batch: float
    """All stages, per request, in batches of 16."""


def _cpu_ms(fn, repeats: int, per: int = 1) -> float:
    """Best of 5 runs of CPU time (this thread) per call / ``per``: robust to a shared machine."""
    for _ in range(5):
        fn()
    best = float("inf")
    for _ in range(5):
        t = time.thread_time()
        for _ in range(repeats):
            fn()
        best = min(best, (time.thread_time() - t) / repeats / per * 1000)
    return best


def in_process(reg: Registry, body: dict, repeats: int = 100) -> InProcess:
    """What a replica spends on one request, by stage (see :class:`InProcess`)."""
    from freshrank.features.encode import encode_search_groups
    from freshrank.model.device import to_tensors

    torch.set_num_threads(1)
    served = warm_up(load_serving_model(reg, reg.champion_version()))
    raw = json.dumps(body).encode()
    req = decode_search(raw)  # what the replica's fast path decodes a body into
    features = served.model.config.features
    # what score_batch encodes and scores: the search's own features once
    inputs, groups = encode_search_groups([req], features)
    tensors = to_tensors(inputs, torch.device("cpu"))
    group_tensor = torch.from_numpy(groups)
    scores = score_batch(served, [req])

    def forward() -> None:
        with torch.inference_mode():
            served.model.relevance(tensors, group_tensor)

    stages = {
        "parse + validate": _cpu_ms(lambda: decode_search(raw), repeats),
        "encode": _cpu_ms(lambda: encode_search_groups([req], features), repeats),
        "forward pass": _cpu_ms(forward, repeats),
        "response JSON": _cpu_ms(lambda: responses_json(served, [req], scores), repeats),
    }
    one = _cpu_ms(lambda: rank_requests_json(served, [decode_search(raw)]), repeats)
    batch = _cpu_ms(
        lambda: rank_requests_json(served, [decode_search(raw) for _ in range(16)]),
        max(repeats // 16, 3),
        per=16,
    )
    return InProcess(stages, one, batch)


def fmt_tables(runs: list[Run], levels: list[str]) -> str:
    by = {(r.server, r.level): r.summary for r in runs}
    out = [
        "Throughput (requests/s; failed requests in brackets) and our ratios:",
        "",
        "| level | "
        + " | ".join(SERVERS)
        + " | ranking/noop | ranking/noop_body | ranking/plain |",
        "|---" * (len(SERVERS) + 4) + "|",
    ]
    for level in levels:
        m = {s: by[(s, level)] for s in SERVERS}
        cells = [
            f"{m[s].throughput_rps:.0f}" + (f" ({m[s].failed})" if m[s].failed else "")
            for s in SERVERS
        ]
        ratios = [
            f"{m['ranking'].throughput_rps / m[s].throughput_rps:.2f}"
            for s in ("noop", "noop_body", "plain")
        ]
        out.append(f"| {level} | " + " | ".join(cells + ratios) + " |")
    out += [
        "",
        "Latency p50 / p99 (ms) and our p50 minus the floors':",
        "",
        "| level | " + " | ".join(SERVERS) + " | ranking−noop p50 | ranking−noop_body p50 |",
        "|---" * (len(SERVERS) + 3) + "|",
    ]
    for level in levels:
        m = {s: by[(s, level)] for s in SERVERS}
        cells = [f"{m[s].p50_ms:.1f} / {m[s].p99_ms:.1f}" for s in SERVERS]
        gaps = [f"{m['ranking'].p50_ms - m[s].p50_ms:+.1f}" for s in ("noop", "noop_body")]
        out.append(f"| {level} | " + " | ".join(cells + gaps) + " |")
    cpu = {(r.server, r.level): r.cpu_ms for r in runs if r.cpu_ms}
    if cpu:
        out += [
            "",
            "CPU milliseconds per answered request (from /proc, so other load on the machine "
            "does not inflate it): server side (Serve proxy + replicas, or the plain process) "
            "and the load-generating client:",
            "",
            "| level | " + " | ".join(SERVERS) + " | ranking replicas | noop_body replicas |",
            "|---" * (len(SERVERS) + 3) + "|",
        ]
        for level in levels:
            row = []
            for s in SERVERS:
                c = cpu.get((s, level), {})
                server = sum(v for k, v in c.items() if k != "client")
                row.append(f"{server:.1f} (+{c.get('client', 0):.1f} client)")
            rep = [
                f"{cpu.get((s, level), {}).get('replicas', 0):.1f}"
                for s in ("ranking", "noop_body")
            ]
            out.append(f"| {level} | " + " | ".join(row + rep) + " |")
    return "\n".join(out)


def run_mode(
    mode: str, registry: str, levels: list[int], seconds: float, replicas: int, rounds: int = 1
) -> dict:
    """Start a Ray with Serve's ``mode`` ingress, measure the four servers, return the runs."""
    from ray import serve

    from freshrank.ops.runtime import free_port, init_ray
    from freshrank.serving.app import RankingAppConfig, build_ranking_app, replica_actor_options

    if mode == "haproxy":
        os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", HAPROXY_DRAIN_S)
    body = make_body(BODY_CANDIDATES[0])
    load_before = os.getloadavg()
    init_ray(num_cpus=8, dashboard_port=None, serve_ingress=mode)
    http_port, plain_port = free_port(), free_port()
    # Ray starts its workers (proxy, replicas) at niceness 15; the plain server gets the same, so
    # that on a shared machine both compete for CPU on equal terms.
    plain = subprocess.Popen(
        [
            "nice",
            "-n",
            str(RAY_WORKER_NICENESS),
            sys.executable,
            __file__,
            "--plain-server",
            "--registry",
            registry,
            "--port",
            str(plain_port),
        ]
    )
    runs: list[Run] = []
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
        config = RankingAppConfig(registry=registry, num_replicas=replicas)
        serve.run(build_ranking_app(config), name="ranking", route_prefix="/ranking")
        for name, read_body in (("noop", False), ("noop_body", True)):
            serve.run(
                noop_app(
                    replicas,
                    config.max_ongoing_requests,
                    read_body,
                    replica_actor_options(config),
                ),
                name=name,
                route_prefix=f"/{name}",
            )
        urls = {
            "ranking": f"http://127.0.0.1:{http_port}/ranking",
            "noop": f"http://127.0.0.1:{http_port}/noop",
            "noop_body": f"http://127.0.0.1:{http_port}/noop_body",
            "plain": f"http://127.0.0.1:{plain_port}",
        }
        for url in urls.values():
            wait_ok(url, body)

        def run(
            s: str, level: str, concurrency: int, rate: float | None, round_: int = 0
        ) -> LatencySummary:
            m, cpu = measure(
                urls[s], body, seconds, concurrency, rate, process_groups(s, plain.pid)
            )
            runs.append(Run(s, level, m, cpu, round_))
            print(
                f"[{mode}] {s:9s} {level:12s} {m.throughput_rps:7.1f} req/s  p50 "
                f"{m.p50_ms:6.1f} ms  p99 {m.p99_ms:6.1f} ms  failed {m.failed}"
                + (f"  (round {round_ + 1}/{rounds})" if rounds > 1 and rate is None else ""),
                flush=True,
            )
            return m

        # Rounds interleave: every server at every level once, then again, so a slow spell
        # of the machine lands on all servers rather than on one.
        for round_ in range(rounds):
            for c in levels:
                for s in SERVERS:
                    run(s, f"c={c}", c, None, round_)
        half = ModeResult(mode, runs, []).peak("ranking") / 2
        for s in SERVERS:
            run(s, f"open {half:.0f}/s", max(levels), half)
    finally:
        plain.terminate()
        plain.wait(30)
        serve.shutdown()
        import ray

        ray.shutdown()
    return {
        "mode": mode,
        "load": [load_before[0], os.getloadavg()[0]],
        "runs": [
            {
                "server": r.server,
                "level": r.level,
                "summary": asdict(r.summary),
                "cpu": r.cpu_ms,
                "round": r.round,
            }
            for r in runs
        ],
    }


BODY_CANDIDATES = [100]
"""The candidates per request of this run (set from ``--candidates``; the child reads it)."""


def load_runs(data: dict) -> list[Run]:
    return [
        Run(r["server"], r["level"], LatencySummary(**r["summary"]), r["cpu"], r.get("round", 0))
        for r in data["runs"]
    ]


@dataclass(frozen=True)
class ModeResult:
    """One ingress mode's runs and what the report says about them.

    With several rounds, each (server, level) is represented by its median run by throughput
    (latency and CPU of that same run): ``runs`` keeps every run, ``median_runs`` the chosen.
    """

    mode: str
    runs: list[Run]
    load: list[float]

    @property
    def rounds(self) -> int:
        return 1 + max((r.round for r in self.runs), default=0)

    @property
    def median_runs(self) -> list[Run]:
        groups: dict[tuple[str, str], list[Run]] = {}
        for r in self.runs:
            groups.setdefault((r.server, r.level), []).append(r)
        chosen = []
        for group in groups.values():
            ordered = sorted(group, key=lambda r: r.summary.throughput_rps)
            chosen.append(ordered[(len(ordered) - 1) // 2])  # the lower median of an even count
        return chosen

    @property
    def levels(self) -> list[str]:
        return [r.level for r in self.median_runs if r.server == "ranking"]

    def summary(self, server: str, level: str) -> LatencySummary:
        return next(r.summary for r in self.median_runs if (r.server, r.level) == (server, level))

    def cpu(self, server: str, level: str) -> dict[str, float]:
        return next(
            (r.cpu_ms or {} for r in self.median_runs if (r.server, r.level) == (server, level)),
            {},
        )

    def peak(self, server: str) -> float:
        return max(r.summary.throughput_rps for r in self.median_runs if r.server == server)

    def round_peak_ratios(self) -> list[float]:
        """Our closed-loop peak over the no-op floor's, within each round alone."""
        ratios = []
        for k in range(self.rounds):

            def peak(server: str, k: int = k) -> float:
                return max(
                    r.summary.throughput_rps
                    for r in self.runs
                    if r.server == server and r.round == k and r.level.startswith("c=")
                )

            ratios.append(peak("ranking") / peak("noop"))
        return ratios

    @property
    def open_level(self) -> str:
        return self.levels[-1]

    def goals(self) -> list[tuple[str, str, bool]]:
        """(goal, measured, met) against the floors of this mode."""
        c1 = self.levels[0]
        gap = self.summary("ranking", c1).p50_ms - self.summary("noop", c1).p50_ms
        gap_body = self.summary("ranking", c1).p50_ms - self.summary("noop_body", c1).p50_ms
        peak_ratio = self.peak("ranking") / self.peak("noop")
        plain_ratio = self.peak("ranking") / self.peak("plain")
        p99_half = self.summary("ranking", self.open_level).p99_ms
        failed = sum(r.summary.failed for r in self.runs if r.server == "ranking")  # all rounds
        half = self.peak("ranking") / 2
        return [
            (f"p50 at {c1} within 2 ms of the no-op floor", f"{gap:+.1f} ms", gap <= 2.0),
            (
                "(same, against the floor that reads the body)",
                f"{gap_body:+.1f} ms",
                gap_body <= 2.0,
            ),
            (
                "peak throughput >= 0.8 x the no-op floor's peak",
                f"{peak_ratio:.2f}",
                peak_ratio >= 0.8,
            ),
            (
                "p99 < 50 ms at half our peak (open loop)",
                f"{p99_half:.1f} ms at {half:.0f} req/s",
                p99_half < 50,
            ),
            (
                "peak throughput >= 0.5 x the plain FastAPI server's (aim)",
                f"{plain_ratio:.2f}",
                plain_ratio >= 0.5,
            ),
            ("no failed requests on our app", str(failed), failed == 0),
        ]

    def limits(self, inproc: InProcess) -> str:
        """The "What limits it" paragraph, from this mode's CPU figures."""
        top = next((lv for lv in reversed(self.levels) if lv.startswith("c=")), self.levels[0])
        cpu = {s: self.cpu(s, top) for s in SERVERS}

        def server(s: str) -> float:
            return sum(v for k, v in cpu[s].items() if k != "client")

        def total(s: str) -> float:
            return server(s) + cpu[s].get("client", 0)

        ours_rep = cpu["ranking"].get("replicas", 0)
        floor_rep = cpu["noop_body"].get("replicas", 0)
        if self.mode == "proxy":
            ingress = (
                "Serve's Python proxy takes each request and hands it to a replica with an "
                "actor call; once the replica reads the body it pulls it from the proxy with "
                "another actor call"
            )
            body_note = (
                f"so the peak ratio against `noop` cannot pass "
                f"{total('noop') / total('noop_body'):.2f} for any endpoint that reads its body "
                "(0.8 needs the body pull itself to be nearly free)"
            )
        else:
            ingress = (
                "HAProxy forwards each request over HTTP straight to a replica's own uvicorn "
                "(direct ingress: no actor call, the body arrives with the request); the "
                "ingress tier is HAProxy plus the HAProxyManager actor, which parses one log "
                "line per request into Serve's HTTP metrics (`RAY_SERVE_HAPROXY_METRICS_ENABLED`, "
                "on by default)"
            )
            body_note = (
                f"so reading the body costs {total('noop_body') - total('noop'):+.2f} ms here "
                "(server and client) "
                f"and the peak ratio against `noop` is bounded near "
                f"{total('noop') / total('ranking'):.2f} by our own per-request CPU"
            )
        return (
            f"What limits it with `{self.mode}` ingress (CPU per answered request at {top}, "
            f"server side): {ingress}. Ray's floor costs {server('noop'):.2f} ms (ingress "
            f"{cpu['noop'].get('proxy', 0):.2f} + replica {cpu['noop'].get('replicas', 0):.2f})"
            f" before any work, {server('noop_body'):.2f} ms once the body is read; our app "
            f"{server('ranking'):.2f} ms, of which the replicas {ours_rep:.2f} ms against the "
            f"body-reading floor's {floor_rep:.2f} ms: we add {ours_rep - floor_rep:.2f} ms per "
            "request in the replica. The scoring itself costs between "
            f"{inproc.batch:.2f} ms (in a batch of 16) and {inproc.one:.2f} ms (alone) in "
            "process, depending on how many requests a batch gathers at this level; the rest "
            "is the replica's request path (middlewares, the batcher, the response, metrics). "
            "The plain server does everything, HTTP "
            f"included, in {server('plain'):.2f} ms. With two cores for servers and client "
            "together, throughput is about 2 s / (server + client CPU per request): with the "
            f"client, a request costs {total('noop'):.2f} ms on the no-op floor, "
            f"{total('noop_body'):.2f} ms on the body-reading floor and {total('ranking'):.2f} "
            f"ms on ours, {body_note}."
        )


def fmt_report(results: list[ModeResult], inproc: InProcess, args: argparse.Namespace) -> str:
    stage_text = ", ".join(f"{k} {v:.2f}" for k, v in inproc.stages.items())
    command = (
        f"python bench/bench_serving.py --seconds {args.seconds:g} --levels {args.levels} "
        f"--candidates {args.candidates} --replicas {args.replicas} --ingress {args.ingress}"
        + (f" --rounds {args.rounds}" if args.rounds > 1 else "")
    )
    loads = "; ".join(f"{r.mode}: {r.load[0]:.1f} before / {r.load[1]:.1f} after" for r in results)
    out = [
        f"Command: `{command}` ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, load "
        f"average {loads}: the machine is shared with other developers' tests, so figures move "
        "between runs).",
        "",
        f"Requests of {args.candidates} candidates. `ranking` = our Serve app "
        f"({args.replicas} replicas, batches of up to 16, no wait); `noop` = a Ray Serve "
        f"FastAPI deployment answering a constant ({args.replicas} replicas, same ingress and "
        "replica settings: user code on the replica's event loop for both); `noop_body` = the "
        "same after reading the request body; `plain` = FastAPI + uvicorn, one process, same "
        "model, encoder and response writer (`rank_requests_json`), started at Ray's worker "
        "niceness (15) like the Serve processes. Each ingress mode (`proxy`: Serve's Python "
        "proxy; `haproxy`: Ray 2.60's HAProxy with direct ingress, "
        '`init_ray(serve_ingress="haproxy")`) runs on a Ray of its own, one after the other. '
        f"Closed loop per concurrency level ({args.seconds:g} s each after 1 s warm-up), then "
        "open loop at half our peak of the same mode. In process, no HTTP, CPU ms per request "
        f"of {args.candidates} candidates: {stage_text}; all together {inproc.one:.2f} ms, "
        f"{inproc.batch:.2f} ms per request in a batch of 16.",
    ]
    for r in results:
        peaks = " | ".join(f"{s} {r.peak(s):.0f} req/s" for s in SERVERS)
        out += [
            "",
            f"**Ingress `{r.mode}`**",
            "",
            fmt_tables(r.median_runs, r.levels),
            "",
            f"Peaks ({r.mode}): {peaks}.",
        ]
        if r.rounds > 1:
            per_round = ", ".join(f"{x:.2f}" for x in r.round_peak_ratios())
            out += [
                "",
                f"Closed-loop levels measured in {r.rounds} interleaved rounds; each cell is the "
                "round with the median throughput (its latency and CPU). Peak over the no-op "
                f"floor's peak, round by round ({r.mode}): {per_round}.",
            ]
    names = [g[0] for g in results[0].goals()]
    header = "| goal | " + " | ".join(f"`{r.mode}` ingress" for r in results) + " |"
    out += ["", header, "|---" * (len(results) + 1) + "|"]
    by_mode = [r.goals() for r in results]
    for i, name in enumerate(names):
        cells = [f"{g[i][1]} {'PASS' if g[i][2] else 'FAIL'}" for g in by_mode]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    for r in results:
        out += ["", r.limits(inproc)]
    out += [
        "",
        "The latency goals are further hurt by the other developers' jobs on the same two "
        "cores (load averages above).",
    ]
    return "\n".join(out)


def run_child(cmd: list[str]) -> None:
    """Run a mode's child to the end. On Ctrl-C the child got the same SIGINT and is shutting
    its Serve and Ray down (HAProxy included): wait for that instead of killing it."""
    child = subprocess.Popen(cmd)
    try:
        code = child.wait()
    except KeyboardInterrupt:
        try:
            child.wait(120)
        except subprocess.TimeoutExpired:
            child.terminate()
        raise
    if code:
        raise subprocess.CalledProcessError(code, cmd)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=6.0, help="measured seconds per run")
    p.add_argument(
        "--levels",
        default="1,2,4,8,16,32,64",
        help="closed-loop concurrency levels (high enough that our throughput stops rising: "
        "at c=32 it still rose while the floor's had been flat since c=8)",
    )
    p.add_argument("--candidates", type=int, default=100)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument(
        "--ingress",
        choices=(*MODES, "both"),
        default="both",
        help="Serve ingress to measure: Serve's Python proxy, HAProxy (direct ingress), or both "
        "(each on a Ray of its own)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="sweep the closed-loop levels this many times, interleaved; report the median "
        "(the machine's throughput drifts within a run: one sweep is not enough to judge 0.8)",
    )
    p.add_argument("--no-write", action="store_true", help="do not write bench/RESULTS.md")
    p.add_argument("--plain-server", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--registry", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.plain_server:
        plain_server(args.registry, args.port)
        return
    if args.rounds < 1:
        p.error(f"--rounds must be >= 1, got {args.rounds}")
    levels = [int(x) for x in args.levels.split(",")]
    BODY_CANDIDATES[0] = args.candidates
    if args.child:
        data = run_mode(args.child, args.registry, levels, args.seconds, args.replicas, args.rounds)
        Path(args.out).write_text(json.dumps(data))
        return

    modes = MODES if args.ingress == "both" else (args.ingress,)
    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    try:
        reg = publish(work / "registry")
        inproc = in_process(reg, make_body(args.candidates))
        stage_text = ", ".join(f"{k} {v:.2f}" for k, v in inproc.stages.items())
        print(
            f"in process (CPU ms/request): {stage_text}; all {inproc.one:.2f}; "
            f"in a batch of 16 {inproc.batch:.2f}",
            flush=True,
        )
        results = []
        for mode in modes:
            out = work / f"runs-{mode}.json"
            run_child(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    mode,
                    "--out",
                    str(out),
                    "--registry",
                    str(reg.root),
                    "--seconds",
                    str(args.seconds),
                    "--levels",
                    args.levels,
                    "--candidates",
                    str(args.candidates),
                    "--replicas",
                    str(args.replicas),
                    "--rounds",
                    str(args.rounds),
                ],
            )
            data = json.loads(out.read_text())
            results.append(ModeResult(mode, load_runs(data), data["load"]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = fmt_report(results, inproc, args)
    print()
    print(report)
    if not args.no_write:
        sys.path.insert(0, str(Path(__file__).parent))
        from _results import write_section

        print(f"written to {write_section('Issue 4', 'Serving', report)}")


if __name__ == "__main__":
    main()
