"""Swap latency: from a promotion (champion pointer write) to every replica serving the version.

Run: ``python bench/bench_swap.py [--promotions 20] [--replicas 2] [--poll 0.2]``.

Our ranking app (default config: replicas poll the registry every ``--poll`` s, load, verify
and warm the new version in a background thread, then swap one reference) under steady HTTP
load (``--concurrency`` closed-loop clients, requests of 100 candidates). For each promotion a
new version (the default model size) is published first, then the clock starts and
``Registry.set_champion`` verifies it and writes the pointer. Every ranking response names its
version (``X-Model-Version``) and replica (``X-Replica``); a replica has swapped when it answers a
request sent after the promotion with the new version. Reported per promotion: time to the first
replica, and to every replica (the swap latency); p50/p99 over all promotions. This is an upper
bound by one request latency (a response is seen when it arrives). Written to
``bench/RESULTS.md`` ("Issue 4").
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from loadgen import LoadConfig, LoadGenerator, summarise

from freshrank.model.config import RankerConfig
from freshrank.model.ranker import Ranker
from freshrank.registry import Registry, save_checkpoint


def publish(reg: Registry, seed: int) -> int:
    torch.manual_seed(seed)
    cfg = RankerConfig()
    meta = {"cursor": seed, "watermark": time.time(), "metrics": {"loss": 0.5}, "events_trained": 1}
    return save_checkpoint(reg, cfg, Ranker(cfg).state_dict(), None, {}, meta).version


def body(n: int) -> dict:
    return {
        "user_id": "u1",
        "query": "red shoes",
        "candidates": [{"item_id": f"i{i}", "category": "c", "price": 1.0 + i} for i in range(n)],
    }


def first_answers(load: LoadGenerator, version: int, since: float) -> dict[str, float]:
    out: dict[str, float] = {}
    for s in load.samples():
        if s.version == version and s.sent >= since and s.replica:
            out[s.replica] = min(out.get(s.replica, s.done), s.done)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--promotions", type=int, default=20)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--poll", type=float, default=0.2, help="replica poll interval, s")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--candidates", type=int, default=100)
    p.add_argument("--timeout", type=float, default=30.0, help="give up on one swap after, s")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()

    from ray import serve

    from freshrank.ops.runtime import free_port, init_ray
    from freshrank.serving.app import RankingAppConfig, build_ranking_app

    load_before = os.getloadavg()
    reg = Registry(Path(tempfile.mkdtemp(prefix="bench-swap-")) / "registry")
    reg.set_champion(publish(reg, 0))
    init_ray(num_cpus=8, dashboard_port=None)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        config = RankingAppConfig(
            registry=str(reg.root), num_replicas=args.replicas, poll_interval_s=args.poll
        )
        serve.run(build_ranking_app(config), name="ranking", route_prefix="/")
        load = LoadGenerator(
            LoadConfig(
                url=url,
                body=body(args.candidates),
                concurrency=args.concurrency,
                max_seconds=args.promotions * (args.timeout + 5) + 120,
                timeout_s=30,
            )
        )
        with load:
            deadline = time.monotonic() + 120
            while len(first_answers(load, 1, 0.0)) < args.replicas:
                if time.monotonic() > deadline:
                    raise RuntimeError("replicas never all answered with v1")
                time.sleep(0.05)
            for i in range(args.promotions):
                v = publish(reg, i + 1)
                time.sleep(0.5)  # let the load settle between promotions
                t0 = time.monotonic()
                reg.set_champion(v, reason="bench")
                t_written = time.monotonic()
                deadline = t0 + args.timeout
                while len(first_answers(load, v, t0)) < args.replicas:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"v{v} not on every replica after {args.timeout} s")
                    time.sleep(0.005)
                answers = first_answers(load, v, t0)
                rows.append(
                    (
                        v,
                        t_written - t0,
                        min(answers.values()) - t0,
                        max(answers.values()) - t0,
                    )
                )
                print(
                    f"v{v}: pointer {rows[-1][1] * 1000:.0f} ms, first replica "
                    f"{rows[-1][2] * 1000:.0f} ms, all replicas {rows[-1][3] * 1000:.0f} ms",
                    flush=True,
                )
        samples = load.samples()
    finally:
        serve.shutdown()
        import ray

        ray.shutdown()

    summary = summarise(samples)
    arr = np.asarray(rows)
    q = {
        name: (np.percentile(arr[:, col], 50) * 1000, np.percentile(arr[:, col], 99) * 1000)
        for name, col in (
            ("pointer write (verify + write)", 1),
            ("first replica", 2),
            ("every replica (swap latency)", 3),
        )
    }
    p99_all = q["every replica (swap latency)"][1]
    command = (
        f"python bench/bench_swap.py --promotions {args.promotions} --replicas {args.replicas} "
        f"--poll {args.poll:g} --concurrency {args.concurrency} --candidates {args.candidates}"
    )
    lines = [
        f"Command: `{command}` ({time.strftime('%Y-%m-%d %H:%M')}, load average "
        f"{load_before[0]:.1f} before / {os.getloadavg()[0]:.1f} after).",
        "",
        f"{args.promotions} promotions of the default-size model (11 MB of weights) into "
        f"{args.replicas} replicas polling every {args.poll:g} s, under {args.concurrency} "
        f"closed-loop clients ({summary.requests} requests, {summary.failed} failed, "
        f"{summary.throughput_rps:.0f} req/s, p50 {summary.p50_ms:.1f} ms, p99 "
        f"{summary.p99_ms:.1f} ms). Time from the start of `set_champion` to:",
        "",
        "| step | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|",
    ]
    for (name, (p50, p99)), col in zip(q.items(), (1, 2, 3), strict=True):
        lines.append(f"| {name} | {p50:.0f} | {p99:.0f} | {arr[:, col].max() * 1000:.0f} |")
    lines += [
        "",
        "| goal | measured | result |",
        "|---|---|---|",
        f"| swap p99 < 2 s | {p99_all / 1000:.2f} s | {'PASS' if p99_all < 2000 else 'FAIL'} |",
        f"| no failed request during swaps | {summary.failed} | "
        f"{'PASS' if summary.failed == 0 else 'FAIL'} |",
    ]
    report = "\n".join(lines)
    print()
    print(report)
    if not args.no_write:
        sys.path.insert(0, str(Path(__file__).parent))
        from _results import write_section

        print(f"written to {write_section('Issue 4', 'Swap latency', report)}")


if __name__ == "__main__":
    main()
