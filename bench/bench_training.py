"""Training throughput: the long-lived Ray trainer (dense DDP or row-sparse; 1 or 2 workers)
against the best single-process loop, side by side in one run.

Run: ``python bench/bench_training.py [--shards N] [--shard-events K] [--runs ...]``. Every
column trains the same model, global batch and replay mix, one pass over the same pre-landed
shards. Reported per column:

* wall events/s: every event divided by the whole run, start-up included;
* steady events/s: events divided by the per-window read + evaluate + train time (what a
  long-lived trainer pays per window once it is up; for the trainer read from the manifests);
* train events/s: events divided by the train part alone (forward, backward, exchange, step).

The single-process loops are what one process does with the same encoder and model, no Ray, no
DDP: fused Adam over every parameter (``make_optimizer``, the dense baseline), and the same loop
with the row-sparse optimizer. Ratios are against the better of the two (the best
single-process loop), each figure against its own kind.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from freshrank.events.landing import LandingZone
from freshrank.events.produce import ProducerConfig, run_producer
from freshrank.events.schema import drop_invalid_rows
from freshrank.features.encode import concat_inputs, encode, num_rows, slice_inputs
from freshrank.learn.config import TrainConfig
from freshrank.learn.optim import make_optimizer
from freshrank.learn.replay import ReservoirBuffer
from freshrank.learn.train import run_training
from freshrank.model.device import to_tensors
from freshrank.model.ranker import Ranker
from freshrank.ops.runtime import init_ray
from freshrank.registry.store import Registry

RUNS = ("plain-dense", "plain-sparse", "ray2-dense", "ray2-sparse", "ray1-sparse")
"""Columns: plain-* a single process, rayN-* the Ray trainer with N workers; *-dense fused Adam
over every parameter (DDP's all-reduce with workers), *-sparse the row-sparse optimizer."""


@dataclass
class Run:
    name: str
    events: int
    wall_s: float
    steady_s: float
    train_s: float


def plain_loop(
    landing: Path, config: TrainConfig, row_sparse: bool
) -> tuple[int, float, float, float]:
    """Plain loop: pyarrow read -> encode -> train, one process, the global batch of
    ``config``. Returns events, wall, steady and train seconds."""
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = Ranker(config.model)
    opt = make_optimizer(model, config.learning_rate, row_sparse=row_sparse)
    buffer = ReservoirBuffer(config.replay_capacity, seed=0)
    rng = np.random.default_rng(0)
    zone = LandingZone(landing)
    events, steady, train = 0, 0.0, 0.0
    refs = zone.list_shards()
    for i in range(0, len(refs), config.max_shards_per_window):
        w0 = time.perf_counter()
        parts = []
        for ref in refs[i : i + config.max_shards_per_window]:
            table, _ = drop_invalid_rows(zone.read_shard(ref).table)
            parts.append(encode(table, config.model.features))
        rows = concat_inputs(parts)
        order = rng.permutation(num_rows(rows))
        bs = config.batch_size * config.num_workers  # same global batch as the trainer's
        t_train = time.perf_counter()
        for s in range(0, len(order), bs):
            new = slice_inputs(rows, order[s : s + bs])
            k = int(round(num_rows(new) * config.replay_ratio)) if len(buffer) else 0
            batch = concat_inputs([new, buffer.sample(k)]) if k else new
            x = to_tensors(batch, torch.device("cpu"))
            loss = F.binary_cross_entropy_with_logits(model(x), x["label"])
            opt.zero_grad()
            loss.backward()
            opt.step()
        train += time.perf_counter() - t_train
        buffer.add(rows)
        events += num_rows(rows)
        steady += time.perf_counter() - w0
    return events, time.perf_counter() - t0, steady, train


def trainer(config: TrainConfig) -> Run:
    """The Ray trainer as ``freshrank train`` runs it, on its own registry."""
    t0 = time.perf_counter()
    summary = run_training(config)
    wall = time.perf_counter() - t0
    reg = Registry(config.registry)
    timings = [reg.get(v).manifest["timings"] for v in summary.versions]
    steady = sum(t["read_s"] + t["eval_s"] + t["train_s"] for t in timings)
    train = sum(t["train_s"] for t in timings)
    return Run("", summary.events_trained, wall, steady, train)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=40)
    parser.add_argument("--shard-events", type=int, default=5000)
    parser.add_argument("--shards-per-window", type=int, default=4)
    parser.add_argument("--runs", default=",".join(RUNS), help="columns, in order")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="freshrank-bench-"))
    try:
        landing = work / "landing"
        run_producer(
            ProducerConfig(
                landing_path=str(landing),
                events_per_second=1e9,
                shard_events=args.shard_events,
                max_shards=args.shards,
            )
        )
        config = TrainConfig(
            landing=str(landing),
            registry=str(work / "registry"),
            num_workers=2,
            max_shards_per_window=args.shards_per_window,
            keep_versions=None,  # the manifests' timings are the steady figures
            strategy="replay",  # what the single-process loops do (a systems comparison)
        )
        runs: list[Run] = []
        ray_started = False
        for name in args.runs.split(","):
            kind, optimizer = name.split("-")
            sparse = optimizer == "sparse"
            if kind == "plain":
                events, wall, steady, train = plain_loop(landing, config, sparse)
                runs.append(Run(name, events, wall, steady, train))
            else:
                if not ray_started:
                    init_ray(dashboard_port=None)
                    ray_started = True
                workers = int(kind.removeprefix("ray"))
                run = trainer(
                    replace(
                        config,
                        registry=str(work / f"registry-{name}"),
                        num_workers=workers,
                        batch_size=config.batch_size * 2 // workers,  # the same global batch
                        row_sparse=sparse,
                    )
                )
                runs.append(replace(run, name=name))
            print(f"{name}: {runs[-1]}", flush=True)
        if len({r.events for r in runs}) != 1:
            raise SystemExit(f"columns trained different event counts: {runs}")
        print(render(runs))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def render(runs: list[Run]) -> str:
    """The side-by-side table: each column, and its ratio to the best single-process loop."""
    plain = [r for r in runs if r.name.startswith("plain")]

    def best(rate) -> float | None:
        return max((rate(r) for r in plain), default=None)

    rates = {
        "wall events/s": lambda r: r.events / r.wall_s,
        "steady events/s": lambda r: r.events / r.steady_s,
        "train events/s": lambda r: r.events / r.train_s,
    }
    lines = [
        "| | " + " | ".join(r.name for r in runs) + " |",
        "|---|" + "---:|" * len(runs),
        "| events | " + " | ".join(f"{r.events:,}" for r in runs) + " |",
        "| wall s (start-up included) | " + " | ".join(f"{r.wall_s:.1f}" for r in runs) + " |",
    ]
    for label, rate in rates.items():
        top = best(rate)
        lines.append(f"| {label} | " + " | ".join(f"{rate(r):,.0f}" for r in runs) + " |")
        if top:
            lines.append(
                f"| {label} / best single process | "
                + " | ".join(f"{rate(r) / top:.2f}" for r in runs)
                + " |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
