"""Strategy states on disk and across world sizes: split into arrays and tensors, and re-deal
replay rows when the trainer restarts with a different number of workers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from torch import Tensor

from freshrank.features.encode import concat_inputs, slice_inputs
from freshrank.learn.strategies.base import to_numpy

__all__ = ["partition_state", "reshard_state"]


def partition_state(state: Mapping[str, np.ndarray | Tensor]) -> tuple[dict, dict]:
    """Split a strategy state into ``(numpy arrays, tensors)``: save the first with ``np.savez``
    and the second with ``torch.save`` (loaded with ``weights_only=True``).

    >>> arrays, tensors = partition_state({"a": np.zeros(2), "b": Tensor([0.0, 0.0])})
    >>> sorted(arrays), sorted(tensors)
    (['a'], ['b'])
    """
    arrays = {k: np.asarray(v) for k, v in state.items() if not isinstance(v, Tensor)}
    tensors = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    return arrays, tensors


def reshard_state(
    parts: Sequence[Mapping[str, np.ndarray | Tensor]], rank: int, world: int
) -> dict[str, np.ndarray | Tensor]:
    """One rank's strategy state from the states every rank saved (``parts[r]`` from rank r).

    Same world size: ``parts[rank]``. Otherwise the replay rows (keys with a ``rows/`` segment)
    of all parts are pooled and dealt round-robin to the new ranks, and every other key comes
    from rank 0 (EWC and LwF state are the same kind of thing on every rank).

    >>> old = [{"rows/x": np.array([0, 2]), "meta/w": np.array(1)},
    ...        {"rows/x": np.array([1, 3]), "meta/w": np.array(1)}]
    >>> reshard_state(old, 0, 1)["rows/x"].tolist()
    [0, 2, 1, 3]
    """
    if not parts:
        return {}
    if len(parts) == world and 0 <= rank < world:
        return dict(parts[rank])
    out: dict[str, np.ndarray | Tensor] = {}
    for key, value in parts[0].items():
        if "rows/" not in key:
            out[key] = value
    row_keys = sorted({k for p in parts for k in p if "rows/" in k})
    groups: dict[str, list[str]] = {}
    for key in row_keys:  # rows of one buffer share the prefix before "rows/"
        groups.setdefault(key[: key.index("rows/")], []).append(key)
    for keys in groups.values():
        held = [{k: to_numpy(p[k]) for k in keys} for p in parts if all(k in p for k in keys)]
        if not held:
            continue
        pooled = concat_inputs(held)
        mine = slice_inputs(pooled, slice(rank, None, world))
        out.update(mine)
    return out
