"""Reading a window on a Ray Train worker: Ray Data's settings, a warm-up read, and which of
the window's shards each rank reads.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from freshrank.features.encode import FeatureConfig, candidates_table
from freshrank.features.reading import read_shards
from freshrank.learn.feed import ShardPlan
from freshrank.registry.store import Registry

__all__ = ["assign_shards", "configure_ray_data", "warm_up_reader"]


def configure_ray_data() -> None:
    """Ray Data settings for the trainer's small per-window reads (in each worker)."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    # Ray 2.60's parquet datasource V2 starts footer-reader actors on every execution
    # (9-13 s per small window measured here); V1 reads a small window in well under a second.
    ctx.use_datasource_v2 = False
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def warm_up_reader(features: FeatureConfig, registry: Registry, rank: int) -> None:
    """Run one tiny read so Ray Data's worker processes exist before the first real window.

    The first execution in a fresh worker pays for starting processes and importing torch
    (about 20 s measured on 2 cores); paying it here keeps it out of the first window's latency.
    """
    # One row (an empty file would plan no read task and start nothing); it has no event id,
    # so the read drops it like any row missing a required field. Written where the registry
    # lives, so the warm-up also checks that the workers can read from there.
    sink = pa.BufferOutputStream()
    pq.write_table(candidates_table("warmup", "warm up", [{"item_id": "w"}]), sink)
    name = f"_warmup/rank{rank}.parquet"
    registry.storage.write_atomic(name, sink.getvalue().to_pybytes())
    paths, filesystem = registry.storage.source([name])
    read_shards(paths, features, filesystem)


def assign_shards(shards: tuple[ShardPlan, ...], rank: int, world: int) -> list[str]:
    """Balance shards over ranks by rows (largest first onto the least loaded rank).

    >>> plans = tuple(ShardPlan(i, f"s{i}", 0.0, r, 0, None) for i, r in enumerate([5, 3, 3, 1]))
    >>> assign_shards(plans, 0, 2), assign_shards(plans, 1, 2)
    (['s0', 's3'], ['s1', 's2'])
    """
    load = [0] * world
    owner: dict[str, int] = {}
    for shard in sorted(shards, key=lambda s: (-s.rows_valid, s.seq)):
        r = min(range(world), key=lambda i: (load[i], i))
        owner[shard.path] = r
        load[r] += shard.rows_valid
    return [s.path for s in sorted(shards, key=lambda s: s.seq) if owner[s.path] == rank]
