"""Per-window overhead: the long-lived trainer against relaunching ``fit()`` per window.

Run: ``python bench/bench_overhead.py [--windows N] [--shard-events K]``. Both train the same
pre-landed shards, one shard per window, 2 workers. Per window, overhead is the time that is not
forward/backward/optimizer step:

* long-lived: the time between two consecutive versions being published, minus that window's
  compute time (from the version manifests);
* relaunch: the wall time of a whole ``fit()`` that trains one window, minus its compute time.

Goal (issue 3): long-lived overhead at most 1/10 of the relaunch baseline's.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from freshrank.events.produce import ProducerConfig, run_producer
from freshrank.learn.config import TrainConfig
from freshrank.learn.train import run_training
from freshrank.ops.runtime import init_ray
from freshrank.registry.store import Registry


def _land(path: Path, shards: int, shard_events: int) -> None:
    run_producer(
        ProducerConfig(
            landing_path=str(path),
            events_per_second=1e9,
            shard_events=shard_events,
            max_shards=shards,
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--relaunch-windows", type=int, default=4)
    parser.add_argument("--shard-events", type=int, default=2000)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="freshrank-overhead-"))
    try:
        init_ray(dashboard_port=None)
        # Long-lived: one fit over every window.
        _land(work / "a" / "landing", args.windows + 1, args.shard_events)
        cfg = TrainConfig(
            landing=str(work / "a" / "landing"),
            registry=str(work / "a" / "registry"),
            max_shards_per_window=1,
            poll_interval_s=0.05,
            strategy="replay",  # as every recorded run (the default until issue 16)
        )
        run_training(cfg)
        reg = Registry(cfg.registry)
        ms = [reg.get(v).manifest for v in reg.list_versions()]
        # skip the first window: it includes the fit's start-up, which the baseline pays per window
        long_lived = [
            (b["trained_at"] - a["trained_at"]) - b["timings"]["compute_s"]
            for a, b in zip(ms[:-1], ms[1:], strict=True)
        ]
        compute_ll = [m["timings"]["compute_s"] for m in ms[1:]]

        # Relaunch: a new fit per window.
        _land(work / "b" / "landing", args.relaunch_windows, args.shard_events)
        base = replace(
            cfg, landing=str(work / "b" / "landing"), registry=str(work / "b" / "registry")
        )
        relaunch, compute_rl = [], []
        reg_b = Registry(base.registry)
        for k in range(1, args.relaunch_windows + 1):
            t0 = time.perf_counter()
            run_training(replace(base, max_windows=k))
            wall = time.perf_counter() - t0
            compute = reg_b.get(reg_b.latest_version()).manifest["timings"]["compute_s"]
            relaunch.append(wall - compute)
            compute_rl.append(compute)

        ours, theirs = statistics.median(long_lived), statistics.median(relaunch)
        print(f"\nper-window figures (median), {args.shard_events} events per window, 2 workers")
        print(f"{'':28s} {'long-lived fit':>16s} {'relaunch fit':>14s} {'ratio':>8s}")
        print(f"{'windows measured':28s} {len(long_lived):>16d} {len(relaunch):>14d}")
        print(f"{'overhead s / window':28s} {ours:>16.2f} {theirs:>14.2f} {ours / theirs:>8.3f}")
        cl, cr = statistics.median(compute_ll), statistics.median(compute_rl)
        print(f"{'compute s / window':28s} {cl:>16.2f} {cr:>14.2f} {cl / cr:>8.2f}")
        verdict = "met" if ours / theirs <= 0.1 else "NOT met"
        print(f"{'goal: overhead ratio <= 0.1':28s} {verdict:>16s}")
        print("long-lived overhead per window:", ", ".join(f"{x:.2f}" for x in long_lived))
        print("relaunch overhead per window:  ", ", ".join(f"{x:.2f}" for x in relaunch))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
