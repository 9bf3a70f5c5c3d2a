"""Replay buffers beyond the uniform reservoir: the interface they share and a click-balanced one.

Every buffer holds encoded rows (the dict of numpy arrays ``features.encode`` returns) and offers
``add`` / ``sample`` / ``rows`` / ``state_dict`` / ``load_state_dict`` / ``__len__`` / ``seen``.
States are numpy-only (``np.savez`` + ``np.load(allow_pickle=False)``), and every buffer keeps its
rows under ``rows/<key>`` so that the trainer's per-rank re-split of a saved buffer works for all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import numpy as np

from freshrank.core.serialization import restore_rng_state, rng_state_array
from freshrank.learn.replay import ReservoirBuffer

__all__ = ["ClickBalancedBuffer", "ReplayBuffer", "ReservoirBuffer"]


@runtime_checkable
class ReplayBuffer(Protocol):
    """What a replay strategy needs from a buffer."""

    seen: int

    def __len__(self) -> int: ...

    def add(self, rows: Mapping[str, np.ndarray]) -> None:
        """Offer rows to the buffer; inputs are not modified."""
        ...

    def sample(self, n: int) -> dict[str, np.ndarray]:
        """``n`` rows (empty dict when nothing is held or ``n <= 0``)."""
        ...

    def rows(self) -> dict[str, np.ndarray]:
        """A copy of the rows held."""
        ...

    def state_dict(self) -> dict[str, np.ndarray]:
        """Everything needed to continue identically, as numpy arrays."""
        ...

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore from :meth:`state_dict` output."""
        ...


class ClickBalancedBuffer:
    """Clicked and unclicked rows in separate reservoirs, sampled in a fixed ratio.

    Clicks are rare (a few percent of impressions), so a uniform reservoir replays mostly
    negatives. Here ``round(capacity * positive_fraction)`` slots hold a uniform sample of every
    clicked row seen and the rest a uniform sample of every unclicked row; :meth:`sample` draws
    ``round(n * positive_fraction)`` positives and the rest negatives (all from one class when the
    other is empty), shuffled. A row is a click when its ``label`` is > 0.5.

    >>> buf = ClickBalancedBuffer(capacity=4, positive_fraction=0.5, seed=0)
    >>> buf.add({"label": np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 1], dtype=np.float32)})
    >>> len(buf), buf.seen, int(buf.rows()["label"].sum())
    (4, 10, 2)
    >>> float(buf.sample(6)["label"].mean())
    0.5
    """

    def __init__(self, capacity: int, positive_fraction: float = 0.5, seed: int = 0) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        if not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
        self.capacity = int(capacity)
        self.positive_fraction = float(positive_fraction)
        pos_capacity = int(round(self.capacity * self.positive_fraction))
        seeds = np.random.SeedSequence(seed).spawn(3)
        self._pos = ReservoirBuffer(pos_capacity, seed=int(seeds[0].generate_state(1)[0]))
        self._neg = ReservoirBuffer(
            self.capacity - pos_capacity, seed=int(seeds[1].generate_state(1)[0])
        )
        self._rng = np.random.default_rng(seeds[2])

    @property
    def seen(self) -> int:
        """Rows offered so far (both classes)."""
        return self._pos.seen + self._neg.seen

    def __len__(self) -> int:
        return len(self._pos) + len(self._neg)

    def add(self, rows: Mapping[str, np.ndarray]) -> None:
        """Offer every row to its class's reservoir. Inputs are not modified."""
        if not rows:
            return
        if "label" not in rows:
            raise ValueError("ClickBalancedBuffer needs a 'label' array to tell clicks apart")
        clicked = np.asarray(rows["label"]) > 0.5
        if clicked.all() or not clicked.any():
            (self._pos if clicked.all() and len(clicked) else self._neg).add(rows)
            return
        self._pos.add({k: v[clicked] for k, v in rows.items()})
        self._neg.add({k: v[~clicked] for k, v in rows.items()})

    def sample(self, n: int) -> dict[str, np.ndarray]:
        """``n`` rows with replacement, ``positive_fraction`` of them clicks (when available)."""
        if n <= 0 or len(self) == 0:
            return {}
        n_pos = int(round(n * self.positive_fraction))
        if len(self._pos) == 0:
            n_pos = 0
        elif len(self._neg) == 0:
            n_pos = n
        parts = [p for p in (self._pos.sample(n_pos), self._neg.sample(n - n_pos)) if p]
        merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        order = self._rng.permutation(n)
        return {k: v[order] for k, v in merged.items()}

    def rows(self) -> dict[str, np.ndarray]:
        """A copy of the rows held: the clicks first, then the non-clicks."""
        parts = [p for p in (self._pos.rows(), self._neg.rows()) if p]
        if not parts:
            return {}
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def state_dict(self) -> dict[str, np.ndarray]:
        """Rows under ``rows/`` (clicks first), per-class counters and RNG states (numpy only)."""
        state = {f"rows/{k}": v for k, v in self.rows().items()}
        state["meta/capacity"] = np.array(self.capacity, dtype=np.int64)
        state["meta/positive_fraction"] = np.array(self.positive_fraction, dtype=np.float64)
        state["meta/seen"] = np.array(self.seen, dtype=np.int64)
        for name, part in (("pos", self._pos), ("neg", self._neg)):
            sub = part.state_dict()
            state[f"meta/{name}_seen"] = sub["meta/seen"]
            state[f"meta/{name}_rng"] = sub["meta/rng"]
        state["meta/rng"] = rng_state_array(self._rng)
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore from :meth:`state_dict` (or any state with ``rows/`` keys, e.g. a reservoir's).

        Rows are split by label again, so a state re-split across ranks or saved by a
        :class:`ReservoirBuffer` loads too; per-class counters default to the rows held.
        """
        rows = {k[len("rows/") :]: np.asarray(v) for k, v in state.items() if k.startswith("rows/")}
        clicked = np.asarray(rows["label"]) > 0.5 if "label" in rows else np.zeros(0, dtype=bool)
        for name, part, mask in (("pos", self._pos, clicked), ("neg", self._neg, ~clicked)):
            sub: dict[str, np.ndarray] = {}
            if rows and mask.any():
                sub = {f"rows/{k}": v[mask] for k, v in rows.items()}
            sub["meta/seen"] = np.asarray(state.get(f"meta/{name}_seen", int(mask.sum())))
            if f"meta/{name}_rng" in state:
                sub["meta/rng"] = np.asarray(state[f"meta/{name}_rng"])
            part.load_state_dict(sub)
        if "meta/rng" in state:
            restore_rng_state(self._rng, state["meta/rng"])
