"""The producer: lands simulated event shards in a landing zone at a steady rate.

Shard ``i`` (0-based) holds ``shard_events`` rows and is published at ``start + (i + 1) *
shard_events / events_per_second`` (a deadline loop: lateness in one shard is not carried into
the next). With ``EventTime.WALL_CLOCK`` the simulated clock runs at the same rate from the
wall-clock start, so an event's ``event_time`` is when it "happened" and freshness (landing ->
served model) can be measured against it.

Fault injection, for exercising the readers' quarantine and row checks:

- ``bad_shard_every = k``: after every ``k``-th good shard one extra bad file is landed under
  the shard naming pattern, alternating between bytes that are not parquet and a parquet file
  with a wrong schema.
- ``null_row_fraction = f``: in every good shard exactly ``round(f * shard_events)`` rows get a
  null ``null_field`` (a required field), so readers drop and count them.

Event and request ids carry a tag of the run (``s<first free seq>-<simulator id>``): a
producer started again on the same landing zone with the same seed lands new ids, not the
earlier run's, which the trainer would drop as duplicates (it de-duplicates by event id); two
runs on empty zones still land the same rows.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from freshrank.events.landing import LandingZone
from freshrank.events.schema import REQUIRED_FIELDS
from freshrank.events.simulator import Simulator, SimulatorConfig

if TYPE_CHECKING:
    from freshrank.core.telemetry import Telemetry


class EventTime(enum.Enum):
    """Where event times come from."""

    WALL_CLOCK = "wall_clock"
    """Simulated time starts at the producer's start and runs at ``events_per_second``."""
    SIMULATED = "simulated"
    """The simulator config's ``start_time`` and ``requests_per_second`` as given."""


@dataclass(frozen=True)
class ProducerConfig:
    """What to produce, where, how fast, for how long, and which faults to inject.

    The producer stops at whichever comes first of ``max_shards`` good shards, ``duration_s``
    seconds, or the ``stop`` event given to :func:`run_producer`; with neither limit set it
    needs a ``stop`` event.
    """

    landing_path: str | os.PathLike[str]
    events_per_second: float = 20_000.0
    shard_events: int = 5_000
    duration_s: float | None = None
    max_shards: int | None = None
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
    bad_shard_every: int = 0
    null_row_fraction: float = 0.0
    null_field: str = "user_id"
    event_time: EventTime = EventTime.WALL_CLOCK

    def __post_init__(self) -> None:
        def fail(msg: str) -> None:
            raise ValueError(f"ProducerConfig: {msg}")

        if not isinstance(self.landing_path, (str, os.PathLike)) or not str(self.landing_path):
            fail(f"landing_path must be a non-empty path, got {self.landing_path!r}")
        if not (math.isfinite(self.events_per_second) and self.events_per_second > 0):
            fail(f"events_per_second must be > 0, got {self.events_per_second}")
        if not isinstance(self.simulator, SimulatorConfig):
            fail(f"simulator must be a SimulatorConfig, got {type(self.simulator).__name__}")
        size = self.simulator.list_size
        if not isinstance(self.shard_events, int) or self.shard_events < 1:
            fail(f"shard_events must be an int >= 1, got {self.shard_events!r}")
        if self.shard_events % size:
            lo = max(size, self.shard_events - self.shard_events % size)
            fail(
                f"shard_events ({self.shard_events}) must be a multiple of simulator.list_size "
                f"({size}) so no search is split across shards; use {lo} or {lo + size}"
            )
        if self.duration_s is not None and not (self.duration_s >= 0):
            fail(f"duration_s must be >= 0 or None, got {self.duration_s}")
        if self.max_shards is not None and (
            not isinstance(self.max_shards, int) or self.max_shards < 0
        ):
            fail(f"max_shards must be an int >= 0 or None, got {self.max_shards!r}")
        if not isinstance(self.bad_shard_every, int) or self.bad_shard_every < 0:
            fail(f"bad_shard_every must be an int >= 0 (0 = never), got {self.bad_shard_every!r}")
        if not 0.0 <= self.null_row_fraction <= 1.0:
            fail(f"null_row_fraction must be in [0, 1], got {self.null_row_fraction}")
        if self.null_field not in REQUIRED_FIELDS:
            fail(
                f"null_field must be one of the required fields {REQUIRED_FIELDS}, got "
                f"{self.null_field!r}"
            )
        if not isinstance(self.event_time, EventTime):
            fail(f"event_time must be an EventTime, got {self.event_time!r}")

    @property
    def shard_interval_s(self) -> float:
        """Seconds between two good shards (``shard_events / events_per_second``)."""
        return self.shard_events / self.events_per_second

    @property
    def null_rows_per_shard(self) -> int:
        """Rows per good shard whose ``null_field`` is nulled."""
        return round(self.null_row_fraction * self.shard_events)


@dataclass
class ProducerStats:
    """What a producer has landed so far.

    ``shards_written``/``events_written`` count good shards and their rows (nulled rows
    included); bad files are counted only in ``bad_shards_written``. ``valid_events`` are the
    rows of good shards that have every required field. ``max_lag_s`` is the largest delay of
    a publication past its scheduled time (large values mean the rate is not sustained).
    """

    shards_written: int = 0
    events_written: int = 0
    bad_shards_written: int = 0
    null_rows_written: int = 0
    valid_events: int = 0
    elapsed_s: float = 0.0
    max_lag_s: float = 0.0


