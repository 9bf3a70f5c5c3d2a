"""The simulated search world: determinism, shape, position bias, arrivals and drift."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from freshrank.events import FILE_SCHEMA, REQUIRED_FIELDS, Simulator, SimulatorConfig

_STATIC = SimulatorConfig(
    seed=5,
    n_users=20,
    n_items=500,
    n_categories=5,
    new_items_every_requests=0,
    drift_every_requests=0,
)


def _ids(column: pa.ChunkedArray) -> np.ndarray:
    """``"u12"`` -> 12, vectorised."""
    return pc.cast(pc.utf8_slice_codeunits(column, 1), pa.int64()).to_numpy()


def _cell_ctr(table: pa.Table, cfg: SimulatorConfig) -> tuple[np.ndarray, np.ndarray]:
    """CTR per (user, item category) and which cells have enough impressions to trust."""
    n_cells = cfg.n_users * cfg.n_categories
    cells = _ids(table.column("user_id")) * cfg.n_categories + _ids(table.column("category"))
    clicked = table.column("clicked").to_numpy(zero_copy_only=False).astype(float)
    clicks = np.bincount(cells, weights=clicked, minlength=n_cells)
    shown = np.bincount(cells, minlength=n_cells)
    ctr = (clicks / np.maximum(shown, 1)).reshape(cfg.n_users, cfg.n_categories)
    return ctr, (shown >= 200).reshape(cfg.n_users, cfg.n_categories)


def _within_user_corr(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    """Correlation of two CTR tables after removing each user's mean (shared trusted cells)."""
    ok = a[1] & b[1]
    assert ok.sum() >= 50, "too few trusted cells for a meaningful correlation"

    def centred(ctr: np.ndarray) -> np.ndarray:
        masked = np.where(ok, ctr, np.nan)
        return (masked - np.nanmean(masked, axis=1, keepdims=True))[ok]

    return float(np.corrcoef(centred(a[0]), centred(b[0]))[0, 1])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_users": 0}, "n_users must be >= 1, got 0"),
        ({"list_size": 0}, "list_size must be >= 1, got 0"),
        ({"n_items": 5, "n_categories": 10}, "n_items (5) must be >= n_categories (10)"),
        ({"n_items": 5, "n_categories": 2, "list_size": 10}, "must be >= list_size (10)"),
        ({"n_devices": 4}, "n_devices must be <= 3"),
        ({"drift_strength": 1.5}, "drift_strength must be in [0, 1], got 1.5"),
        ({"requests_per_second": 0.0}, "requests_per_second must be > 0"),
        ({"start_time": datetime(2024, 1, 1)}, "start_time must be a timezone-aware datetime"),
        ({"n_items": 10.5}, "n_items must be an int"),
        ({"position_bias_eta": -1.0}, "position_bias_eta must be a finite number >= 0"),
    ],
)
def test_config_says_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match="SimulatorConfig: ") as info:
        SimulatorConfig(**kwargs)
    assert message in str(info.value)


def _calls(sim: Simulator) -> pa.Table:
    parts = [sim.generate(50), sim.generate(130)]
    sim.planted_shift()
    parts.append(sim.generate(77))
    return pa.concat_tables(parts)


def test_same_seed_same_calls_same_table_and_different_seed_differs():
    cfg = SimulatorConfig(seed=11, new_items_every_requests=60, drift_every_requests=45)
    a, b = _calls(Simulator(cfg)), _calls(Simulator(cfg))
    assert a.equals(b)
    c = _calls(Simulator(dataclasses.replace(cfg, seed=12)))
    assert c.num_rows == a.num_rows
    for name in ("user_id", "item_id", "clicked"):
        assert not c.column(name).equals(a.column(name))


def test_rows_schema_ids_and_clock():
    start = datetime(2025, 3, 1, 12, tzinfo=timezone.utc)
    cfg = SimulatorConfig(seed=2, list_size=8, requests_per_second=50.0, start_time=start)
    sim = Simulator(cfg)
    first, second = sim.generate(100), sim.generate(150)
    assert (first.num_rows, second.num_rows) == (800, 1200)
    assert sim.requests_generated == 250 and sim.events_generated == 2000
    table = pa.concat_tables([first, second])
    assert table.schema == FILE_SCHEMA
    for name in REQUIRED_FIELDS:
        assert table.column(name).null_count == 0

    # Event ids are unique across calls; ids have the documented shapes.
    assert pc.count_distinct(table.column("event_id")).as_py() == 2000
    assert table.column("event_id")[1999].as_py() == "2-1999"
    assert pc.all(pc.match_substring_regex(table.column("user_id"), r"^u\d+$")).as_py()
    assert pc.all(pc.match_substring_regex(table.column("item_id"), r"^i\d+$")).as_py()
    assert pc.all(pc.match_substring_regex(table.column("category"), r"^c\d+$")).as_py()
    assert pc.all(pc.match_substring_regex(table.column("brand"), r"^b\d+$")).as_py()
    assert set(pc.unique(table.column("device")).to_pylist()) <= {"mobile", "desktop", "tablet"}

    # Each request: list_size rows, positions 0..7, distinct items, one user/query/time.
    df = table.to_pandas()
    per_request = df.groupby("request_id")
    assert per_request.ngroups == 250
    assert (per_request.size() == 8).all()
    assert (per_request["position"].apply(lambda s: sorted(s) == list(range(8)))).all()
    assert (per_request["item_id"].nunique() == 8).all()
    for name in ("user_id", "query", "event_time", "device"):
        assert (per_request[name].nunique() == 1).all()

    # Simulated clock: request k happens at start + k / requests_per_second.
    times = table.column("event_time").to_pylist()
    assert times[0] == start
    assert times[-1] == start + timedelta(seconds=249 / 50.0)
    assert sim.now == start + timedelta(seconds=250 / 50.0)

    # Purchases only follow clicks; prices are positive.
    purchased = table.column("purchased").to_numpy(zero_copy_only=False)
    clicked = table.column("clicked").to_numpy(zero_copy_only=False)
    assert not (purchased & ~clicked).any()
    assert pc.min(table.column("price")).as_py() > 0


