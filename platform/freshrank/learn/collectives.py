"""The trainer's collectives over ``torch.distributed``: no-ops in a single process.

Every rank must call each of them in the same order (they are collectives); objects go through
``broadcast_object_list`` / ``all_gather_object`` (pickled by torch, between this job's own
workers), floats and float arrays through an all-reduce of a float64 tensor on the worker's
device.
"""

from __future__ import annotations

from typing import Any

import numpy as np
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


def all_reduce_sum(value: float | np.ndarray, device: torch.device) -> float | np.ndarray:
    """The sum of ``value`` over every rank: a float, or elementwise for an array (float64).

    >>> all_reduce_sum(2, torch.device("cpu"))
    2.0
    >>> all_reduce_sum(np.array([1, 2]), torch.device("cpu"))
    array([1., 2.])
    """
    if isinstance(value, np.ndarray):
        if not _distributed():
            return value.astype(np.float64)
        t = torch.as_tensor(value, dtype=torch.float64).to(device)
        dist.all_reduce(t)
        return t.cpu().numpy()
    if not _distributed():
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())
