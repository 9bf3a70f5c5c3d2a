"""Training throughput: the long-lived 2-worker Ray trainer against a plain in-process PyTorch loop.

Run: ``python bench/bench_training.py [--shards N] [--shard-events K]``. Both train the same
model, batch size and replay mix, one pass over the same pre-landed shards. Reported:

* wall events/s: every event divided by the whole run, start-up included;
* steady events/s: events divided by the per-window read + evaluate + train time (what a
  long-lived trainer pays per window once it is up; for ours read from the version manifests).

The baseline is what a single process does with the same encoder and model, no Ray, no DDP.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from freshrank.events.landing import LandingZone
from freshrank.events.produce import ProducerConfig, run_producer
from freshrank.events.schema import drop_invalid_rows
from freshrank.features.encode import concat_inputs, encode, num_rows, slice_inputs
from freshrank.learn.config import TrainConfig
from freshrank.learn.replay import ReservoirBuffer
from freshrank.learn.train import run_training
from freshrank.model.device import to_tensors
from freshrank.model.ranker import Ranker
from freshrank.ops.runtime import init_ray
from freshrank.registry.store import Registry


def baseline(landing: Path, config: TrainConfig) -> tuple[int, float, float]:
    """Plain loop: pyarrow read -> encode -> train, one process. Returns events, wall, steady."""
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = Ranker(config.model)
    opt = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    buffer = ReservoirBuffer(config.replay_capacity, seed=0)
    rng = np.random.default_rng(0)
    zone = LandingZone(landing)
    events, steady = 0, 0.0
    refs = zone.list_shards()
    for i in range(0, len(refs), config.max_shards_per_window):
        w0 = time.perf_counter()
        parts = []
        for ref in refs[i : i + config.max_shards_per_window]:
            table, _ = drop_invalid_rows(zone.read_shard(ref).table)
            parts.append(encode(table, config.model.features))
        rows = concat_inputs(parts)
        order = rng.permutation(num_rows(rows))
        bs = config.batch_size * config.num_workers  # same global batch as ours
        for s in range(0, len(order), bs):
            new = slice_inputs(rows, order[s : s + bs])
            k = int(round(num_rows(new) * config.replay_ratio)) if len(buffer) else 0
            batch = concat_inputs([new, buffer.sample(k)]) if k else new
            x = to_tensors(batch, torch.device("cpu"))
            loss = F.binary_cross_entropy_with_logits(model(x), x["label"])
            opt.zero_grad()
            loss.backward()
            opt.step()
        buffer.add(rows)
        events += num_rows(rows)
        steady += time.perf_counter() - w0
    return events, time.perf_counter() - t0, steady


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=40)
    parser.add_argument("--shard-events", type=int, default=5000)
    parser.add_argument("--shards-per-window", type=int, default=4)
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
        )
        b_events, b_wall, b_steady = baseline(landing, config)

        init_ray(dashboard_port=None)
        t0 = time.perf_counter()
        summary = run_training(config)
        wall = time.perf_counter() - t0
        reg = Registry(config.registry)
        timings = [reg.get(v).manifest["timings"] for v in summary.versions]
        steady = sum(t["read_s"] + t["eval_s"] + t["train_s"] for t in timings)
        read = sum(t["read_s"] for t in timings)
        events = summary.events_trained
        assert events == b_events, (events, b_events)

        rows = [
            ("events", f"{events:,}", f"{b_events:,}", ""),
            ("windows", f"{len(timings)}", f"{len(timings)}", ""),
            ("wall s (incl. start-up)", f"{wall:.1f}", f"{b_wall:.1f}", f"{wall / b_wall:.2f}"),
            (
                "wall events/s",
                f"{events / wall:,.0f}",
                f"{b_events / b_wall:,.0f}",
                f"{(events / wall) / (b_events / b_wall):.2f}",
            ),
            (
                "steady events/s",
                f"{events / steady:,.0f}",
                f"{b_events / b_steady:,.0f}",
                f"{(events / steady) / (b_events / b_steady):.2f}",
            ),
            ("read s per window", f"{read / len(timings):.2f}", "", ""),
        ]
        print(f"\n{'':26s} {'freshrank (Ray, 2 workers)':>28s} {'plain loop':>12s} {'ratio':>7s}")
        for name, ours, base, ratio in rows:
            print(f"{name:26s} {ours:>28s} {base:>12s} {ratio:>7s}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
