"""The DIGINETICA adapter on small synthetic period files (no shared data needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from freshrank.events.adapters import (
    DigineticaConfig,
    NegativeSampling,
    available_periods,
    default_data_dir,
    load_periods,
    period_events,
    read_period,
)
from freshrank.events.schema import FILE_SCHEMA, schema_problem, valid_row_mask

# Sessions interleave; within a session lines are in view order.
PERIOD_0 = [
    (1, 10), (2, 20), (1, 11), (3, 30), (2, 21), (1, 12), (3, 31), (1, 13),
    (4, 40), (4, 41), (5, 50), (5, 10), (6, 11), (6, 12), (7, 13), (7, 20),
]  # fmt: skip


def _write(directory: Path, period: int, lines: list[tuple[int, int]]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"period_{period}.txt").write_text("".join(f"{s} {i}\n" for s, i in lines))


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "diginetica"
    _write(d, 0, PERIOD_0)
    rng = np.random.default_rng(0)
    lines = [(100 + s, int(rng.integers(0, 60))) for s in range(40) for _ in range(3)]
    _write(d, 1, lines)
    return d


def _config(d: Path, **kw) -> DigineticaConfig:
    base = dict(path=str(d), candidates=6, train_candidates=3, holdout_fraction=0.3, history=2)
    base.update(kw)
    return DigineticaConfig(**base)


def _requests(table):
    """request_id -> (query, clicked item, candidate items, positions) in row order."""
    out = {}
    for row in table.to_pylist():
        _q, _pos, items, slots = out.setdefault(row["request_id"], [row["query"], None, [], []])
        if row["clicked"]:
            out[row["request_id"]][1] = row["item_id"]
        items.append(row["item_id"])
        slots.append(row["position"])
    return out


def test_every_view_after_the_first_is_a_request_with_one_click(data_dir):
    pe = period_events(read_period(data_dir, 0), _config(data_dir))
    views, sessions = len(PERIOD_0), len({s for s, _ in PERIOD_0})
    train, test = _requests(pe.train), _requests(pe.test)
    assert len(train) + len(test) == views - sessions  # 16 views, 7 sessions -> 9 requests
    for reqs, k in ((train, 3), (test, 6)):
        for _query, clicked, items, slots in reqs.values():
            assert clicked is not None and items.count(clicked) == 1  # negatives != positive
            assert len(items) == k and sorted(slots) == list(range(k))
    assert schema_problem(pe.train.schema) is None and pe.train.schema == FILE_SCHEMA
    assert valid_row_mask(pe.train).all() and valid_row_mask(pe.test).all()
    assert pc.sum(pe.train["clicked"]).as_py() * 3 == pe.train.num_rows


def test_history_is_the_previous_views_most_recent_first(data_dir):
    pe = period_events(read_period(data_dir, 0), _config(data_dir, holdout_fraction=0.01))
    reqs = {**_requests(pe.train), **_requests(pe.test)}
    by_session: dict[str, list[tuple[str, str]]] = {}
    for rid, (query, clicked, _items, _slots) in reqs.items():
        user = pe.train.filter(pc.equal(pe.train["request_id"], rid))["user_id"].to_pylist()
        user = user or pe.test.filter(pc.equal(pe.test["request_id"], rid))["user_id"].to_pylist()
        by_session.setdefault(user[0], []).append((int(rid.split("-")[1]), query, clicked))
    session_1 = sorted(by_session["s1"])  # views 10, 11, 12, 13
    assert [(q, c) for _, q, c in session_1] == [
        ("v10", "i11"),
        ("v11 v10", "i12"),
        ("v12 v11", "i13"),  # history=2: only the last two
    ]
    times = pe.train["event_time"].to_pylist()
    assert times == sorted(times)  # requests stay in time order


def test_holdout_sessions_never_appear_in_training(data_dir):
    pe = period_events(read_period(data_dir, 1), _config(data_dir, test_requests=None))
    train_users = set(pe.train["user_id"].to_pylist())
    test_users = set(pe.test["user_id"].to_pylist())
    assert train_users and test_users and not train_users & test_users
    assert len(test_users) == 12  # 30% of 40 sessions


def test_same_seed_same_tables_other_seed_other_negatives(data_dir):
    views = read_period(data_dir, 1)
    a = period_events(views, _config(data_dir, seed=3))
    b = period_events(views, _config(data_dir, seed=3))
    c = period_events(views, _config(data_dir, seed=4))
    assert a.train.equals(b.train) and a.test.equals(b.test)
    assert not a.train.equals(c.train)


def test_negative_sampling_follows_popularity_or_not(tmp_path):
    # Item 1 is half of all views (and a third of targets): popularity sampling picks it as a
    # negative about half the time it may (1/3 overall), uniform sampling about 1 in 90.
    lines = [(s, i) for s in range(300) for i in (1, 2 + s % 50, 1, 60 + s % 40)]
    _write(tmp_path, 0, lines)
    views = read_period(tmp_path, 0)
    shares = {}
    for mode in NegativeSampling:
        pe = period_events(views, _config(tmp_path, negatives=mode, candidates=20))
        negatives = pe.train.filter(pc.invert(pe.train["clicked"]))["item_id"].to_pylist()
        shares[mode] = negatives.count("i1") / len(negatives)
    assert shares[NegativeSampling.POPULARITY] > 0.25 > 0.05 > shares[NegativeSampling.UNIFORM]


def test_test_requests_cap_and_train_session_fraction(data_dir):
    full = period_events(read_period(data_dir, 1), _config(data_dir, test_requests=None))
    capped = period_events(
        read_period(data_dir, 1),
        _config(data_dir, test_requests=5, train_session_fraction=0.5),
    )
    assert len(_requests(capped.test)) == 5 < len(_requests(full.test))
    assert 0 < capped.train.num_rows < full.train.num_rows


def test_load_periods_reads_in_order_and_explains_a_missing_directory(data_dir, tmp_path):
    assert available_periods(data_dir) == [0, 1]
    periods = load_periods(_config(data_dir))
    assert [p.period for p in periods] == [0, 1] and periods[0].n_views == len(PERIOD_0)
    with pytest.raises(FileNotFoundError, match="period_\\*.txt"):
        load_periods(_config(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="DigineticaConfig.path"):
        read_period(tmp_path, 7)


def test_default_data_dir_is_relative_to_the_working_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("FRESHRANK_DIGINETICA", raising=False)
    repo = tmp_path / "repo"
    data = tmp_path / "shared" / "data" / "diginetica"
    repo.mkdir()
    data.mkdir(parents=True)
    (data / "period_3.txt").write_text("1 2\n1 3\n")
    monkeypatch.chdir(repo)
    assert default_data_dir() == Path("../shared/data/diginetica")
    assert DigineticaConfig().data_dir().resolve() == data.resolve()
    assert available_periods(DigineticaConfig().data_dir()) == [3]
    monkeypatch.setenv("FRESHRANK_DIGINETICA", str(tmp_path / "elsewhere"))
    assert default_data_dir() == tmp_path / "elsewhere"
    assert DigineticaConfig(path=str(data)).data_dir() == data  # an explicit path wins


def test_config_errors_say_what_to_change():
    with pytest.raises(ValueError, match="holdout_fraction must be in"):
        DigineticaConfig(holdout_fraction=0.0)
    with pytest.raises(ValueError, match="negatives must be a NegativeSampling"):
        DigineticaConfig(negatives="popularity")
