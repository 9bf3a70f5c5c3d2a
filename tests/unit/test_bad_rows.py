"""Bad data cannot poison the trainer (issue 17, faults 3, 5, 6 and row-bounded windows).

Each test runs the trainer's own window loop in one process, without Ray: the feed plans,
``_next_window`` skips windows with nothing to train, ``_train_window`` reads exactly the
planned rows (Ray Data's task replaced by the same pyarrow function it runs), the window is
checkpointed with the de-duplication memory, and the feed commits. Then the manifests must
account for every row landed: trained, or dropped with its reason.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch
from _tiny import FEATURES, MODEL
from prometheus_client import CollectorRegistry

import freshrank.learn.train as train
from freshrank.core.serialization import npz_bytes
from freshrank.core.telemetry import NullTelemetry, Telemetry
from freshrank.events.landing import LandingZone
from freshrank.events.schema import REQUIRED_FIELDS, empty_events
from freshrank.events.selection import RowSelection
from freshrank.events.simulator import Simulator, SimulatorConfig
from freshrank.features.encode import encode
from freshrank.features.reading import REQUEST_KEY, read_pieces
from freshrank.learn.config import TrainConfig
from freshrank.learn.dedup import SEEN_EVENTS_FILE, SeenEvents
from freshrank.learn.feed import ShardFeed
from freshrank.learn.gating import ChampionScorer
from freshrank.learn.optim import make_optimizer
from freshrank.learn.publish import WindowProgress, checkpoint_window, export_window_metrics
from freshrank.learn.strategies import build_strategy
from freshrank.learn.window_io import assign_shards
from freshrank.model.ranker import Ranker
from freshrank.registry import Registry, load_latest_or_init
from freshrank.registry.checkpoint import save_checkpoint
from freshrank.registry.control import TrainerControl, TrainerHeartbeat

FAR_FUTURE = datetime(9999, 1, 1, tzinfo=timezone.utc)


def _read_with_pyarrow(paths, features, filesystem=None, selections=None):
    if not paths:
        return encode(empty_events(), features), np.zeros(0, dtype=str)
    rows = read_pieces(paths, selections, features, filesystem)
    return rows, np.asarray(rows.pop(REQUEST_KEY), dtype=str)


@pytest.fixture(autouse=True)
def _pyarrow_reads(monkeypatch):
    monkeypatch.setattr(train, "read_shards", _read_with_pyarrow)


def _sim(seed: int = 4) -> Simulator:
    now = datetime.now(timezone.utc)
    return Simulator(SimulatorConfig(seed=seed, n_users=50, n_items=80, start_time=now))


def _config(tmp_path, **kw) -> TrainConfig:
    return TrainConfig(
        landing=str(tmp_path / "landing"),
        registry=str(tmp_path / "registry"),
        num_workers=1,
        model=MODEL,
        batch_size=256,
        drift=False,
        **kw,
    )


class _Loop:
    """The trainer's loop (``learn.train._consume_windows``) for one rank, in process."""

    def __init__(self, config: TrainConfig, metrics=None) -> None:
        self.config = config
        self.landing = LandingZone(config.landing)
        self.registry = Registry(config.registry)
        self.metrics = metrics or NullTelemetry()
        self.control = TrainerControl(config.registry)
        self.beat = TrainerHeartbeat(config.registry, interval_s=60.0)
        state = load_latest_or_init(self.registry)
        torch.manual_seed(0)
        self.core = Ranker(MODEL)
        if state is not None:
            self.core.load_state_dict(state.model_state)
        self.worker = train._Worker(
            model=self.core,
            core=self.core,
            optimizer=make_optimizer(self.core, config.learning_rate),
            strategy=build_strategy(config.strategy_config(), 0),
            drift=None,
            champion=ChampionScorer(self.registry, torch.device("cpu")),
            features=FEATURES,
            config=config,
            device=torch.device("cpu"),
            rng=np.random.default_rng(0),
        )
        self.progress = WindowProgress.from_state(state)
        self.feed = ShardFeed(
            self.landing,
            cursor=state.cursor if state else 0,
            max_shards=config.max_shards_per_window,
            cursor_offset=int(state.manifest.get("cursor_offset", 0)) if state else 0,
            max_rows=config.max_rows_per_window,
            max_future_skew_s=config.max_future_skew_s,
            max_past_age_s=config.max_past_age_s,
            seen=train._seen_events(self.registry, state, config),
        )

    def run(self, max_windows: int = 50) -> list[dict]:
        """Train until every landed shard is done; the manifests of the versions made."""
        self.landing.mark_done()
        made = []
        for _ in range(max_windows):
            window = train._next_window(
                self.feed,
                self.landing,
                self.config,
                self.progress,
                self.metrics,
                self.control,
                self.beat,
            )
            if window is None:
                return made
            report = train._train_window(train._Plan(window, None, None), self.worker, None)
            seen = npz_bytes(self.feed.seen_after(window).state_dict())
            parts = [train._numpy_state(self.worker.strategy.state_dict())]
            info = checkpoint_window(
                self.registry,
                window,
                report,
                self.core,
                self.worker.optimizer,
                parts,
                None,
                self.progress,
                extra_files={SEEN_EVENTS_FILE: seen},
            )
            self.feed.commit(window)
            export_window_metrics(self.metrics, window, report, self.progress)
            self.beat.update(version=self.progress.version, cursor=self.feed.cursor, skipped={})
            made.append(info.manifest)
        raise AssertionError(f"still training after {max_windows} windows")


