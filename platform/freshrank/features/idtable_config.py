"""What an id table (:mod:`freshrank.features.idtable`) is configured with and reports.

:class:`IdTableConfig` (validated, JSON-able for manifests), the :class:`TableStats` of a window,
the :class:`TableUpdate` of one ``observe``, and :class:`IdTableError`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

EVICTION_POLICIES: tuple[str, ...] = ("lfu", "lru")
"""``IdTableConfig.eviction``: least frequently or least recently seen goes first."""


class IdTableError(ValueError):
    """An id table's arguments or saved state are wrong (the message says which and why)."""


def _int_field(config: Any, name: str, low: int, optional: bool = False) -> None:
    value = getattr(config, name)
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        none = "None or " if optional else ""
        raise IdTableError(f"{name} must be {none}an int >= {low}, got {value!r}")
    object.__setattr__(config, name, int(value))  # a numpy int would not be JSON-able


@dataclass(frozen=True)
class IdTableConfig:
    """Size and policy of one id table (one per id feature; see :mod:`freshrank.features.idtable`).

    ``capacity`` rows for admitted ids; ``admit_after`` sightings before an id is admitted (1:
    at first sight); ``fallback_rows`` rows shared by the ids not admitted; ids unseen for
    ``expire_after_windows`` windows or ``expire_after_s`` seconds of event time are expired
    (``None``: never); ``eviction`` ("lfu" or "lru") picks who leaves a full table;
    ``max_admissions_per_window`` caps admissions in a window (free rows included);
    ``candidate_capacity`` bounds the not-yet-admitted ids counted (``None``: ``capacity``).

    >>> IdTableConfig(capacity=0)
    Traceback (most recent call last):
    ...
    freshrank.features.idtable_config.IdTableError: capacity must be an int >= 1, got 0
    >>> try:
    ...     IdTableConfig(capacity=10, eviction="fifo")
    ... except IdTableError as e:
    ...     print(e)
    eviction must be one of ('lfu', 'lru'), got 'fifo'
    >>> c = IdTableConfig(capacity=10, admit_after=2, expire_after_s=3600.0)
    >>> IdTableConfig.from_dict(c.to_dict()) == c, c.num_rows
    (True, 11)
    """

    capacity: int
    admit_after: int = 1
    fallback_rows: int = 1
    expire_after_windows: int | None = None
    expire_after_s: float | None = None
    eviction: str = "lfu"
    max_admissions_per_window: int | None = None
    candidate_capacity: int | None = None

    def __post_init__(self) -> None:
        for name in ("capacity", "admit_after", "fallback_rows"):
            _int_field(self, name, 1)
        for name in ("expire_after_windows", "max_admissions_per_window", "candidate_capacity"):
            _int_field(self, name, 1, optional=True)
        s = self.expire_after_s
        if s is not None:
            if isinstance(s, bool) or not isinstance(s, int | float | np.floating) or not s > 0:
                raise IdTableError(f"expire_after_s must be None or a number > 0, got {s!r}")
            if not math.isfinite(s):
                raise IdTableError(f"expire_after_s must be finite, got {s!r}")
            object.__setattr__(self, "expire_after_s", float(s))
        if self.eviction not in EVICTION_POLICIES:
            raise IdTableError(
                f"eviction must be one of {EVICTION_POLICIES}, got {self.eviction!r}"
            )

    @property
    def num_rows(self) -> int:
        """Rows of the embedding table this map indexes: ``fallback_rows + capacity``."""
        return self.fallback_rows + self.capacity

    @property
    def candidate_limit(self) -> int:
        """Most candidates counted at once (``candidate_capacity``, default ``capacity``)."""
        return self.capacity if self.candidate_capacity is None else self.candidate_capacity

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (stored in checkpoint manifests)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IdTableConfig:
        """Inverse of :meth:`to_dict`; unknown fields are refused by name."""
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise IdTableError(f"unknown IdTableConfig field(s): {', '.join(unknown)}")
        if "capacity" not in data:
            raise IdTableError("IdTableConfig needs capacity")
        return cls(**data)


@dataclass(frozen=True)
class TableStats:
    """One window of an id table, so far (``observe`` calls of the window add up).

    ``observed`` counts the non-missing key occurrences observed in the window, ``fallback`` those
    whose id had a fallback row once the observe that saw them was done (what training then looks
    up), ``hits`` those whose id already had a row of its own when it was observed (what a
    lookup before the window gave: serving's view).
    """

    window: int
    occupancy: int
    capacity: int
    candidates: int
    admissions: int
    evictions: int
    expiries: int
    observed: int
    fallback: int
    hits: int

    @property
    def fallback_rate(self) -> float:
        """Fraction of the observed occurrences that got a fallback row (0.0 if none)."""
        return self.fallback / self.observed if self.observed else 0.0

    @property
    def hit_rate(self) -> float:
        """Fraction of the observed occurrences whose id had its own row before (0.0 if none)."""
        return self.hits / self.observed if self.observed else 0.0

    @property
    def fill(self) -> float:
        """``occupancy / capacity``."""
        return self.occupancy / self.capacity


@dataclass(frozen=True)
class TableUpdate:
    """What one :meth:`IdTable.observe` changed (arrays are read-only).

    ``admitted_rows[i]`` is the row now owned by ``admitted_keys[i]``. ``recycled_rows`` (sorted)
    are the rows whose owner left in this call, evicted or expired, whether given to another id or
    now free: their embeddings and optimizer state must be reset. A row handed out for the first
    time is in ``admitted_rows`` only.
    """

    window: int
    admitted_keys: np.ndarray
    admitted_rows: np.ndarray
    evicted_keys: np.ndarray
    expired_keys: np.ndarray
    recycled_rows: np.ndarray
    stats: TableStats

    def __post_init__(self) -> None:
        for name in ("admitted_keys", "admitted_rows", "evicted_keys", "expired_keys"):
            getattr(self, name).setflags(write=False)
        self.recycled_rows.setflags(write=False)