def run_producer(
    config: ProducerConfig,
    stop: threading.Event | None = None,
    progress: Callable[[ProducerStats], None] | None = None,
    metrics: Telemetry | None = None,
) -> ProducerStats:
    """Land shards as ``config`` says until a limit is reached or ``stop`` is set.

    Marks the landing zone done (``_PRODUCER_DONE``) when it ends normally or is stopped (a
    stale marker from an earlier run is removed at start). ``progress`` gets a copy of the
    stats after each good shard. Every landed row counts in ``freshrank_events_landed_total``
    of ``metrics`` (default: Ray's metrics when Ray is initialised here, else none). Returns
    the final stats.
    """
    from freshrank.core.telemetry import default_telemetry

    metrics = metrics if metrics is not None else default_telemetry()
    if config.max_shards is None and config.duration_s is None and stop is None:
        raise ValueError(
            "run_producer would never end: set ProducerConfig.max_shards or duration_s, "
            "or pass a stop event"
        )
    zone = LandingZone(config.landing_path)
    zone.clear_done()
    sim_config = config.simulator
    if config.event_time is EventTime.WALL_CLOCK:
        sim_config = dataclasses.replace(
            sim_config,
            start_time=datetime.now(timezone.utc),
            requests_per_second=config.events_per_second / sim_config.list_size,
        )
    sim = Simulator(sim_config)
    rng = np.random.default_rng([sim_config.seed, 0x5EED])
    requests_per_shard = config.shard_events // sim_config.list_size
    run_tag = f"s{zone.next_seq()}"  # the first sequence number this run may take
    interval = config.shard_interval_s
    stats = ProducerStats()
    t0 = time.monotonic()
    i = 0
    while config.max_shards is None or i < config.max_shards:
        due = (i + 1) * interval
        if config.duration_s is not None and due > config.duration_s + 1e-9:
            break
        table = _tag_ids(sim.generate(requests_per_shard), run_tag)
        table, n_null = _null_out(table, config.null_field, config.null_rows_per_shard, rng)
        if _wait_until(t0 + due, stop):
            break
        zone.write_shard(table)
        metrics.inc("freshrank_events_landed_total", float(table.num_rows))
        stats.max_lag_s = max(stats.max_lag_s, time.monotonic() - (t0 + due))
        stats.shards_written += 1
        stats.events_written += table.num_rows
        stats.null_rows_written += n_null
        stats.valid_events += table.num_rows - n_null
        i += 1
        if config.bad_shard_every and i % config.bad_shard_every == 0:
            _write_bad_shard(zone, table, stats.bad_shards_written, rng)
            stats.bad_shards_written += 1
        stats.elapsed_s = time.monotonic() - t0
        if progress is not None:
            progress(dataclasses.replace(stats))
    zone.mark_done()
    stats.elapsed_s = time.monotonic() - t0
    return stats


def _wait_until(deadline: float, stop: threading.Event | None) -> bool:
    """Sleep until ``deadline`` (``time.monotonic`` seconds); True if ``stop`` was set."""
    if stop is not None and stop.is_set():
        return True
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return False
    if stop is not None:
        return stop.wait(remaining)
    time.sleep(remaining)
    return False


def _tag_ids(table: pa.Table, tag: str) -> pa.Table:
    """``table`` with ``<tag>-`` before every event and request id."""
    for name in ("event_id", "request_id"):
        idx = table.schema.get_field_index(name)
        tagged = pc.binary_join_element_wise(f"{tag}-", table.column(idx), "")
        table = table.set_column(idx, table.schema.field(idx), tagged)
    return table


def _null_out(
    table: pa.Table, name: str, n_null: int, rng: np.random.Generator
) -> tuple[pa.Table, int]:
    """Null column ``name`` in ``n_null`` rows chosen at random; return the table and count."""
    n_null = min(n_null, table.num_rows)
    if n_null == 0:
        return table, 0
    mask = np.zeros(table.num_rows, dtype=bool)
    mask[rng.choice(table.num_rows, size=n_null, replace=False)] = True
    idx = table.schema.get_field_index(name)
    column = table.column(idx)
    nulled = pc.if_else(pa.array(mask), pa.scalar(None, column.type), column)
    return table.set_column(idx, table.schema.field(idx), nulled), n_null


def _write_bad_shard(
    zone: LandingZone, good: pa.Table, n_bad_before: int, rng: np.random.Generator
) -> None:
    """Land a corrupt file: alternately bytes that are not parquet, and a wrong schema."""
    if n_bad_before % 2 == 0:
        data = b"freshrank: deliberately corrupt shard, not parquet\n" + rng.bytes(256)
    else:
        sample = good.slice(0, min(100, good.num_rows))
        idx = sample.schema.get_field_index("clicked")
        wrong = sample.set_column(
            idx, pa.field("clicked", pa.int64()), pc.cast(sample.column(idx), pa.int64())
        )
        sink = pa.BufferOutputStream()
        pq.write_table(wrong, sink)
        data = sink.getvalue().to_pybytes()
    zone.write_raw(data)
