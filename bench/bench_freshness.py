"""Freshness end to end: from a shard landing to the first response served by a model trained on
it, with events arriving continuously; our long-lived trainer against relaunching training per
window.

Run: ``python bench/bench_freshness.py [--seconds 60] [--events-per-second 2000]``.

Both arms share everything but the trainer:

* a producer lands shards at a steady rate for ``--seconds`` (``run_producer``);
* the ranking app serves the registry's champion (2 replicas) and an open-loop client
  (``LoadGenerator``, ``--request-rate`` requests/s) records which version answered when;
* ``ours``: one ``run_training`` call, the long-lived ``TorchTrainer.fit()`` consuming window
  after window (started, and ready, before the first event lands: a long-lived job is up when
  events arrive); the promotion gate judges each version on the next window's rows;
* ``relaunch``: ``run_training(max_windows=1)`` called again and again, a new ``fit()`` per
  window (what a cron- or workflow-driven retrain does), resuming from the registry each time.

Freshness of a shard = (first time a version whose training included it answered a request)
- (the shard's ``landed_at``). A version includes every shard up to its cursor, so a shard is
live once any version >= the one that first trained it answers. p50/p99 over all shards.
Goal (issue 4): ours p50 < 5 s and p99 < 15 s on this machine. For ours, the per-stage
breakdown (from the manifests' stage times, the promotion log and the client's first answers)
shows which stage the time goes to.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from loadgen import LoadConfig, LoadGenerator

from freshrank.events.produce import ProducerConfig, run_producer
from freshrank.events.simulator import SimulatorConfig
from freshrank.learn.config import TrainConfig
from freshrank.learn.train import run_training
from freshrank.registry import Registry

BODY = {
    "user_id": "u1",
    "query": "shoes",
    "candidates": [{"item_id": f"i{i}", "price": 1.0 + i} for i in range(100)],
}


def freshness(registry: Registry, first_served_wall: dict[int, float]) -> list[float]:
    """Seconds from each trained shard landing to the first answer by a version including it."""
    served = sorted(first_served_wall.items())
    out = []
    for v in registry.list_versions():
        m = registry.get(v).manifest
        live = [t for served_v, t in served if served_v >= v]
        if live:
            out.extend(min(live) - landed for landed in m.get("shard_landed_at", {}).values())
    return out


def stages(registry: Registry, first_served_wall: dict[int, float]) -> dict[str, list[float]]:
    """Seconds spent in each stage of the update path, per version (per shard for the first)."""
    promoted = {e["to_version"]: e["at"] for e in registry.promotions() if e["kind"] == "promoted"}
    out: dict[str, list[float]] = {
        "landed -> read": [],
        "read -> trained": [],
        "trained -> checkpointed": [],
        "checkpointed -> promoted": [],
        "promoted -> first answer": [],
    }
    for v in registry.list_versions():
        m = registry.get(v).manifest
        times = m.get("stage_times")
        if not times:
            continue
        out["landed -> read"] += [times["read_at"] - t for t in m["shard_landed_at"].values()]
        out["read -> trained"].append(times["trained_at"] - times["read_at"])
        out["trained -> checkpointed"].append(m["created_at"] - times["trained_at"])
        if v in promoted:
            out["checkpointed -> promoted"].append(promoted[v] - m["created_at"])
            if v in first_served_wall:
                out["promoted -> first answer"].append(first_served_wall[v] - promoted[v])
    return out


def run_arm(
    name: str, workdir: Path, args: argparse.Namespace
) -> tuple[list[float], dict[str, list[float]], int]:
    """One arm: producer + serving + client + trainer(s); returns per-shard freshness (s), the
    stage breakdown and the number of versions."""
    from ray import serve

    from freshrank.ops.runtime import free_port
    from freshrank.serving.app import RankingAppConfig, build_ranking_app

    landing, registry_dir = workdir / name / "landing", workdir / name / "registry"
    landing.mkdir(parents=True)
    registry = Registry(registry_dir)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(
        build_ranking_app(
            RankingAppConfig(registry=str(registry_dir), num_replicas=2, access_log=False)
        ),
        name=f"fresh-{name}",
        route_prefix="/",
    )
    train = TrainConfig(
        landing=str(landing),
        registry=str(registry_dir),
        num_workers=args.workers,
        idle_timeout_s=30.0,
        max_windows=1 if name == "relaunch" else None,
        **({"strategy": args.strategy} if args.strategy else {}),
        **({"lwf_alpha": args.lwf_alpha} if args.lwf_alpha is not None else {}),
    )
    produce = ProducerConfig(
        landing_path=str(landing),
        events_per_second=args.events_per_second,
        shard_events=args.shard_events,
        duration_s=args.seconds,
        simulator=SimulatorConfig(seed=args.seed),
    )
    wall_offset = time.time() - time.monotonic()
    load = LoadGenerator(
        LoadConfig(
            url=f"http://127.0.0.1:{port}",
            body=BODY,
            concurrency=2,
            rate_rps=args.request_rate,
            max_seconds=args.seconds + 900,
        )
    )
    producer = threading.Thread(target=run_producer, args=(produce,), daemon=True)
    try:
        if name == "ours":
            trainer = threading.Thread(target=run_training, args=(train,), daemon=True)
            trainer.start()
            ready_by = time.monotonic() + 600
            while registry.trainer_status() is None and time.monotonic() < ready_by:
                if not trainer.is_alive():
                    raise RuntimeError("the trainer ended before it was ready")
                time.sleep(0.2)
            load.start()  # (503s until the first promotion: no point hammering before)
            producer.start()
            trainer.join(args.seconds + 900)
        else:
            load.start()
            producer.start()
            deadline = time.monotonic() + args.seconds + 900
            while time.monotonic() < deadline:  # bounded: one fit() per window
                # max_windows counts every window the registry has seen: one more per fit()
                latest = registry.latest_version()
                done = registry.get(latest).manifest["window_index"] if latest else 0
                summary = run_training(dataclasses.replace(train, max_windows=done + 1))
                if not summary.versions and not producer.is_alive():
                    break
        producer.join(60)
        champion = registry.champion_version()
        wait_until = time.monotonic() + 60
        while champion is not None and time.monotonic() < wait_until:
            if any(s.version == champion for s in load.samples()):
                break
            time.sleep(0.1)
    finally:
        samples = load.stop()
        serve.shutdown()
    first: dict[int, float] = {}
    for s in samples:
        if s.ok and s.version is not None:
            first[s.version] = min(first.get(s.version, s.done + wall_offset), s.done + wall_offset)
    return freshness(registry, first), stages(registry, first), len(registry.list_versions())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0, help="how long events arrive")
    p.add_argument("--events-per-second", type=float, default=2000.0)
    p.add_argument("--shard-events", type=int, default=1000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--request-rate",
        type=float,
        default=20.0,
        help="ranking requests per second (open loop) while events arrive; a closed loop would "
        "take every CPU cycle the trainer leaves and measure the machine, not the pipeline",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--strategy", default=None, help=f"trainer strategy (default: {TrainConfig.strategy})"
    )
    p.add_argument("--lwf-alpha", type=float, default=None, help="with an LwF part")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()

    from freshrank.ops.runtime import init_ray

    init_ray(num_cpus=8, dashboard_port=None)
    work = Path(tempfile.mkdtemp(prefix="bench-freshness-"))
    runs = {arm: run_arm(arm, work, args) for arm in ("ours", "relaunch")}
    results = {arm: run[0] for arm, run in runs.items()}
    lines = [
        f"Command: `python bench/bench_freshness.py --seconds {args.seconds:g} "
        f"--events-per-second {args.events_per_second:g} --shard-events {args.shard_events} "
        f"--request-rate {args.request_rate:g}"
        + (f" --strategy {args.strategy}" if args.strategy else "")
        + (f" --lwf-alpha {args.lwf_alpha:g}" if args.lwf_alpha is not None else "")
        + f"` (strategy {args.strategy or TrainConfig.strategy}; "
        f"load average {os.getloadavg()[0]:.1f}).",
        "",
        "| trainer | shards | versions | p50 s | p99 s | max s |",
        "|---|---|---|---|---|---|",
    ]
    for arm, values in results.items():
        a = np.asarray(values)
        n_versions = runs[arm][2]
        if len(a):
            lines.append(
                f"| {arm} | {len(a)} | {n_versions} | {np.percentile(a, 50):.1f} "
                f"| {np.percentile(a, 99):.1f} | {a.max():.1f} |"
            )
        else:
            lines.append(f"| {arm} | 0 | {n_versions} | - | - | - |")
    lines += ["", "Where the time goes (ours; seconds):", ""]
    lines += ["| stage | n | p50 | p99 |", "|---|---|---|---|"]
    for stage, values in runs["ours"][1].items():
        a = np.asarray(values)
        if len(a):
            lines.append(
                f"| {stage} | {len(a)} | {np.percentile(a, 50):.2f} | {np.percentile(a, 99):.2f} |"
            )
    ours, base = (np.asarray(results[k]) for k in ("ours", "relaunch"))
    if len(ours) and len(base):
        lines += [
            "",
            f"relaunch / ours p50: {np.percentile(base, 50) / np.percentile(ours, 50):.1f}x. "
            f"Goal ours p50 < 5 s: {'PASS' if np.percentile(ours, 50) < 5 else 'FAIL'}; "
            f"p99 < 15 s: {'PASS' if np.percentile(ours, 99) < 15 else 'FAIL'}.",
        ]
    report = "\n".join(lines)
    print(report)
    if not args.no_write:
        sys.path.insert(0, str(Path(__file__).parent))
        from _results import write_section

        write_section("Issue 4", "Freshness end to end", report)


if __name__ == "__main__":
    main()
