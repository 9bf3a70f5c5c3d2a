"""Serving throughput and latency: our ranking app against Ray's floor and a plain server.

Run: ``python bench/bench_serving.py [--seconds 6] [--levels 1,2,4,8,16] [--candidates 100]``.

Three servers on this machine, measured in the same run, one after the other at each level:

* ``ranking``: our Ray Serve app (``build_ranking_app``: 2 replicas, ``@serve.batch``, limits);
* ``noop``: a Ray Serve FastAPI deployment, same replicas and proxy, that answers a constant
  without reading the body (Ray's own floor for an HTTP request); its replicas get the same
  ``ray_actor_options`` as ours (so the same user-code thread setting, see
  ``RankingAppConfig.user_code_on_event_loop``);
* ``noop_body``: the same, but it reads the body first: in Ray Serve 2.60 a replica pulls the
  body from the proxy with one more actor call, which every real endpoint pays;
* ``plain``: FastAPI + uvicorn in one process on 127.0.0.1 that loads the same version and
  answers with ``freshrank.serving.scoring.rank_requests_json`` (same model, same encoder and
  response writer as our replicas; FastAPI's own body parsing).

Every request carries ``--candidates`` candidates. Closed loop at each concurrency level
(``LoadGenerator`` threads with kept-alive connections), then open loop at half of our peak
throughput for the p99 goal. Tables go to stdout and ``bench/RESULTS.md`` ("Issue 4").
"""

# No `from __future__ import annotations`: the Serve deployments below are made inside functions
# and shipped by value; FastAPI must see their annotations as objects (see serving/app.py).
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import torch

from freshrank.model.config import RankerConfig
from freshrank.model.ranker import Ranker
from freshrank.registry import Registry, load_serving_model, save_checkpoint
from freshrank.serving.api import RankRequest
from freshrank.serving.loadgen import LatencySummary, LoadConfig, LoadGenerator, summarise
from freshrank.serving.scoring import (
    rank_requests_json,
    responses_json,
    score_batch,
    search_candidates,
    warm_up,
)

SERVERS = ("ranking", "noop", "noop_body", "plain")
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


_TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


def process_groups(app: str, plain_pid: int) -> dict[str, list[int]]:
    """PIDs of the processes that serve ``app``: Serve proxy and replicas, or the plain server."""
    if app == "plain":
        return {"server": [plain_pid]}
    from ray.util.state import list_actors

    actors = list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
    return {
        "proxy": [a.pid for a in actors if a.class_name == "ProxyActor"],
        "replicas": [
            a.pid for a in actors if a.class_name.startswith(f"ServeReplica:{app}:") and a.pid
        ],
    }


