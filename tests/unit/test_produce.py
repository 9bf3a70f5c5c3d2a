"""The producer: counts, fault injection, pacing, stopping and the done marker."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from freshrank.events import (
    EventTime,
    LandingZone,
    ProducerConfig,
    ProducerStats,
    SimulatorConfig,
    run_producer,
)

_SIM = SimulatorConfig(seed=9, n_users=100, n_items=300, n_categories=6)
_FAST = 1e9  # events per second: no waiting at all


def test_bad_shards_and_null_rows_are_written_in_exact_numbers(tmp_path):
    config = ProducerConfig(
        landing_path=tmp_path / "zone",
        events_per_second=_FAST,
        shard_events=200,
        max_shards=7,
        simulator=_SIM,
        bad_shard_every=3,
        null_row_fraction=0.05,
        null_field="item_id",
    )
    stats = run_producer(config)

    assert (stats.shards_written, stats.bad_shards_written) == (7, 2)
    assert (stats.events_written, stats.null_rows_written, stats.valid_events) == (1400, 70, 1330)
    assert stats.elapsed_s > 0

    zone = LandingZone(tmp_path / "zone")
    assert zone.is_done()
    refs = zone.list_shards()
    assert [r.seq for r in refs] == list(range(1, 10))  # bad files after good shards 3 and 6
    reads = {r.seq: zone.validate(r) for r in refs}
    assert [seq for seq, read in reads.items() if read is None] == [4, 8]
    good = [read for read in reads.values() if read is not None]
    assert sum(r.rows_total for r in good) == stats.events_written
    assert sum(r.rows_dropped for r in good) == stats.null_rows_written
    assert sum(r.rows_kept for r in good) == stats.valid_events
    assert all(r.rows_dropped == 10 for r in good)

    reasons = dict(zone.quarantined())
    assert reasons["shard-000000000004.parquet"].startswith("not readable as parquet")
    assert reasons["shard-000000000008.parquet"].startswith("wrong schema: column 'clicked'")


def test_no_faults_by_default_and_the_run_is_deterministic(tmp_path):
    tables = []
    for name in ("a", "b"):
        config = ProducerConfig(
            landing_path=tmp_path / name,
            events_per_second=_FAST,
            shard_events=100,
            max_shards=3,
            simulator=_SIM,
            event_time=EventTime.SIMULATED,
        )
        stats = run_producer(config)
        assert stats == ProducerStats(
            shards_written=3,
            events_written=300,
            valid_events=300,
            elapsed_s=stats.elapsed_s,
            max_lag_s=stats.max_lag_s,
        )
        zone = LandingZone(tmp_path / name)
        tables.append([zone.read_shard(r).table for r in zone.list_shards()])
        assert zone.quarantined() == []
    assert all(x.equals(y) for x, y in zip(*tables, strict=True))
    assert tables[0][0].column("event_time")[0].as_py() == _SIM.start_time


def test_pacing_follows_the_schedule_and_event_times_follow_the_wall_clock(tmp_path):
    # 400 events per 0.05 s: shards are due at 0.05, 0.10, 0.15 and 0.20 s after the start.
    config = ProducerConfig(
        landing_path=tmp_path,
        events_per_second=8000,
        shard_events=400,
        max_shards=4,
        simulator=_SIM,
    )
    published: list[float] = []
    started = time.monotonic()
    wall_start = datetime.now(timezone.utc)
    stats = run_producer(config, progress=lambda s: published.append(time.monotonic() - started))

    assert stats.shards_written == 4
    assert len(published) == 4
    for i, at in enumerate(published):
        assert at >= (i + 1) * 0.05 - 0.005
    assert 0.195 <= stats.elapsed_s < 2.0

    zone = LandingZone(tmp_path)
    reads = [zone.read_shard(r) for r in zone.list_shards()]
    assert reads[0].min_event_time >= wall_start - timedelta(seconds=1)
    assert reads[-1].max_event_time <= datetime.now(timezone.utc) + timedelta(seconds=1)
    # Simulated time runs at events_per_second: the four shards span about 0.2 s.
    span = (reads[-1].max_event_time - reads[0].min_event_time).total_seconds()
    assert 0.19 <= span <= 0.2


def test_duration_limits_the_number_of_shards(tmp_path):
    config = ProducerConfig(
        landing_path=tmp_path,
        events_per_second=10_000,
        shard_events=500,
        duration_s=0.17,  # shards due at 0.05, 0.10, 0.15; the fourth (0.20) is past the end
        simulator=_SIM,
    )
    stats = run_producer(config)
    assert stats.shards_written == 3
    assert len(LandingZone(tmp_path).list_shards()) == 3


def test_stop_event_ends_the_run_and_marks_done(tmp_path):
    stop = threading.Event()
    seen: list[ProducerStats] = []

    def progress(stats: ProducerStats) -> None:
        seen.append(stats)
        if stats.shards_written == 2:
            stop.set()

    config = ProducerConfig(
        landing_path=tmp_path, events_per_second=_FAST, shard_events=100, simulator=_SIM
    )
    stats = run_producer(config, stop=stop, progress=progress)
    assert stats.shards_written == 2
    assert [s.shards_written for s in seen] == [1, 2]
    seen[0].shards_written = 99  # progress gets copies: the run's stats are unaffected
    assert stats.shards_written == 2
    assert LandingZone(tmp_path).is_done()


def test_a_stale_done_marker_is_cleared_at_start(tmp_path):
    zone = LandingZone(tmp_path)
    zone.mark_done()
    states: list[bool] = []
    config = ProducerConfig(
        landing_path=tmp_path,
        events_per_second=_FAST,
        shard_events=100,
        max_shards=1,
        simulator=_SIM,
    )
    run_producer(config, progress=lambda _: states.append(zone.is_done()))
    assert states == [False]
    assert zone.is_done()


def test_a_run_that_could_never_end_is_refused(tmp_path):
    with pytest.raises(ValueError, match="would never end"):
        run_producer(ProducerConfig(landing_path=tmp_path, simulator=_SIM))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"shard_events": 1005},
            "multiple of simulator.list_size (10) so no search is split across shards; "
            "use 1000 or 1010",
        ),
        ({"events_per_second": 0}, "events_per_second must be > 0"),
        ({"null_field": "brand"}, "null_field must be one of the required fields"),
        ({"null_row_fraction": 1.5}, "null_row_fraction must be in [0, 1]"),
        ({"bad_shard_every": -1}, "bad_shard_every must be an int >= 0"),
        ({"max_shards": -2}, "max_shards must be an int >= 0"),
        ({"event_time": "wall_clock"}, "event_time must be an EventTime"),
    ],
)
def test_config_says_what_is_wrong(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match="ProducerConfig: ") as info:
        ProducerConfig(landing_path=tmp_path, **kwargs)
    assert message in str(info.value)


def test_landed_events_are_counted_in_the_metrics_facade(tmp_path):
    from prometheus_client import CollectorRegistry

    from freshrank.core.telemetry import Telemetry

    registry = CollectorRegistry()
    config = ProducerConfig(
        landing_path=tmp_path / "zone",
        events_per_second=_FAST,
        shard_events=200,
        max_shards=3,
        simulator=_SIM,
        bad_shard_every=2,  # bad files are not events landed
    )
    stats = run_producer(config, metrics=Telemetry.for_prometheus_client(registry))
    assert stats.bad_shards_written == 1
    landed = registry.get_sample_value("freshrank_events_landed_total")
    assert landed == stats.events_written == 600