def test_zero_requests_give_an_empty_event_table():
    table = Simulator(SimulatorConfig(seed=1)).generate(0)
    assert table.num_rows == 0 and table.schema == FILE_SCHEMA


def test_queries_are_tied_to_the_category_of_most_shown_items():
    cfg = SimulatorConfig(seed=4, in_category_fraction=0.8, words_per_category=12)
    df = Simulator(cfg).generate(600).to_pandas()
    per_request = df.groupby("request_id")
    top = per_request["category"].agg(lambda s: s.value_counts().index[0])
    top_share = per_request["category"].agg(lambda s: s.value_counts().iloc[0] / cfg.list_size)
    assert 0.7 < top_share.mean() < 0.9

    def query_category(query: str) -> str:
        cats = {
            int(w[3:]) if w.startswith("cat") else int(w[4:]) // cfg.words_per_category
            for w in query.split()
        }
        assert len(cats) == 1, query  # every word of a query belongs to one category
        return f"c{cats.pop()}"

    query_cat = per_request["query"].first().map(query_category)
    assert (query_cat == top).mean() > 0.95


def test_position_bias_is_visible_and_comes_from_the_examination_model():
    table = Simulator(SimulatorConfig(seed=7)).generate(20_000)
    ctr = _ctr_by_position(table)
    assert ctr[0] > 5 * ctr[9]
    assert np.all(np.diff(ctr) < 0)  # every step down the list loses clicks

    # No examination decay and a random logging order: positions are alike.
    flat = Simulator(SimulatorConfig(seed=7, position_bias_eta=0.0, ranking_noise=1e6))
    ctr_flat = _ctr_by_position(flat.generate(20_000))
    assert abs(ctr_flat[0] / ctr_flat[9] - 1.0) < 0.1


def _ctr_by_position(table: pa.Table) -> np.ndarray:
    pos = table.column("position").to_numpy()
    clicked = table.column("clicked").to_numpy(zero_copy_only=False).astype(float)
    return np.bincount(pos, weights=clicked) / np.bincount(pos)


def test_new_items_appear_after_the_arrival_schedule():
    cfg = dataclasses.replace(_STATIC, n_items=200, new_items_every_requests=100)
    cfg = dataclasses.replace(cfg, new_items_per_arrival=50)
    sim = Simulator(cfg)
    before = sim.generate(100)
    assert sim.n_items == 200 and sim.n_arrivals == 0
    assert pc.max(_item_numbers(before)).as_py() < 200

    after = sim.generate(100)  # the arrival happens before request 100
    assert sim.n_items == 250 and sim.n_arrivals == 1
    numbers = _item_numbers(after).to_numpy()
    assert numbers.max() < 250
    assert 0.1 < (numbers >= 200).mean() < 0.3  # 50 of 250 items are new

    sim.generate(150)  # passes request 200 and 300: two more arrivals
    assert (sim.n_items, sim.n_arrivals) == (350, 3)
    catalog = sim.catalog()
    assert catalog.num_rows == 350
    assert catalog.column("item_id")[349].as_py() == "i349"


def _item_numbers(table: pa.Table) -> pa.ChunkedArray:
    return pc.cast(pc.utf8_slice_codeunits(table.column("item_id"), 1), pa.int64())


def test_planted_shift_changes_click_behaviour():
    sim = Simulator(_STATIC)
    a = _cell_ctr(sim.generate(20_000), _STATIC)
    b = _cell_ctr(sim.generate(20_000), _STATIC)
    sim.planted_shift()
    assert sim.n_planted_shifts == 1
    c = _cell_ctr(sim.generate(20_000), _STATIC)
    assert _within_user_corr(a, b) > 0.9  # a stationary world repeats itself
    assert _within_user_corr(a, c) < 0.3  # after the shift, what users click has changed


def test_scheduled_drift_changes_click_behaviour():
    cfg = dataclasses.replace(_STATIC, drift_every_requests=1000, drift_strength=0.5)
    sim = Simulator(cfg)
    a = _cell_ctr(sim.generate(20_000), cfg)
    b = _cell_ctr(sim.generate(20_000), cfg)
    assert sim.n_drifts == 39
    assert _within_user_corr(a, b) < 0.5
