"""The trainer's memory of recently trained event ids, for de-duplication.

The promise (``docs/operating.md``, "What happens to bad rows"): an event id is trained at
most once while it is within the horizon, the last ``capacity`` event ids trained; older ones
are forgotten first. The ids are kept as 64-bit stable hashes (8 bytes an id; a false
duplicate needs a 64-bit collision, about 1 in 10^8 per window for a horizon of a million ids)
and saved with every version (:data:`SEEN_EVENTS_FILE`), so a restarted trainer resumes with
the memory of the version it resumes from.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from freshrank.features.hashing import stable_hash64
from freshrank.registry.store import Registry, VersionInfo

SEEN_EVENTS_FILE = "seen_events.npz"
"""The file of a version that holds the de-duplication memory after its window."""

_SALT = "event_id"


def event_id_hashes(table: pa.Table) -> np.ndarray:
    """The stable 64-bit hash of every row's ``event_id`` (0 for a null id).

    >>> t = pa.table({"event_id": ["a", None, "a"]})
    >>> h = event_id_hashes(t)
    >>> str(h.dtype), bool(h[0] == h[2] != 0), int(h[1])
    ('uint64', True, 0)
    """
    ids = table.column("event_id").to_pylist()
    return np.fromiter(
        (0 if i is None else stable_hash64(i, _SALT) for i in ids), np.uint64, len(ids)
    )


class SeenEvents:
    """A bounded first-in first-out set of event id hashes.

    >>> seen = SeenEvents(capacity=3)
    >>> seen.add(np.array([1, 2, 3], dtype=np.uint64))
    >>> seen.contains(np.array([1, 4], dtype=np.uint64)).tolist()
    [True, False]
    >>> seen.add(np.array([4], dtype=np.uint64))  # 1 is forgotten first
    >>> seen.contains(np.array([1, 4], dtype=np.uint64)).tolist(), len(seen)
    ([False, True], 3)
    """

    def __init__(self, capacity: int, order: np.ndarray | None = None) -> None:
        if capacity < 0:
            raise ValueError(f"dedup capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        ids = np.zeros(0, np.uint64) if order is None else np.asarray(order, np.uint64)
        self._order = ids[len(ids) - capacity :] if capacity else ids[:0]
        self._sorted = np.sort(self._order)

    def __len__(self) -> int:
        return len(self._order)

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        """Which of ``hashes`` are remembered."""
        hashes = np.asarray(hashes, np.uint64)
        if not len(self._sorted) or not len(hashes):
            return np.zeros(len(hashes), dtype=bool)
        at = np.searchsorted(self._sorted, hashes)
        at[at == len(self._sorted)] = 0
        return self._sorted[at] == hashes

    def add(self, hashes: np.ndarray) -> None:
        """Remember ``hashes`` (newest last), forgetting the oldest beyond the capacity."""
        if not self.capacity:
            return
        order = np.concatenate([self._order, np.asarray(hashes, np.uint64)])
        self._order = order[max(0, len(order) - self.capacity) :]
        self._sorted = np.sort(self._order)

    def with_added(self, hashes: np.ndarray) -> SeenEvents:
        """A copy that also remembers ``hashes`` (this one unchanged)."""
        copy = SeenEvents(self.capacity, self._order)
        copy.add(hashes)
        return copy

    def state_dict(self) -> dict[str, np.ndarray]:
        """Numpy arrays for ``npz_bytes`` (no pickle)."""
        return {"order": self._order, "capacity": np.asarray(self.capacity, np.int64)}

    @classmethod
    def from_registry(
        cls, registry: Registry, info: VersionInfo | None, capacity: int
    ) -> SeenEvents:
        """The memory saved with version ``info`` (empty on a first run, or for a version
        written before de-duplication existed), resized to ``capacity``."""
        if info is None or SEEN_EVENTS_FILE not in info.manifest.get("files", {}):
            return cls(capacity)
        return cls(capacity, registry.load_npz(info, SEEN_EVENTS_FILE)["order"])
