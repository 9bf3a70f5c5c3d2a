"""Which rows of a shard a window trains on, and why each other row is left out.

The shard feed decides, once, for every row of a shard it reads: trained, or dropped for one
reason (:data:`DROP_REASONS`). It writes that decision down as a :class:`RowSelection` (a row
range of the file and a packed bit mask over it) and the trainer's read applies exactly that
selection, so the rows read for training are the rows the feed counted, and every row of the
file ends up in one count.

Reasons, in the order they are checked (a row gets the first that applies):

* ``missing_field``: a required field (``events.REQUIRED_FIELDS``) is null;
* ``out_of_time``: ``event_time`` later than the feed's clock plus the allowed skew, or older
  than the allowed age (see :class:`TimeBounds`);
* ``duplicate``: the event id was trained before (within the de-duplication horizon), or an
  earlier row of the same window has it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from freshrank.core.catalogue import ROW_DROP_REASONS

DROP_REASONS: tuple[str, ...] = ROW_DROP_REASONS
"""Why a row read from a shard is not trained on (the ``reason`` tag of
``freshrank_rows_dropped_total``)."""


@dataclass(frozen=True)
class TimeBounds:
    """The event times a window accepts, as unix seconds: ``not_before <= t <= not_after``
    (``None``: unbounded on that side).

    >>> TimeBounds.around(1000.0, max_future_skew_s=300.0, max_past_age_s=None)
    TimeBounds(not_before=None, not_after=1300.0)
    """

    not_before: float | None
    not_after: float | None

    @classmethod
    def around(
        cls, now: float, max_future_skew_s: float | None, max_past_age_s: float | None
    ) -> TimeBounds:
        """Bounds around the clock reading ``now``."""
        return cls(
            None if max_past_age_s is None else now - max_past_age_s,
            None if max_future_skew_s is None else now + max_future_skew_s,
        )

    def mask(self, table: pa.Table) -> np.ndarray:
        """Rows of ``table`` whose ``event_time`` is inside the bounds (a null time is
        inside: it is a missing field, counted as such)."""
        inside = np.ones(table.num_rows, dtype=bool)
        if table.num_rows == 0 or (self.not_before is None and self.not_after is None):
            return inside
        micros = pc.fill_null(table.column("event_time").cast(pa.int64()), 0)
        t = np.asarray(micros.to_numpy(zero_copy_only=False), dtype=np.int64)
        if self.not_after is not None:
            inside &= t <= int(self.not_after * 1_000_000)
        if self.not_before is not None:
            inside &= t >= int(self.not_before * 1_000_000)
        return inside


@dataclass(frozen=True)
class RowSelection:
    """Rows ``[start, stop)`` of a shard file (``stop=None``: to the end), and of those the
    ones whose bit is set in ``keep`` (``numpy.packbits`` of a bool mask over the range;
    ``None``: every row of the range).

    >>> t = pa.table({"x": list(range(6))})
    >>> sel = RowSelection.from_mask(1, 5, np.array([True, False, True, True]))
    >>> sel.apply(t).column("x").to_pylist(), sel.rows
    ([1, 3, 4], 3)
    >>> RowSelection().apply(t).num_rows
    6
    """

    start: int = 0
    stop: int | None = None
    keep: bytes | None = None
    rows: int | None = None
    """Rows kept (``None`` when ``keep`` is None and ``stop`` is None: not known here)."""

    def __post_init__(self) -> None:
        if self.start < 0 or (self.stop is not None and self.stop < self.start):
            raise ValueError(f"row range [{self.start}, {self.stop}) is not a range")

    @classmethod
    def from_mask(cls, start: int, stop: int, mask: np.ndarray) -> RowSelection:
        """The selection of rows ``start + i`` for every ``mask[i]`` (``len(mask)`` must be
        ``stop - start``); a mask that keeps every row is stored as ``keep=None``."""
        mask = np.asarray(mask, dtype=bool)
        if len(mask) != stop - start:
            raise ValueError(f"mask has {len(mask)} rows for the range [{start}, {stop})")
        kept = int(mask.sum())
        keep = None if kept == len(mask) else np.packbits(mask).tobytes()
        return cls(start, stop, keep, kept)

    def mask(self, n: int) -> np.ndarray:
        """The bool mask over rows ``[start, stop)`` of a file of ``n`` rows."""
        stop = n if self.stop is None else self.stop
        if stop > n:
            raise ValueError(f"selection [{self.start}, {stop}) is past the file's {n} rows")
        if self.keep is None:
            return np.ones(stop - self.start, dtype=bool)
        bits = np.unpackbits(np.frombuffer(self.keep, dtype=np.uint8), count=stop - self.start)
        return bits.astype(bool)

    def apply(self, table: pa.Table) -> pa.Table:
        """The selected rows of ``table`` (a whole shard file, in file order)."""
        stop = table.num_rows if self.stop is None else self.stop
        mask = self.mask(table.num_rows)
        part = table.slice(self.start, stop - self.start)
        if self.keep is None:
            return part
        return part.filter(pa.array(mask))

    def subrange(self, first: int, last: int) -> RowSelection:
        """The selection of the kept rows ``first .. last-1`` of this one (counted among the
        kept rows only), as a selection of the same file: how one shard's rows are dealt to
        several workers.

        >>> sel = RowSelection.from_mask(0, 6, np.array([1, 0, 1, 1, 0, 1], dtype=bool))
        >>> sub = sel.subrange(1, 3)
        >>> (sub.start, sub.stop, sub.rows), sub.mask(6).tolist()
        ((2, 4, 2), [True, True])
        """
        if self.stop is None:
            raise ValueError("only a selection with a known stop can be split")
        mask = self.mask(self.stop)
        positions = np.flatnonzero(mask)
        if not 0 <= first <= last <= len(positions):
            raise ValueError(f"kept rows [{first}, {last}) outside 0..{len(positions)}")
        if first == last:
            return RowSelection(self.start, self.start, None, 0)
        lo, hi = int(positions[first]), int(positions[last - 1]) + 1
        return RowSelection.from_mask(self.start + lo, self.start + hi, mask[lo:hi])


def kept_counts(reasons: np.ndarray) -> dict[str, int]:
    """Rows per outcome of a reason code array (0 kept, ``i + 1`` = ``DROP_REASONS[i]``).

    >>> kept_counts(np.array([0, 0, 1, 3], dtype=np.int8))
    {'trained': 2, 'missing_field': 1, 'out_of_time': 0, 'duplicate': 1}
    """
    counts = np.bincount(np.asarray(reasons, dtype=np.int64), minlength=len(DROP_REASONS) + 1)
    out = {"trained": int(counts[0])}
    out.update({reason: int(counts[i + 1]) for i, reason in enumerate(DROP_REASONS)})
    return out
