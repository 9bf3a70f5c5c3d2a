"""The shard feed: discovers newly landed shards after a cursor, validates them and plans windows.

Shards are taken in sequence order. A shard that cannot be used is quarantined (with its reason)
and the cursor moves past it. Every row of a usable shard gets one outcome here, once
(``events.selection``): trained, or dropped as ``missing_field``, ``out_of_time`` or
``duplicate``; the window carries that decision as a :class:`RowSelection` per shard, and the
trainer's read applies exactly it, so the rows trained are the rows counted.

A window holds at most ``max_shards`` shards and, when ``max_rows`` is set, at most that many
rows to train: a shard that would take it past the bound is split by row range, its first
rows in this window and the rest in the next ones. The cursor is then ``(seq, offset)``: every
shard up to ``seq`` is done, and the first ``offset`` rows of shard ``seq + 1`` are too (the
manifest's ``cursor`` and ``cursor_offset``), so a restart resumes inside the shard and no row
is trained twice or skipped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from freshrank.events.landing import InvalidShard, LandingZone, ShardRef
from freshrank.events.schema import valid_row_mask
from freshrank.events.selection import DROP_REASONS, RowSelection, TimeBounds, kept_counts
from freshrank.learn.dedup import SeenEvents, event_id_hashes

_MISSING, _OUT_OF_TIME, _DUPLICATE = (1 + DROP_REASONS.index(r) for r in DROP_REASONS)


@dataclass(frozen=True)
class ShardPlan:
    """One valid shard (or row range of one) in a window, with every row's outcome counted."""

    seq: int
    path: str
    landed_at: float
    rows_valid: int
    """Rows to train (every check passed)."""
    rows_dropped: int
    """Rows dropped for a missing required field."""
    max_event_time: float | None
    """Latest event time of the rows to train (unix seconds), None when there are none."""
    rows_out_of_time: int = 0
    rows_duplicate: int = 0
    selection: RowSelection = RowSelection()
    """Which rows of the file the trainer reads (the ``rows_valid`` ones)."""
    final: bool = True
    """Whether this plan ends its shard (False: the shard goes on in the next window)."""

    @property
    def rows_read(self) -> int:
        """Rows of the file this plan covers, whatever their outcome."""
        return self.rows_valid + self.rows_dropped + self.rows_out_of_time + self.rows_duplicate


@dataclass(frozen=True)
class Window:
    """The shards to train on next, and what the cursor becomes once they are trained."""

    shards: tuple[ShardPlan, ...]
    quarantined: tuple[tuple[int, str], ...]
    cursor: int
    planned_at: float = field(default_factory=time.time)
    cursor_offset: int = 0
    """Rows of shard ``cursor + 1`` done once this window is (0: none)."""

    @property
    def rows_valid(self) -> int:
        """Rows to train across the window's shards."""
        return sum(s.rows_valid for s in self.shards)

    @property
    def rows_dropped(self) -> int:
        """Rows dropped for a missing required field."""
        return sum(s.rows_dropped for s in self.shards)

    @property
    def rows_out_of_time(self) -> int:
        """Rows dropped because their event time is beyond the allowed skew or age."""
        return sum(s.rows_out_of_time for s in self.shards)

    @property
    def rows_duplicate(self) -> int:
        """Rows dropped because their event id was trained before (or earlier in the window)."""
        return sum(s.rows_duplicate for s in self.shards)

    @property
    def rows_read(self) -> int:
        """Rows of the valid shards this window covers, whatever their outcome."""
        return sum(s.rows_read for s in self.shards)

    @property
    def max_event_time(self) -> float | None:
        """Latest event time of the rows to train (unix seconds), None when there are none."""
        times = [s.max_event_time for s in self.shards if s.max_event_time is not None]
        return max(times) if times else None

    def row_counts(self) -> dict[str, int]:
        """Every row read, by outcome: ``rows_read`` = trained + the dropped ones.

        >>> Window((ShardPlan(1, "p", 0.0, 5, 1, None, 2, 3),), (), 1).row_counts()
        {'rows_read': 11, 'trained': 5, 'missing_field': 1, 'out_of_time': 2, 'duplicate': 3}
        """
        return {
            "rows_read": self.rows_read,
            "trained": self.rows_valid,
            "missing_field": self.rows_dropped,
            "out_of_time": self.rows_out_of_time,
            "duplicate": self.rows_duplicate,
        }


