"""Replay buffers over encoded rows (the dict of arrays ``features.encode`` returns)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from freshrank.core.serialization import restore_rng_state, rng_state_array


class ReservoirBuffer:
    """A uniform sample of every row ever added, at most ``capacity`` rows (Vitter's Algorithm R).

    Adding is vectorised; the buffer keeps its own random generator so that the same seed and
    the same stream give the same buffer. ``state_dict()`` holds only numpy arrays, so it saves
    with ``np.savez`` and loads without pickle.

    >>> buf = ReservoirBuffer(capacity=3, seed=0)
    >>> buf.add({"label": np.arange(10, dtype=np.float32)})
    >>> len(buf), buf.seen
    (3, 10)
    """

    def __init__(self, capacity: int, seed: int = 0) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = int(capacity)
        self.seen = 0
        self._rng = np.random.default_rng(seed)
        self._data: dict[str, np.ndarray] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, rows: Mapping[str, np.ndarray]) -> None:
        """Offer every row of ``rows`` to the reservoir. Inputs are not modified."""
        if not rows:
            return
        n = len(next(iter(rows.values())))
        if n == 0 or self.capacity == 0:
            self.seen += n
            return
        if not self._data:
            self._data = {
                k: np.zeros((self.capacity, *v.shape[1:]), dtype=v.dtype) for k, v in rows.items()
            }
        # Fill free slots first, in order.
        take = min(self.capacity - self._size, n)
        if take:
            for k, v in rows.items():
                self._data[k][self._size : self._size + take] = v[:take]
            self._size += take
        # Then each later row i (global index t) replaces a random slot with prob capacity/(t+1).
        rest = np.arange(take, n)
        if len(rest):
            t = self.seen + rest
            slots = (self._rng.random(len(rest)) * (t + 1)).astype(np.int64)
            accept = slots < self.capacity
            src, dst = rest[accept], slots[accept]
            # Later rows win when two land on the same slot, as in the sequential algorithm.
            for k, v in rows.items():
                self._data[k][dst] = v[src]
        self.seen += n

    def sample(self, n: int) -> dict[str, np.ndarray]:
        """``n`` rows drawn uniformly with replacement (empty dict when the buffer is empty)."""
        if self._size == 0 or n <= 0:
            return {}
        idx = self._rng.integers(0, self._size, size=n)
        return {k: v[idx] for k, v in self._data.items()}

    def rows(self) -> dict[str, np.ndarray]:
        """A copy of the rows currently held."""
        return {k: v[: self._size].copy() for k, v in self._data.items()}

    def state_dict(self) -> dict[str, np.ndarray]:
        """Rows plus counters and RNG state, all as numpy arrays (no pickle needed)."""
        state = {f"rows/{k}": v[: self._size] for k, v in self._data.items()}
        state["meta/capacity"] = np.array(self.capacity, dtype=np.int64)
        state["meta/seen"] = np.array(self.seen, dtype=np.int64)
        state["meta/rng"] = rng_state_array(self._rng)
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore from :meth:`state_dict` output (capacity may differ: rows beyond it drop)."""
        rows = {k[len("rows/") :]: np.asarray(v) for k, v in state.items() if k.startswith("rows/")}
        self._data, self._size = {}, 0
        self.seen = 0
        if rows and len(next(iter(rows.values()))):
            n = min(len(next(iter(rows.values()))), self.capacity)
            self._data = {
                k: np.zeros((self.capacity, *v.shape[1:]), dtype=v.dtype) for k, v in rows.items()
            }
            for k, v in rows.items():
                self._data[k][:n] = v[:n]
            self._size = n
        self.seen = int(state.get("meta/seen", np.array(self._size)))
        if "meta/rng" in state:
            restore_rng_state(self._rng, state["meta/rng"])