def cpu_snapshot(groups: dict[str, list[int]]) -> dict[str, float]:
    snap = {name: sum(_proc_cpu_s(pid) for pid in pids) for name, pids in groups.items()}
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
    from freshrank.features.encode import encode_searches
    from freshrank.model.device import to_tensors

    torch.set_num_threads(1)
    served = warm_up(load_serving_model(reg, reg.champion_version()))
    raw = json.dumps(body).encode()
    req = RankRequest.model_validate_json(raw)
    features = served.model.config.features
    inputs = encode_searches([search_candidates(req)], features)
    tensors = to_tensors(inputs, torch.device("cpu"))
    scores = score_batch(served, [req])

    def forward() -> None:
        with torch.inference_mode():
            served.model(tensors, use_position=False)

    stages = {
        "parse + validate": _cpu_ms(lambda: RankRequest.model_validate_json(raw), repeats),
        "encode": _cpu_ms(lambda: encode_searches([search_candidates(req)], features), repeats),
        "forward pass": _cpu_ms(forward, repeats),
        "response JSON": _cpu_ms(lambda: responses_json(served, [req], scores), repeats),
    }
    one = _cpu_ms(
        lambda: rank_requests_json(served, [RankRequest.model_validate_json(raw)]), repeats
    )
    batch = _cpu_ms(
        lambda: rank_requests_json(
            served, [RankRequest.model_validate_json(raw) for _ in range(16)]
        ),
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=6.0, help="measured seconds per run")
    p.add_argument("--levels", default="1,2,4,8,16", help="closed-loop concurrency levels")
    p.add_argument("--candidates", type=int, default=100)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--no-write", action="store_true", help="do not write bench/RESULTS.md")
    p.add_argument("--plain-server", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--registry", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.plain_server:
        plain_server(args.registry, args.port)
        return

    from ray import serve

    from freshrank.runtime import free_port, init_ray
    from freshrank.serving.app import RankingAppConfig, build_ranking_app, replica_actor_options

    levels = [int(x) for x in args.levels.split(",")]
    body = make_body(args.candidates)
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    reg = publish(work / "registry")
    inproc = in_process(reg, body)
    stage_text = ", ".join(f"{k} {v:.2f}" for k, v in inproc.stages.items())
    print(
        f"in process (CPU ms/request): {stage_text}; all {inproc.one:.2f}; "
        f"in a batch of 16 {inproc.batch:.2f}"
    )

    init_ray(num_cpus=8, dashboard_port=None)
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
            str(reg.root),
            "--port",
            str(plain_port),
        ]
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
        config = RankingAppConfig(registry=str(reg.root), num_replicas=args.replicas)
        serve.run(build_ranking_app(config), name="ranking", route_prefix="/ranking")
        for name, read_body in (("noop", False), ("noop_body", True)):
            serve.run(
                noop_app(
                    args.replicas,
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
        groups = {s: process_groups(s, plain.pid) for s in SERVERS}
        runs: list[Run] = []
        for c in levels:
            for s in SERVERS:
                m, cpu = measure(urls[s], body, args.seconds, c, None, groups[s])
                runs.append(Run(s, f"c={c}", m, cpu))
                print(
                    f"{s:8s} c={c:<3d} {m.throughput_rps:7.1f} req/s  p50 {m.p50_ms:6.1f} ms  "
                    f"p99 {m.p99_ms:6.1f} ms  failed {m.failed}",
                    flush=True,
                )
        peak = {s: max(r.summary.throughput_rps for r in runs if r.server == s) for s in SERVERS}
        half = peak["ranking"] / 2
        open_level = f"open {half:.0f}/s"
        for s in SERVERS:
            m, cpu = measure(urls[s], body, args.seconds, max(levels), half, groups[s])
            runs.append(Run(s, open_level, m, cpu))
            print(
                f"{s:8s} open loop {half:.0f}/s: {m.throughput_rps:7.1f} req/s  p50 "
                f"{m.p50_ms:6.1f} ms  p99 {m.p99_ms:6.1f} ms  failed {m.failed}",
                flush=True,
            )
    finally:
        plain.terminate()
        plain.wait(30)
        serve.shutdown()
        import ray

        ray.shutdown()
    load_after = os.getloadavg()

    by = {(r.server, r.level): r.summary for r in runs}
    by_cpu = {(r.server, r.level): r.cpu_ms for r in runs}
    c1 = f"c={levels[0]}"
    gap = by[("ranking", c1)].p50_ms - by[("noop", c1)].p50_ms
    peak_ratio = peak["ranking"] / peak["noop"]
    plain_ratio = peak["ranking"] / peak["plain"]
    p99_half = by[("ranking", open_level)].p99_ms
    failed = sum(r.summary.failed for r in runs if r.server == "ranking")
    gap_body = by[("ranking", c1)].p50_ms - by[("noop_body", c1)].p50_ms
    goals = [
        ("p50 at concurrency 1 within 2 ms of the no-op floor", f"{gap:+.1f} ms", gap <= 2.0),
        (
            "(same, against the floor that reads the body)",
            f"{gap_body:+.1f} ms",
            gap_body <= 2.0,
        ),
        ("peak throughput >= 0.8 x the no-op floor's peak", f"{peak_ratio:.2f}", peak_ratio >= 0.8),
        (
            f"p99 < 50 ms at half our peak ({half:.0f} req/s, open loop)",
            f"{p99_half:.1f} ms",
            p99_half < 50,
        ),
        (
            "peak throughput >= 0.5 x the plain FastAPI server's (aim)",
            f"{plain_ratio:.2f}",
            plain_ratio >= 0.5,
        ),
        ("no failed requests on our app", str(failed), failed == 0),
    ]
    table = fmt_tables(runs, [r.level for r in runs if r.server == "ranking"])
    peaks = " | ".join(f"{s} {peak[s]:.0f} req/s" for s in SERVERS)
    goal_lines = "\n".join(
        f"| {name} | {value} | {'PASS' if ok else 'FAIL'} |" for name, value, ok in goals
    )
    top = f"c={max(levels)}"
    cpu_top = {s: by_cpu.get((s, top)) or {} for s in SERVERS}

    def server_cpu(s: str) -> float:
        return sum(v for k, v in cpu_top[s].items() if k != "client")

    ours_rep = cpu_top["ranking"].get("replicas", 0)
    floor_rep = cpu_top["noop_body"].get("replicas", 0)
    total = {k: server_cpu(k) + cpu_top[k].get("client", 0) for k in SERVERS}
    limits = (
        f"What limits it (CPU per answered request at {top}, server side): Ray's floor costs "
        f"{server_cpu('noop'):.1f} ms (proxy {cpu_top['noop'].get('proxy', 0):.1f} + replica "
        f"{cpu_top['noop'].get('replicas', 0):.1f}) before any work, {server_cpu('noop_body'):.1f}"
        f" ms once the body is read (the replica pulls it from the proxy with another actor "
        f"call); our app {server_cpu('ranking'):.1f} ms, of which the replicas {ours_rep:.1f} ms "
        f"against the body-reading floor's {floor_rep:.1f} ms: we add {ours_rep - floor_rep:.1f} "
        f"ms per request in the replica, of which the scoring itself is {inproc.batch:.2f} ms "
        "(in process, batch of 16; the rest is `@serve.batch`, the response and metrics in the "
        f"replica's event loop). The plain server does everything, HTTP included, in "
        f"{server_cpu('plain'):.1f} ms. With two cores for servers and client together, "
        "throughput is about 2 s / (server + client CPU per request): with the client, a "
        f"request costs {total['noop']:.1f} ms on the no-op floor, {total['noop_body']:.1f} ms "
        f"on the body-reading floor and {total['ranking']:.1f} ms on ours, so the peak ratio "
        f"against `noop` cannot pass {total['noop'] / total['noop_body']:.2f} for any endpoint "
        "that reads its body (0.8 needs the body pull itself to be nearly free). The latency "
        "goals are further hurt by the other developers' jobs on the same two cores (load "
        "average above)."
    )
    command = (
        f"python bench/bench_serving.py --seconds {args.seconds:g} --levels {args.levels} "
        f"--candidates {args.candidates} --replicas {args.replicas}"
    )
    report = "\n".join(
        [
            f"Command: `{command}` ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, "
            f"load average {load_before[0]:.1f} before / {load_after[0]:.1f} after: the machine "
            "is shared with other developers' tests, so figures move between runs).",
            "",
            f"Requests of {args.candidates} candidates. `ranking` = our Serve app "
            f"({args.replicas} replicas, `@serve.batch` up to 16, no wait); `noop` = a Ray Serve "
            f"FastAPI deployment answering a constant ({args.replicas} replicas, same proxy and "
            "replica settings: user code on the replica's event loop for both); "
            "`noop_body` = the same after reading the request body (one more proxy call); "
            "`plain` = FastAPI + uvicorn, one process, same model, encoder and response writer "
            "(`rank_requests_json`), started "
            "at Ray's worker niceness (15) like the Serve processes. Closed "
            f"loop per concurrency level ({args.seconds:g} s each after 1 s warm-up), then open "
            f"loop at half our peak. In process, no HTTP, CPU ms per request of "
            f"{args.candidates} candidates: {stage_text}; all together {inproc.one:.2f} ms, "
            f"{inproc.batch:.2f} ms per request in a batch of 16.",
            "",
            table,
            "",
            f"Peaks: {peaks}.",
            "",
            "| goal | measured | result |",
            "|---|---|---|",
            goal_lines,
            "",
            limits,
        ]
    )
    print()
    print(report)
    if not args.no_write:
        sys.path.insert(0, str(Path(__file__).parent))
        from _results import write_section

        print(f"written to {write_section('Issue 4', 'Serving', report)}")


if __name__ == "__main__":
    main()