def _accounted(manifests: list[dict]) -> dict[str, int]:
    keys = ("rows_read", "window_events", "rows_dropped", "rows_out_of_time", "rows_duplicate")
    total = {k: sum(int(m[k]) for m in manifests) for k in keys}
    for m in manifests:  # each version's rows add up
        assert m["rows_read"] == (
            m["window_events"] + m["rows_dropped"] + m["rows_out_of_time"] + m["rows_duplicate"]
        )
    return total


# --------------------------------------------------------------------- fault 3: out of time


def _with_times(table: pa.Table, rows: np.ndarray, when: datetime) -> pa.Table:
    idx = table.schema.get_field_index("event_time")
    col = table.column(idx)
    moved = pc.if_else(pa.array(rows), pa.scalar(when, col.type), col)
    return table.set_column(idx, table.schema.field(idx), moved)


def test_a_far_future_event_is_counted_and_never_moves_the_watermark_past_now(tmp_path):
    config = _config(tmp_path)
    zone = LandingZone(config.landing)
    sim = _sim()
    zone.write_shard(sim.generate(60))
    poisoned = sim.generate(60)
    future = np.zeros(poisoned.num_rows, dtype=bool)
    future[::7] = True
    zone.write_shard(_with_times(poisoned, future, FAR_FUTURE))
    zone.write_shard(sim.generate(60))
    prom = CollectorRegistry()
    loop = _Loop(
        dataclasses.replace(config, max_shards_per_window=1), Telemetry.for_prometheus_client(prom)
    )

    manifests = loop.run()

    assert len(manifests) == 3
    late = int(future.sum())
    assert manifests[1]["rows_out_of_time"] == late == 86
    assert sum(m["rows_out_of_time"] for m in manifests) == late
    for m in manifests:
        assert m["watermark"] <= m["created_at"] <= time.time()
    totals = _accounted(manifests)
    assert totals["rows_read"] == 3 * 600
    assert totals["window_events"] == 3 * 600 - late
    counter = "freshrank_rows_dropped_total"
    assert prom.get_sample_value(counter, {"reason": "out_of_time"}) == float(late)


def test_a_watermark_stored_in_the_future_is_not_carried_on(tmp_path):
    """A registry poisoned before the bound existed heals at the next version."""
    config = _config(tmp_path)
    zone = LandingZone(config.landing)
    sim = _sim()
    zone.write_shard(sim.generate(40))
    first = _Loop(config).run()
    assert len(first) == 1
    registry = Registry(config.registry)
    state = load_latest_or_init(registry)
    poisoned = {
        "cursor": state.cursor,
        "watermark": FAR_FUTURE.timestamp(),  # what main wrote before the bound
        "metrics": {},
        "events_trained": state.events_trained,
        "window_index": 1,
    }
    save_checkpoint(registry, MODEL, state.model_state, None, state.replay_state, poisoned)
    assert registry.get(registry.latest_version()).manifest["watermark"] > time.time()

    zone.write_shard(sim.generate(40))
    healed = _Loop(config).run()
    assert len(healed) == 1 and healed[0]["watermark"] <= healed[0]["created_at"]


