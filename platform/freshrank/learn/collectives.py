"""The trainer's collectives over ``torch.distributed``: no-ops in a single process.

Every rank must call each of them in the same order (they are collectives); objects go through
``broadcast_object_list`` / ``all_gather_object`` (pickled by torch, between this job's own
workers), floats through an all-reduce of a float64 tensor on the worker's device.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

__all__ = ["all_gather", "all_reduce_sum", "broadcast", "rank_world"]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_world() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` outside a process group.

    >>> rank_world()
    (0, 1)
    """
    if _distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (what other ranks pass is ignored).

    >>> broadcast({"window": 3})
    {'window': 3}
    """
    if not _distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order.

    >>> all_gather(5)
    [5]
    """
    if not _distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(value: float, device: torch.device) -> float:
    """The sum of ``value`` over every rank.

    >>> all_reduce_sum(2, torch.device("cpu"))
    2.0
    """
    if not _distributed():
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())
