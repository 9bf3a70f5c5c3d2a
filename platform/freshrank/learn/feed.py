"""The shard feed: discovers newly landed shards after a cursor, validates them and plans windows.

Shards are taken in sequence order. A shard that cannot be used is quarantined (with its reason)
and the cursor moves past it; rows missing a required field are counted here, and dropped by the
same rule (``events.valid_row_mask``) when the window is read for training.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from freshrank.events.landing import InvalidShard, LandingZone, ShardRef


@dataclass(frozen=True)
class ShardPlan:
    """One valid shard of a window, with what validation learned about it."""

    seq: int
    path: str
    landed_at: float
    rows_valid: int
    rows_dropped: int
    max_event_time: float | None


@dataclass(frozen=True)
class Window:
    """The shards to train on next, and what the cursor becomes once they are trained."""

    shards: tuple[ShardPlan, ...]
    quarantined: tuple[tuple[int, str], ...]
    cursor: int
    planned_at: float = field(default_factory=time.time)

    @property
    def rows_valid(self) -> int:
        """Valid rows across the window's shards."""
        return sum(s.rows_valid for s in self.shards)

    @property
    def rows_dropped(self) -> int:
        """Rows dropped for a missing required field."""
        return sum(s.rows_dropped for s in self.shards)

    @property
    def max_event_time(self) -> float | None:
        """Latest event time in the window (unix seconds), None when it has no valid rows."""
        times = [s.max_event_time for s in self.shards if s.max_event_time is not None]
        return max(times) if times else None


class ShardFeed:
    """Plans windows of at most ``max_shards`` shards, in sequence order, after ``cursor``.

    ``gap_timeout_s`` is how long a missing sequence number is waited for (a writer that took a
    number but has not published yet) before the feed skips it.
    """

    def __init__(
        self,
        landing: LandingZone,
        cursor: int = 0,
        max_shards: int = 8,
        gap_timeout_s: float = 10.0,
    ) -> None:
        if max_shards < 1:
            raise ValueError(f"max_shards must be >= 1, got {max_shards}")
        self.landing = landing
        self.cursor = cursor
        self.max_shards = max_shards
        self.gap_timeout_s = gap_timeout_s
        self._gap_since: float | None = None

    def poll(self) -> Window | None:
        """The next window, or None when no new shard is ready yet."""
        refs = self._ready(self.landing.list_shards(after=self.cursor))
        if not refs:
            return None
        plans: list[ShardPlan] = []
        quarantined: list[tuple[int, str]] = []
        cursor = self.cursor
        for ref in refs[: self.max_shards]:
            cursor = ref.seq
            try:
                read = self.landing.read_shard(ref)
            except InvalidShard as exc:
                self.landing.quarantine(ref, exc.reason)
                quarantined.append((ref.seq, exc.reason))
                continue
            plans.append(
                ShardPlan(
                    seq=ref.seq,
                    path=ref.path,
                    landed_at=ref.landed_at,
                    rows_valid=read.table.num_rows,
                    rows_dropped=read.rows_dropped,
                    max_event_time=(
                        read.max_event_time.timestamp() if read.max_event_time else None
                    ),
                )
            )
        return Window(tuple(plans), tuple(quarantined), cursor)

    def commit(self, window: Window) -> None:
        """Move the cursor past ``window`` (call once it is checkpointed)."""
        self.cursor = max(self.cursor, window.cursor)

    def _ready(self, refs: list[ShardRef]) -> list[ShardRef]:
        """The run of shards that continues the cursor without a gap (or after a gap timed out)."""
        if not refs:
            self._gap_since = None
            return []
        known = _quarantined_seqs(self.landing)
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


_SEQ_RE = re.compile(r"shard-(\d+)\.parquet$")


def _quarantined_seqs(landing: LandingZone) -> set[int]:
    return landing.quarantined_seqs()  # one listing; no reason file read (a GET each on S3)