def test_a_past_age_bound_drops_old_rows_when_set(tmp_path):
    config = _config(tmp_path, max_past_age_s=3600.0)
    zone = LandingZone(config.landing)
    old = Simulator(SimulatorConfig(seed=1, n_users=50, n_items=80))  # events of 2024
    zone.write_shard(old.generate(20))
    zone.write_shard(_sim(2).generate(20))
    manifests = _Loop(config).run()
    totals = _accounted(manifests)
    assert (totals["rows_out_of_time"], totals["window_events"]) == (200, 200)


# ------------------------------------------------------------------- fault 5: duplicates


def test_the_same_shard_landed_twice_is_trained_once_across_windows_and_restarts(tmp_path):
    config = _config(tmp_path, max_shards_per_window=1)
    zone = LandingZone(config.landing)
    sim = _sim()
    shard = sim.generate(50)
    n = shard.num_rows
    zone.write_shard(shard)
    zone.write_shard(sim.generate(50))
    zone.write_shard(shard)  # a producer's retry, in a later window

    first = _Loop(config).run()
    assert [m["window_events"] for m in first] == [n, n]  # the copy made no version
    registry = Registry(config.registry)
    assert registry.trainer_status()["skipped"]["duplicate"] == n

    zone.clear_done()
    zone.write_shard(shard)  # once more, after a restart: the memory is in the version
    zone.write_shard(sim.generate(50))
    second = _Loop(config).run()
    manifests = first + second
    totals = _accounted(manifests)
    assert totals["window_events"] == 3 * n
    assert totals["rows_duplicate"] == 2 * n
    assert totals["rows_read"] == 5 * n
    # The copies were skipped windows: after the restart the feed planned again from the
    # version's cursor, so both are in the first new version's counts (and nowhere else).
    assert second[0]["skipped"]["duplicate"] == 2 * n and second[0]["skipped"]["windows"] == 2
    assert load_latest_or_init(registry).events_trained == 3 * n


def test_duplicates_in_one_window_keep_the_first_copy(tmp_path):
    config = _config(tmp_path)
    zone = LandingZone(config.landing)
    shard = _sim().generate(30)
    zone.write_shard(shard)
    zone.write_shard(shard)
    doubled = pa.concat_tables([shard.slice(0, 10), shard.slice(0, 10)])
    zone.write_shard(doubled)
    (m,) = _Loop(config).run()
    assert m["window_events"] == shard.num_rows
    assert m["rows_duplicate"] == shard.num_rows + doubled.num_rows


def test_dedup_off_trains_every_copy(tmp_path):
    config = _config(tmp_path, dedup_horizon_events=0)
    zone = LandingZone(config.landing)
    shard = _sim().generate(30)
    zone.write_shard(shard)
    zone.write_shard(shard)
    (m,) = _Loop(config).run()
    assert (m["window_events"], m["rows_duplicate"]) == (2 * shard.num_rows, 0)


def test_the_memory_is_bounded_and_forgets_the_oldest_first():
    seen = SeenEvents(capacity=4)
    seen.add(np.arange(1, 7, dtype=np.uint64))
    assert len(seen) == 4
    assert seen.contains(np.array([1, 2, 3, 6], dtype=np.uint64)).tolist() == [
        False,
        False,
        True,
        True,
    ]
    again = SeenEvents(4, seen.state_dict()["order"])
    assert again.contains(np.array([3], dtype=np.uint64)).tolist() == [True]


# ------------------------------------------------------- fault 6: nothing lost silently


