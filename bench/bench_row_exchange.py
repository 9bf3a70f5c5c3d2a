"""What a distributed training step costs here: the library's ``train_window`` on 1 and 2
gloo ranks (processes on this machine, no Ray), dense DDP against the row-sparse optimizer.

Run: ``python bench/bench_row_exchange.py [--requests N] [--batch-size B]``. Every column trains
the default ranker with the replay strategy (the trainer's default until issue 16; kept so the
figures stay comparable) on the same simulated rows,
one warm-up window first (it fills the replay buffer), then one timed window; ranks split the
rows and the global batch, as the trainer does. Columns:

* ``dense``: DDP over the whole model, fused Adam (the trainer's default);
* ``row-sparse, per-step sizes``: the row-sparse optimizer, each step's global batch size
  all-reduced step by step (the trainer before ``Strategy.replay_count``);
* ``row-sparse``: the row-sparse optimizer with the window's sizes summed once (the trainer).

Reported: events/s over the timed window, and ms per step.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from freshrank.events.simulator import Simulator, SimulatorConfig
from freshrank.features.encode import FeatureConfig, encode, num_rows, slice_inputs
from freshrank.learn.collectives import all_gather, all_reduce_sum
from freshrank.learn.config import TrainConfig
from freshrank.learn.optim import make_optimizer
from freshrank.learn.step import train_window
from freshrank.learn.strategies import build_strategy
from freshrank.model.config import RankerConfig
from freshrank.model.ranker import Ranker

MODES = ("dense", "row-sparse, per-step sizes", "row-sparse")


def _rank(rank: int, world: int, port: int, mode: str, rows: dict, batch: int, out) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        core = Ranker(RankerConfig())
        if mode == "dense":
            model = DistributedDataParallel(core) if world > 1 else core
            optimizer = make_optimizer(model, 0.02)
        else:
            model = core
            optimizer = make_optimizer(core, 0.02, row_sparse=True)
        strategy = build_strategy(
            TrainConfig(landing="-", registry="-", strategy="replay").strategy_config(), rank
        )
        mine = slice_inputs(rows, np.arange(rank, num_rows(rows), world))
        per_rank = batch // world
        steps = math.ceil(max(all_gather(num_rows(mine))) / per_rank)  # as the trainer does
        device = torch.device("cpu")
        kwargs = dict(
            batch_size=per_rank,
            rng=np.random.default_rng(rank),
            device=device,
            steps=steps,
            world=world,
            reduce_sum=lambda v: all_reduce_sum(v, device),
            reduce_sizes=None if mode.endswith("sizes") else lambda v: all_reduce_sum(v, device),
        )
        train_window(model, optimizer, mine, strategy, **kwargs)  # warm-up, fills the buffer
        dist.barrier()
        t0 = time.perf_counter()
        result = train_window(model, optimizer, mine, strategy, **kwargs)
        dist.barrier()
        took = time.perf_counter() - t0
        if rank == 0:
            out.put((took, result.steps))
    finally:
        dist.destroy_process_group()


def measure(world: int, mode: str, rows: dict, batch: int, port: int) -> tuple[float, float]:
    """(events/s, ms per step) of one timed window."""
    queue = mp.get_context("spawn").Queue()
    mp.start_processes(
        _rank, args=(world, port, mode, rows, batch, queue), nprocs=world, start_method="spawn"
    )
    took, steps = queue.get(timeout=60)
    return num_rows(rows) / took, 1000 * took / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="simulated searches (x10 rows)")
    parser.add_argument("--batch-size", type=int, default=1024, help="global new rows per step")
    args = parser.parse_args()
    rows = encode(Simulator(SimulatorConfig(seed=0)).generate(args.requests), FeatureConfig())
    print(f"{num_rows(rows):,} rows a window, global batch {args.batch_size} + replay\n")
    print("| ranks | " + " | ".join(MODES) + " |")
    print("|---|" + "---:|" * len(MODES))
    port = 29600
    for world in (1, 2):
        cells = []
        for mode in MODES:
            port += 1
            eps, ms = measure(world, mode, rows, args.batch_size, port)
            cells.append(f"{eps:,.0f} events/s ({ms:.1f} ms/step)")
        print(f"| {world} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
