"""Reading a window on a Ray Train worker: Ray Data's settings, a warm-up read, and which of
the window's shards each rank reads.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from freshrank.events.selection import RowSelection
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


def assign_shards(
    shards: tuple[ShardPlan, ...], rank: int, world: int
) -> list[tuple[str, RowSelection]]:
    """The rows of a window that ``rank`` reads: ``(path, selection)`` per file.

    The window's rows to train, in shard order, are cut into ``world`` runs of equal length
    (within one row), so every rank trains as many rows as the others even when the window is
    one large shard; a shard on a boundary is read by both ranks, each taking its rows.

    >>> from freshrank.events.selection import RowSelection as S
    >>> plans = tuple(
    ...     ShardPlan(i, f"s{i}", 0.0, r, 0, None, selection=S(0, r))
    ...     for i, r in enumerate([5, 3], start=1)
    ... )
    >>> [(p, s.start, s.stop) for p, s in assign_shards(plans, 0, 2)]
    [('s1', 0, 4)]
    >>> [(p, s.start, s.stop) for p, s in assign_shards(plans, 1, 2)]
    [('s1', 4, 5), ('s2', 0, 3)]
    """
    total = sum(s.rows_valid for s in shards)
    lo, hi = rank * total // world, (rank + 1) * total // world
    out: list[tuple[str, RowSelection]] = []
    at = 0
    for shard in sorted(shards, key=lambda s: (s.seq, s.selection.start)):
        first, last = max(lo, at) - at, min(hi, at + shard.rows_valid) - at
        if first < last:
            out.append((shard.path, _known_stop(shard).subrange(first, last)))
        at += shard.rows_valid
    return out


def _known_stop(shard: ShardPlan) -> RowSelection:
    """The plan's selection with its stop filled in (a plan made by hand may leave it None:
    every row of the file, all of them kept)."""
    sel = shard.selection
    if sel.stop is not None:
        return sel
    return RowSelection(sel.start, sel.start + shard.rows_valid, None, shard.rows_valid)