def test_a_window_of_only_null_rows_is_counted_in_trainer_status_and_the_next_version(tmp_path):
    config = _config(tmp_path, max_shards_per_window=1)
    zone = LandingZone(config.landing)
    sim = _sim()
    null = sim.generate(200)  # 2,000 rows
    for name in REQUIRED_FIELDS:
        idx = null.schema.get_field_index(name)
        null = null.set_column(
            idx, null.schema.field(idx), pa.nulls(null.num_rows, null.schema.field(idx).type)
        )
    assert null.num_rows == 2000
    zone.write_shard(null)
    zone.write_raw(b"not parquet")
    loop = _Loop(config)
    assert loop.run() == []  # no version: nothing to train
    status = Registry(config.registry).trainer_status()
    assert status["skipped"]["missing_field"] == 2000
    assert status["skipped"]["rows_read"] == 2000 and status["skipped"]["windows"] == 2
    assert [q[0] for q in status["skipped"]["quarantined"]] == [2]

    zone.clear_done()
    zone.write_shard(sim.generate(20))
    (m,) = loop.run()
    assert m["rows_dropped"] == 2000 and m["rows_read"] == 2000 + 200
    assert m["skipped"]["shards"] == [1] and [q[0] for q in m["quarantined"]] == [2]
    assert Registry(config.registry).trainer_status()["skipped"] == {}


# --------------------------------------------------------------- windows bounded by rows


def test_a_large_shard_is_split_across_windows_without_loss_or_repeat(tmp_path):
    config = _config(tmp_path, max_rows_per_window=700)
    zone = LandingZone(config.landing)
    sim = _sim()
    big = sim.generate(250)  # 2,500 rows
    zone.write_shard(sim.generate(20))  # 200 rows
    zone.write_shard(big)
    zone.write_shard(sim.generate(20))
    manifests = _Loop(config).run()
    assert [m["window_events"] for m in manifests] == [700, 700, 700, 700, 100]
    assert [m["shards"] for m in manifests] == [[1, 2], [2], [2], [2, 3], [3]]
    assert [(m["cursor"], m["cursor_offset"]) for m in manifests] == [
        (1, 500),
        (1, 1200),
        (1, 1900),
        (2, 100),
        (3, 0),
    ]
    assert manifests[1]["shard_rows"] == {"2": [500, 1200]}
    assert _accounted(manifests)["window_events"] == 200 + 2500 + 200


def test_a_restart_inside_a_split_shard_resumes_at_its_row(tmp_path):
    config = _config(tmp_path, max_rows_per_window=1000, max_windows=1)
    zone = LandingZone(config.landing)
    zone.write_shard(_sim().generate(150))
    first = _Loop(config).run()
    assert [(m["cursor"], m["cursor_offset"], m["window_events"]) for m in first] == [
        (0, 1000, 1000)
    ]
    rest = _Loop(dataclasses.replace(config, max_windows=None)).run()
    assert [(m["cursor"], m["cursor_offset"], m["window_events"]) for m in rest] == [(1, 0, 500)]
    assert rest[0]["shard_rows"] == {"1": [1000, 1500]}
    assert _accounted(first + rest)["rows_duplicate"] == 0


def test_rows_are_dealt_evenly_to_ranks_and_read_exactly(tmp_path):
    zone = LandingZone(tmp_path)
    sim = _sim()
    for requests in (150, 10, 20):
        zone.write_shard(sim.generate(requests))
    window = ShardFeed(zone, max_shards=8).poll()
    pieces = [assign_shards(window.shards, r, 3) for r in range(3)]
    read = [read_pieces([p for p, _ in ps], [s for _, s in ps], FEATURES) for ps in pieces]
    sizes = [len(r["label"]) for r in read]
    assert sum(sizes) == window.rows_valid == 1800 and max(sizes) - min(sizes) <= 1
    ids = np.concatenate([r[REQUEST_KEY] for r in read])
    assert len(ids) == 1800


def test_a_row_selection_reads_the_rows_its_mask_names():
    table = pa.table({"x": list(range(10))})
    mask = np.array([i % 3 != 0 for i in range(2, 9)])
    sel = RowSelection.from_mask(2, 9, mask)
    assert sel.apply(table).column("x").to_pylist() == [2, 4, 5, 7, 8]
    assert sel.subrange(1, 4).apply(table).column("x").to_pylist() == [4, 5, 7]
    with pytest.raises(ValueError, match="mask has 3 rows"):
        RowSelection.from_mask(0, 4, np.ones(3, dtype=bool))