class ShardFeed:
    """Plans windows of at most ``max_shards`` shards and ``max_rows`` rows to train (None: no
    row bound), in sequence order, after ``(cursor, cursor_offset)``.

    ``gap_timeout_s`` is how long a missing sequence number is waited for (a writer that took a
    number but has not published yet) before the feed skips it. Rows whose event time is later
    than ``clock() + max_future_skew_s``, or older than ``clock() - max_past_age_s``, are out
    of time (None: no bound on that side). ``seen`` remembers the event ids already trained
    (``SeenEvents(0)`` turns de-duplication off); the default remembers 200,000.
    """

    def __init__(
        self,
        landing: LandingZone,
        cursor: int = 0,
        max_shards: int = 8,
        gap_timeout_s: float = 10.0,
        *,
        cursor_offset: int = 0,
        max_rows: int | None = None,
        max_future_skew_s: float | None = 300.0,
        max_past_age_s: float | None = None,
        seen: SeenEvents | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_shards < 1:
            raise ValueError(f"max_shards must be >= 1, got {max_shards}")
        if max_rows is not None and max_rows < 1:
            raise ValueError(f"max_rows must be >= 1 or None, got {max_rows}")
        if cursor_offset < 0:
            raise ValueError(f"cursor_offset must be >= 0, got {cursor_offset}")
        self.landing = landing
        self.cursor = cursor
        self.cursor_offset = cursor_offset
        self.max_shards = max_shards
        self.max_rows = max_rows
        self.gap_timeout_s = gap_timeout_s
        self.max_future_skew_s = max_future_skew_s
        self.max_past_age_s = max_past_age_s
        self.seen = seen if seen is not None else SeenEvents(200_000)
        self._clock = clock
        self._gap_since: float | None = None
        self._cache: tuple[int, pa.Table, np.ndarray] | None = None
        self._planned: dict[tuple, np.ndarray] = {}

    def poll(self) -> Window | None:
        """The next window, or None when no new shard is ready yet."""
        refs = self._ready(self.landing.list_shards(after=self.cursor))
        if not refs:
            return None
        bounds = TimeBounds.around(self._clock(), self.max_future_skew_s, self.max_past_age_s)
        plans: list[ShardPlan] = []
        quarantined: list[tuple[int, str]] = []
        kept_ids: list[np.ndarray] = []
        cursor, offset = self.cursor, self.cursor_offset
        budget = self.max_rows
        for ref in refs[: self.max_shards]:
            if budget is not None and budget <= 0:
                break
            start = self.cursor_offset if ref.seq == self.cursor + 1 else 0
            try:
                table, hashes = self._read(ref)
            except InvalidShard as exc:
                self.landing.quarantine(ref, exc.reason)
                quarantined.append((ref.seq, exc.reason))
                cursor, offset = ref.seq, 0
                continue
            earlier = np.concatenate(kept_ids) if kept_ids else hashes[:0]
            part = table.slice(start)
            reasons = self._outcomes(part, hashes[start:], bounds, earlier)
            keep = reasons == 0
            stop = table.num_rows
            if budget is not None and int(keep.sum()) > budget:
                cut = int(np.flatnonzero(keep)[budget - 1]) + 1
                stop, reasons, keep, part = (
                    start + cut,
                    reasons[:cut],
                    keep[:cut],
                    part.slice(0, cut),
                )
            plans.append(_plan(ref, start, stop, stop == table.num_rows, part, reasons))
            kept_ids.append(hashes[start:stop][keep])
            if stop < table.num_rows:
                cursor, offset = ref.seq - 1, stop
                break
            cursor, offset = ref.seq, 0
            if budget is not None:
                budget -= int(keep.sum())
        window = Window(tuple(plans), tuple(quarantined), cursor, cursor_offset=offset)
        ids = np.concatenate(kept_ids) if kept_ids else np.zeros(0, np.uint64)
        self._planned = {_key(window): ids}  # only the latest plan can be committed next
        return window

    def seen_after(self, window: Window) -> SeenEvents:
        """The de-duplication memory once ``window`` is trained (``seen`` is unchanged)."""
        ids = self._planned.get(_key(window))
        if ids is None:  # a window this feed did not plan last: read its rows' ids again
            ids = np.concatenate(
                [np.zeros(0, np.uint64)]
                + [self._kept_hashes(p) for p in window.shards if p.rows_valid]
            )
        return self.seen.with_added(ids)

    def commit(self, window: Window) -> None:
        """Move the cursor past ``window`` and remember its event ids (call once it is
        checkpointed)."""
        if (window.cursor, window.cursor_offset) <= (self.cursor, self.cursor_offset):
            return
        self.seen = self.seen_after(window)
        self.cursor, self.cursor_offset = window.cursor, window.cursor_offset
        self._planned.clear()
        if self._cache is not None and self._cache[0] <= self.cursor:
            self._cache = None

    def _read(self, ref: ShardRef) -> tuple[pa.Table, np.ndarray]:
        """Every row of the shard and its event id hashes (the shard being split is kept)."""
        if self._cache is not None and self._cache[0] == ref.seq:
            return self._cache[1], self._cache[2]
        table = self.landing.read_events(ref)
        hashes = event_id_hashes(table)
        self._cache = (ref.seq, table, hashes)
        return table, hashes

    def _kept_hashes(self, plan: ShardPlan) -> np.ndarray:
        ref = ShardRef(plan.seq, plan.path, plan.landed_at, 0)
        table, hashes = self._read(ref)
        stop = table.num_rows if plan.selection.stop is None else plan.selection.stop
        mask = plan.selection.mask(table.num_rows)
        return hashes[plan.selection.start : stop][mask]

    def _outcomes(
        self, table: pa.Table, hashes: np.ndarray, bounds: TimeBounds, earlier: np.ndarray
    ) -> np.ndarray:
        """Each row's outcome code: 0 trained, else 1 + its index in ``DROP_REASONS``."""
        reasons = np.zeros(table.num_rows, dtype=np.int8)
        reasons[~valid_row_mask(table)] = _MISSING
        reasons[(reasons == 0) & ~bounds.mask(table)] = _OUT_OF_TIME
        if self.seen.capacity == 0:
            return reasons
        candidates = np.flatnonzero(reasons == 0)
        ids = hashes[candidates]
        dup = self.seen.contains(ids)
        if len(earlier):
            dup |= np.isin(ids, earlier)
        fresh = np.flatnonzero(~dup)
        _, first = np.unique(ids[fresh], return_index=True)
        repeat = np.ones(len(fresh), dtype=bool)
        repeat[first] = False
        dup[fresh[repeat]] = True  # a second row with an id in the same range
        reasons[candidates[dup]] = _DUPLICATE
        return reasons

    def _ready(self, refs: list[ShardRef]) -> list[ShardRef]:
        """The run of shards that continues the cursor without a gap (or after a gap timed out)."""
        if not refs:
            self._gap_since = None
            return []
        known = self.landing.quarantined_seqs()  # one listing; no reason file read
        expected = self.cursor + 1
        while expected in known:
            expected += 1
        if refs[0].seq != expected:
            now = time.monotonic()
            if self._gap_since is None:
                self._gap_since = now
            if now - self._gap_since < self.gap_timeout_s:
                return []
        self._gap_since = None
        run = [refs[0]]
        for ref in refs[1:]:
            if ref.seq != run[-1].seq + 1 and not all(
                s in known for s in range(run[-1].seq + 1, ref.seq)
            ):
                break
            run.append(ref)
        return run


def _plan(
    ref: ShardRef, start: int, stop: int, final: bool, part: pa.Table, reasons: np.ndarray
) -> ShardPlan:
    keep = reasons == 0
    counts = kept_counts(reasons)
    latest = None
    if keep.any():
        micros = pc.fill_null(part.column("event_time").cast(pa.int64()), 0)
        latest = int(np.asarray(micros.to_numpy(zero_copy_only=False))[keep].max()) / 1e6
    return ShardPlan(
        seq=ref.seq,
        path=ref.path,
        landed_at=ref.landed_at,
        rows_valid=counts["trained"],
        rows_dropped=counts["missing_field"],
        max_event_time=latest,
        rows_out_of_time=counts["out_of_time"],
        rows_duplicate=counts["duplicate"],
        selection=RowSelection.from_mask(start, stop, keep),
        final=final,
    )


def _key(window: Window) -> tuple:
    pieces = tuple((s.seq, s.selection.start, s.selection.stop) for s in window.shards)
    return (window.cursor, window.cursor_offset, pieces)
