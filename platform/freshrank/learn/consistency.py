"""Cross-rank consistency: every rank's model must be the same after every window.

The workers keep one model each and exchange gradients; if an exchange ever left the ranks'
weights (or buffers, or later their id maps) different, each would go on training its own model
and the version rank 0 publishes would be one of several. So after each window every rank
hashes its state (:func:`state_digest`), the digests and node ids are gathered, and rank 0
refuses to publish when they differ (:func:`check_ranks`), and records them in the version's
manifest otherwise (``rank_digests``, ``rank_nodes``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["RankState", "check_ranks", "rank_state", "ray_node_id", "state_digest"]


def state_digest(module: torch.nn.Module, extra: Mapping[str, np.ndarray] | None = None) -> str:
    """SHA-256 (hex) over every parameter and buffer of ``module`` in name order (name, dtype,
    shape and the bytes of the CPU tensor each), then over the ``extra`` arrays in key order
    (e.g. id maps). Equal states give equal digests on any rank and process.

    >>> a, b = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    >>> _ = b.load_state_dict(a.state_dict())
    >>> state_digest(a) == state_digest(b)
    True
    >>> with torch.no_grad():
    ...     _ = b.bias.add_(1.0)
    >>> state_digest(a) == state_digest(b)
    False
    """
    h = hashlib.sha256()
    tensors: dict[str, torch.Tensor] = dict(module.named_parameters())
    tensors.update(module.named_buffers())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        _update(h, "tensor", name, str(t.dtype), tuple(t.shape))
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    for key in sorted(extra or {}):
        arr = np.ascontiguousarray((extra or {})[key])
        if arr.dtype.hasobject:
            raise ValueError(f"extra array {key!r} holds Python objects; digest numbers only")
        _update(h, "extra", key, arr.dtype.str, arr.shape)
        h.update(arr.tobytes())
    return h.hexdigest()


def _update(h: hashlib._Hash, kind: str, name: str, dtype: str, shape: tuple[int, ...]) -> None:
    """A length-prefixed header, so no two different states can share a byte stream."""
    header = f"{kind}\0{name}\0{dtype}\0{','.join(map(str, shape))}".encode()
    h.update(len(header).to_bytes(8, "little"))
    h.update(header)


@dataclass(frozen=True)
class RankState:
    """What one rank reports after a window: its state's digest and the Ray node it runs on."""

    digest: str
    node_id: str | None
    """The Ray node id (None outside Ray)."""


def rank_state(
    module: torch.nn.Module,
    extra: Mapping[str, np.ndarray] | None = None,
    node_id: str | None = None,
) -> RankState:
    """This rank's :class:`RankState`: its digest, and the node it runs on as the caller
    names it (the trainer passes :func:`ray_node_id`)."""
    return RankState(state_digest(module, extra), node_id)


def ray_node_id() -> str | None:
    """The Ray node this process runs on, or None outside Ray."""
    try:
        import ray
    except ImportError:
        return None
    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def check_ranks(states: Sequence[RankState], window: int) -> dict[str, list[str | None]]:
    """The manifest fields for every rank's state (``rank_digests``, ``rank_nodes``, in rank
    order); RuntimeError when the digests differ, naming which ranks hold which.

    >>> same = [RankState("ab", "n1"), RankState("ab", "n2")]
    >>> check_ranks(same, 3)
    {'rank_digests': ['ab', 'ab'], 'rank_nodes': ['n1', 'n2']}
    >>> check_ranks([RankState("ab", "n1"), RankState("cd", "n2")], 3)
    Traceback (most recent call last):
    ...
    RuntimeError: ranks diverged after window 3: rank 0 (node n1) ab, rank 1 (node n2) cd
    """
    digests = [s.digest for s in states]
    if len(set(digests)) > 1:
        ranks = ", ".join(
            f"rank {r} (node {s.node_id}) {s.digest[:16]}" for r, s in enumerate(states)
        )
        raise RuntimeError(f"ranks diverged after window {window}: {ranks}")
    return {"rank_digests": digests, "rank_nodes": [s.node_id for s in states]}
