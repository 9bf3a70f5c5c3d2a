"""The collisionless id table (features/idtable.py): admission, eviction, expiry, state."""

from __future__ import annotations

import io

import numpy as np
import pytest

from freshrank.features.hashing import hash_keys
from freshrank.features.idtable import IdTable, IdTableConfig, IdTableError


def _keys(*values: int) -> np.ndarray:
    return np.array(values, np.uint64)


def _rows(table: IdTable, *values: int) -> list[int]:
    return table.lookup(_keys(*values)).tolist()


# -- config ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"capacity": 0}, "capacity"),
        ({"capacity": 10, "admit_after": 0}, "admit_after"),
        ({"capacity": 10, "fallback_rows": 0}, "fallback_rows"),
        ({"capacity": 10, "expire_after_windows": 0}, "expire_after_windows"),
        ({"capacity": 10, "expire_after_s": 0.0}, "expire_after_s"),
        ({"capacity": 10, "expire_after_s": float("inf")}, "expire_after_s"),
        ({"capacity": 10, "eviction": "random"}, "eviction"),
        ({"capacity": 10, "max_admissions_per_window": 0}, "max_admissions_per_window"),
        ({"capacity": 10, "candidate_capacity": 0}, "candidate_capacity"),
        ({"capacity": True}, "capacity"),
        ({"capacity": 1.5}, "capacity"),
    ],
)
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(IdTableError, match=f"^{field} must be"):
        IdTableConfig(**kwargs)


def test_config_round_trips_through_json_and_refuses_unknown_fields():
    import json

    c = IdTableConfig(
        capacity=100,
        admit_after=3,
        fallback_rows=7,
        expire_after_windows=4,
        expire_after_s=60.0,
        eviction="lru",
        max_admissions_per_window=10,
        candidate_capacity=50,
    )
    assert IdTableConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert c.num_rows == 107 and c.candidate_limit == 50
    assert IdTableConfig(capacity=9).candidate_limit == 9
    with pytest.raises(IdTableError, match="unknown IdTableConfig field.*: colour"):
        IdTableConfig.from_dict({"capacity": 3, "colour": "red"})
    with pytest.raises(IdTableError, match="needs capacity"):
        IdTableConfig.from_dict({})


# -- admission ------------------------------------------------------------------------------


def test_admission_threshold_counts_sightings_across_windows():
    t = IdTable(IdTableConfig(capacity=10, admit_after=3, fallback_rows=5))
    u = t.observe(_keys(100, 100, 200), window=0)
    assert u.admitted_keys.tolist() == [] and t.occupancy == 0
    assert _rows(t, 100, 200) == [0, 0]  # 100 % 5, 200 % 5
    u = t.observe(_keys(100, 200), window=1)  # 100 reaches 3 sightings, 200 has 2
    assert u.admitted_keys.tolist() == [100] and u.admitted_rows.tolist() == [5]
    assert u.recycled_rows.tolist() == []  # a row handed out for the first time
    assert t.contains(_keys(100, 200)).tolist() == [True, False]
    u = t.observe(_keys(300, 300, 300), window=1)  # three in one window is enough too
    assert u.admitted_keys.tolist() == [300] and _rows(t, 100, 300) == [5, 6]


def test_admit_after_one_admits_at_first_sight_and_missing_is_never_admitted():
    t = IdTable(IdTableConfig(capacity=10, fallback_rows=3))
    u = t.observe(_keys(0, 0, 42, 7), window=0)
    assert sorted(u.admitted_keys.tolist()) == [7, 42]
    assert _rows(t, 0) == [0] and not t.contains(_keys(0))[0]
    assert u.stats.observed == 2  # missing keys are not counted
    assert u.stats.fallback == 0 and u.stats.fallback_rate == 0.0


def test_stats_count_the_window_and_reset_on_the_next():
    t = IdTable(IdTableConfig(capacity=2, admit_after=2, fallback_rows=4))
    s = t.observe(_keys(1, 1, 2, 3), window=0).stats
    assert (s.window, s.occupancy, s.admissions, s.observed, s.fallback) == (0, 1, 1, 4, 2)
    assert s.fallback_rate == 0.5 and s.candidates == 2 and s.fill == 0.5
    assert s.hits == 0 and s.hit_rate == 0.0  # nobody had a row before
    s = t.observe(_keys(2, 9, 1), window=0).stats  # same window: adds up
    assert (s.admissions, s.observed, s.fallback, s.occupancy, s.hits) == (2, 7, 3, 2, 1)
    s = t.observe(_keys(1, 2, 9), window=3).stats
    assert (s.window, s.admissions, s.observed, s.fallback, s.hits) == (3, 0, 3, 1, 2)
    assert s.hit_rate == 2 / 3 and t.stats() == s
    assert s.candidates == 2 and t.nbytes == 2 * 32 + 2 * 16 + 2 * 32  # rows, map, candidates


# -- eviction -------------------------------------------------------------------------------


def _three_incumbents(eviction: str) -> IdTable:
    """Capacity 3: key 1 seen 5 times in window 0, key 2 once in window 1, key 3 3x in window 2."""
    t = IdTable(IdTableConfig(capacity=3, fallback_rows=2, eviction=eviction))
    t.observe(_keys(*[1] * 5), window=0)
    t.observe(_keys(2), window=1)
    t.observe(_keys(3, 3, 3), window=2)
    assert _rows(t, 1, 2, 3) == [2, 3, 4]
    return t


def test_lfu_evicts_the_least_frequent_and_lru_the_least_recent():
    lfu, lru = _three_incumbents("lfu"), _three_incumbents("lru")
    u = lfu.observe(_keys(9, 9), window=3)
    assert u.evicted_keys.tolist() == [2] and u.recycled_rows.tolist() == [3]
    assert u.admitted_keys.tolist() == [9] and u.admitted_rows.tolist() == [3]
    u = lru.observe(_keys(9, 9), window=3)
    assert u.evicted_keys.tolist() == [1] and u.recycled_rows.tolist() == [2]
    assert _rows(lru, 9, 1) == [2, 1 % 2]
    # LFU, now 1 (5 sightings), 9 (2, window 3), 3 (3, window 2): 9 is the least frequent
    u = lfu.observe(_keys(8, 8, 8), window=4)
    assert u.evicted_keys.tolist() == [9]  # (2, w3) ranks below 3's (3, w2)
    assert u.stats.evictions == 1 and u.stats.occupancy == 3


def test_a_newcomer_replaces_only_an_id_it_ranks_strictly_above():
    t = _three_incumbents("lfu")
    u = t.observe(_keys(9), window=2)  # one sighting, same window as key 2's... key 2: (1, w1)
    # (1 sighting, age 0) ranks above key 2's (1 sighting, age 1): recency breaks the tie
    assert u.evicted_keys.tolist() == [2]
    u = t.observe(_keys(10), window=2)  # (1, age 0) against key 9's (1, age 0): a tie keeps 9
    assert u.evicted_keys.tolist() == [] and u.admitted_keys.tolist() == []
    assert t.contains(_keys(9, 10)).tolist() == [True, False]
    assert u.stats.candidates == 1  # 10 waits as a candidate


def test_equal_ranks_are_broken_by_key():
    t = IdTable(IdTableConfig(capacity=4, fallback_rows=1, eviction="lru"))
    t.observe(_keys(40, 10, 30, 20), window=0)
    u = t.observe(_keys(7, 5), window=1)  # two newcomers replace the two smallest keys
    assert sorted(u.evicted_keys.tolist()) == [10, 20]
    assert u.admitted_keys.tolist() == [5, 7]  # best first: equal ranks, smaller key first


def test_free_rows_are_used_before_anyone_is_evicted():
    t = IdTable(IdTableConfig(capacity=3, fallback_rows=1, expire_after_windows=2))
    t.observe(_keys(1, 2, 3), window=0)
    t.observe(_keys(1, 2), window=1)
    u = t.observe(_keys(1, 2, 4), window=2)  # 3 expires; 4 takes its freed row
    assert u.expired_keys.tolist() == [3] and u.evicted_keys.tolist() == []
    assert u.admitted_rows.tolist() == u.recycled_rows.tolist() == [3]


def test_newcomers_fill_the_free_rows_then_compete_for_the_rest():
    t = IdTable(IdTableConfig(capacity=4, fallback_rows=1, eviction="lfu"))
    t.observe(_keys(1, 1, 1, 2, 3, 3), window=0)  # 1: 3 sightings, 2: 1, 3: 2; one row free
    u = t.observe(_keys(7, 7, 8, 8, 9, 9, 9), window=1)
    # best first: 9 (3) takes the free row; 7 and 8 (2, now) compete for the two worst:
    # 2 (1, window 0) loses to 7; 3 (2, window 0) loses to 8 (2, window 1)
    assert u.admitted_keys.tolist() == [9, 7, 8]
    assert u.admitted_rows[0] == 4 and sorted(u.evicted_keys.tolist()) == [2, 3]
    assert sorted(u.recycled_rows.tolist()) == sorted(u.admitted_rows[1:].tolist()) == [2, 3]
    assert t.keys().tolist() == [1, 7, 8, 9] and u.stats.fallback == 0


# -- expiry ---------------------------------------------------------------------------------


def test_expiry_by_windows():
    t = IdTable(IdTableConfig(capacity=5, fallback_rows=2, expire_after_windows=2))
    t.observe(_keys(11, 12), window=0)
    u = t.observe(_keys(12), window=1)
    assert u.expired_keys.tolist() == [] and t.occupancy == 2
    u = t.observe(_keys(5), window=2)  # 11 unseen in windows 1 and 2
    assert u.expired_keys.tolist() == [11] and u.recycled_rows.tolist() == [2]
    assert _rows(t, 11) == [11 % 2] and t.occupancy == 2  # 12 and 5
    u = t.observe(_keys(5), window=10)
    assert sorted(u.expired_keys.tolist()) == [12] and u.stats.expiries == 1


def test_expiry_by_event_time():
    t = IdTable(IdTableConfig(capacity=5, admit_after=2, expire_after_s=60.0))
    t.observe(_keys(1, 1, 2, 3), window=0, now_s=100.0)  # 1 admitted, 2 and 3 candidates
    t.observe(_keys(3), window=0, now_s=130.0)  # 3 admitted at t=130
    u = t.observe(_keys(), window=1, now_s=160.0)
    assert u.expired_keys.tolist() == [] and u.stats.candidates == 1
    u = t.observe(_keys(), window=1, now_s=160.5)
    assert u.expired_keys.tolist() == [1] and u.stats.candidates == 0  # 2 forgotten as well
    u = t.observe(_keys(2), window=2, now_s=191.0)
    assert u.expired_keys.tolist() == [3] and u.admitted_keys.tolist() == []  # 2 starts at 1
    with pytest.raises(IdTableError, match="now_s is needed"):
        t.observe(_keys(1), window=3)


# -- bounds under pressure ------------------------------------------------------------------


def _filled(eviction: str, cap: int | None) -> IdTable:
    """A full table of 1,000 ids seen twice in window 0, then under a cap of ``cap``."""
    config = IdTableConfig(
        capacity=1000, admit_after=2, fallback_rows=16, eviction=eviction, candidate_capacity=2000
    )
    t = IdTable(config)
    incumbents = np.arange(1, 1001, dtype=np.uint64)
    t.observe(np.repeat(incumbents, 2), window=0)
    assert t.occupancy == 1000
    capped = IdTableConfig.from_dict({**config.to_dict(), "max_admissions_per_window": cap})
    return IdTable.from_state(capped, t.state_dict())  # the cap also bounds filling: fill first


def test_the_window_cap_also_bounds_filling_free_rows():
    t = IdTable(IdTableConfig(capacity=100, max_admissions_per_window=30))
    assert t.observe(np.arange(1, 101, dtype=np.uint64), window=0).stats.occupancy == 30
    assert t.observe(np.arange(1, 101, dtype=np.uint64), window=1).stats.occupancy == 60


@pytest.mark.parametrize("eviction", ["lfu", "lru"])
def test_a_burst_seen_once_evicts_nobody(eviction):
    t = _filled(eviction, cap=None)
    before = t.keys()
    burst = np.arange(10**6, 10**6 + 10_000, dtype=np.uint64)  # 10x the capacity, once each
    u = t.observe(burst, window=1)
    assert u.evicted_keys.size == 0 and u.admitted_keys.size == 0
    assert np.array_equal(t.keys(), before)
    assert u.stats.candidates == 2000  # bounded
    assert u.stats.fallback_rate == 1.0


@pytest.mark.parametrize("eviction", ["lfu", "lru"])
def test_the_window_cap_bounds_what_a_burst_seen_twice_replaces(eviction):
    t = _filled(eviction, cap=50)
    burst = np.repeat(np.arange(10**6, 10**6 + 10_000, dtype=np.uint64), 2)
    first = t.observe(burst[: len(burst) // 2], window=1)
    second = t.observe(burst[len(burst) // 2 :], window=1)  # same window: the cap is shared
    evicted = len(first.evicted_keys) + len(second.evicted_keys)
    assert second.stats.admissions == evicted == 50  # newcomers (2, age 0) outrank (2, age 1)
    assert t.occupancy == 1000 and np.isin(t.keys(), np.arange(1, 1001)).sum() == 950
    u = t.observe(burst, window=2)  # a new window: 50 more
    assert len(u.evicted_keys) == 50 and u.stats.admissions == 50


@pytest.mark.parametrize("eviction", ["lfu", "lru"])
def test_long_random_stream_stays_within_capacity_and_reports_every_change(eviction):
    rng = np.random.default_rng(7)
    cfg = IdTableConfig(
        capacity=300,
        admit_after=2,
        fallback_rows=13,
        expire_after_windows=5,
        eviction=eviction,
        max_admissions_per_window=40,
        candidate_capacity=500,
    )
    t = IdTable(cfg)
    owner: dict[int, int] = {}  # row -> key, rebuilt only from the updates
    for window in range(60):
        head = rng.zipf(1.3, 2000).astype(np.uint64) % np.uint64(2000)
        tail = rng.integers(10**9, 2**63, 300, dtype=np.uint64)
        u = t.observe(np.concatenate([head, tail]), window=window)
        assert t.occupancy <= cfg.capacity and u.stats.candidates <= cfg.candidate_limit
        assert u.stats.admissions <= 40
        for r in u.recycled_rows.tolist():
            assert owner.pop(r) in set(u.evicted_keys.tolist()) | set(u.expired_keys.tolist())
        for k, r in zip(u.admitted_keys.tolist(), u.admitted_rows.tolist(), strict=True):
            assert r not in owner and cfg.fallback_rows <= r < cfg.num_rows
            owner[r] = k
        keys = t.keys()
        assert sorted(owner.values()) == keys.tolist()
        assert dict(zip(t.lookup(keys).tolist(), keys.tolist(), strict=True)) == owner
        again = IdTable.from_state(cfg, t.state_dict())  # checks candidates: sorted, unique, new
        assert again.digest() == t.digest()
    assert t.occupancy == cfg.capacity  # the head fills it


# -- determinism and state ------------------------------------------------------------------


def _stream(seed: int, windows: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        np.concatenate(
            [
                rng.zipf(1.2, 3000).astype(np.uint64),
                rng.integers(1, 2**64 - 1, 500, dtype=np.uint64),
            ]
        )
        for _ in range(windows)
    ]


CFG = IdTableConfig(
    capacity=400,
    admit_after=2,
    fallback_rows=32,
    expire_after_windows=6,
    expire_after_s=3600.0,
    max_admissions_per_window=80,
    candidate_capacity=600,
)


def test_two_tables_fed_the_same_calls_are_identical():
    a, b, shuffled = IdTable(CFG), IdTable(CFG), IdTable(CFG)
    rng = np.random.default_rng(1)
    for w, keys in enumerate(_stream(3, 30)):
        ua = a.observe(keys, window=w, now_s=100.0 * w)
        ub = b.observe(keys.copy(), window=w, now_s=100.0 * w)
        shuffled.observe(rng.permutation(keys), window=w, now_s=100.0 * w)  # order: no matter
        assert np.array_equal(ua.admitted_keys, ub.admitted_keys)
        assert np.array_equal(ua.recycled_rows, ub.recycled_rows)
    sa, sb, sc = a.state_dict(), b.state_dict(), shuffled.state_dict()
    assert sa.keys() == sb.keys() == sc.keys()
    for name in sa:
        assert sa[name].dtype == sb[name].dtype and sa[name].tobytes() == sb[name].tobytes()
        assert sa[name].tobytes() == sc[name].tobytes(), name
    assert a.digest() == b.digest() == shuffled.digest() and len(a.digest()) == 16
    b.observe(_keys(123456789), window=30, now_s=3000.0)
    assert a.digest() != b.digest()


def _saved(table: IdTable) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **table.state_dict())
    return buf.getvalue()


def test_state_round_trips_through_savez_without_pickle():
    t = IdTable(CFG)
    stream = _stream(5, 20)
    for w, keys in enumerate(stream[:10]):
        t.observe(keys, window=w, now_s=50.0 * w)
    with np.load(io.BytesIO(_saved(t)), allow_pickle=False) as npz:
        back = IdTable.from_state(CFG, npz, num_rows=CFG.num_rows)
    assert back.digest() == t.digest() and back.window == t.window == 9
    probe = np.concatenate(stream[10:12])
    assert np.array_equal(back.lookup(probe), t.lookup(probe))
    assert back.stats() == t.stats()
    for w, keys in enumerate(stream[10:], start=10):  # and they go on the same way
        t.observe(keys, window=w, now_s=50.0 * w)
        back.observe(keys, window=w, now_s=50.0 * w)
    assert back.digest() == t.digest()


def test_a_policy_change_on_load_keeps_the_map_and_bounds_candidates():
    t = IdTable(CFG)
    for w, keys in enumerate(_stream(5, 5)):
        t.observe(keys, window=w, now_s=0.0)
    assert t.stats().candidates > 100
    tighter = IdTableConfig.from_dict({**CFG.to_dict(), "candidate_capacity": 100})
    back = IdTable.from_state(tighter, t.state_dict())
    assert np.array_equal(back.keys(), t.keys()) and back.stats().candidates == 100


def _corrupt(state: dict, name: str) -> dict:
    state = {k: v.copy() for k, v in state.items()}
    state[name].view(np.uint8)[0] ^= 1
    return state


def test_corrupt_or_mismatched_state_is_refused_with_the_reason():
    t = IdTable(CFG)
    for w, keys in enumerate(_stream(9, 4)):
        t.observe(keys, window=w, now_s=0.0)
    state = t.state_dict()
    cases = [
        (CFG, _corrupt(state, "row_freq"), "corrupt: its checksum does not match"),
        (CFG, _corrupt(state, "cand_key"), "corrupt: its checksum does not match"),
        (CFG, {k: v for k, v in state.items() if k != "row_key"}, "state lacks row_key"),
        (CFG, {**state, "row_freq": state["row_freq"].astype(np.int32)}, "row_freq: want int64"),
        (CFG, {**state, "cand_count": state["cand_count"][:-1]}, "cand_count: want int64 of"),
        (
            IdTableConfig.from_dict({**CFG.to_dict(), "capacity": 500}),
            state,
            "state is for capacity 400, fallback_rows 32 .432 rows. but the config has "
            "capacity 500, fallback_rows 32 .532 rows.",
        ),
        (CFG, {**state, "meta": np.array([99, 400, 32], np.int64)}, "unknown format"),
    ]
    for config, bad, message in cases:
        with pytest.raises(IdTableError, match=message):
            IdTable.from_state(config, bad)
    with pytest.raises(IdTableError, match="embedding table has 433 rows but .* 32 \\+ 400 = 432"):
        IdTable.from_state(CFG, state, num_rows=433)
    # a forged state with a valid checksum but a key owning two rows
    forged = {k: v.copy() for k, v in state.items()}
    forged["row_key"][1] = forged["row_key"][0]
    forged["checksum"] = _rechecksum(forged)
    with pytest.raises(IdTableError, match="a key owns two rows"):
        IdTable.from_state(CFG, forged)
    assert issubclass(IdTableError, ValueError)


def _rechecksum(state: dict) -> np.ndarray:
    import hashlib

    h = hashlib.sha256()
    for name in sorted(n for n in state if n != "checksum"):
        a = np.ascontiguousarray(state[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return np.frombuffer(h.digest(), np.uint8).copy()


# -- keys and lookup ------------------------------------------------------------------------


def test_unicode_and_very_long_ids_get_rows_of_their_own():
    ids = ["ünïcödé", "日本語の商品", "🛒🛍️", "a" * 100_000, "a" * 99_999 + "b", "x", None, ""]
    keys = hash_keys(ids, "item")
    assert keys[-2:].tolist() == [0, 0] and len(set(keys[:-2].tolist())) == 6
    t = IdTable(IdTableConfig(capacity=6, fallback_rows=3))
    t.observe(keys, window=0)
    rows = t.lookup(hash_keys(ids, "item"))
    assert sorted(rows[:-2].tolist()) == [3, 4, 5, 6, 7, 8] and rows[-2:].tolist() == [0, 0]
    assert t.lookup(hash_keys(["ünïcödé"], "user"))[0] < 3  # another salt: another id


def test_unknown_keys_get_a_fallback_row_in_range_on_both_lookup_paths():
    rng = np.random.default_rng(0)
    t = IdTable(IdTableConfig(capacity=5000, fallback_rows=97))
    known = rng.integers(1, 2**64 - 1, 5000, dtype=np.uint64)
    t.observe(known, window=0)
    unknown = rng.integers(1, 2**64 - 1, 20_000, dtype=np.uint64)
    big = t.lookup(np.concatenate([unknown, known]))  # > 4096 keys: the sorted path
    small = np.concatenate(
        [t.lookup(c) for c in np.array_split(np.concatenate([unknown, known]), 200)]
    )
    assert np.array_equal(big, small)
    assert np.array_equal(big[:20_000], (unknown % np.uint64(97)).astype(np.int64))
    assert sorted(big[20_000:].tolist()) == list(range(97, 5097))
    assert t.lookup(np.zeros((2, 3), np.uint64)).shape == (2, 3)
    assert t.lookup([]).tolist() == [] and IdTable(t.config).lookup(_keys(200)).tolist() == [6]


def test_bad_keys_and_windows_are_refused():
    t = IdTable(IdTableConfig(capacity=3))
    with pytest.raises(IdTableError, match="keys must be >= 0"):
        t.lookup([-1])
    with pytest.raises(IdTableError, match="keys must be uint64"):
        t.observe(["a"], window=0)
    for bad in (-1, 2**31, 1.0, True):
        with pytest.raises(IdTableError, match=r"window must be an int in \[0, 2\*\*31\)"):
            t.observe(_keys(1), window=bad)
    t.observe(_keys(1), window=5)
    with pytest.raises(IdTableError, match="window 4 is before the last observed window 5"):
        t.observe(_keys(1), window=4)
    assert t.lookup(np.array([1], np.int64)).tolist() == t.lookup(_keys(1)).tolist() == [1]


def test_numpy_numbers_in_a_config_become_plain_json_numbers():
    import json

    c = IdTableConfig(capacity=np.int64(5), expire_after_s=np.float32(2.5))
    assert json.loads(json.dumps(c.to_dict()))["capacity"] == 5
    assert type(c.capacity) is int and type(c.expire_after_s) is float


def test_an_id_seen_in_the_window_and_evicted_by_it_counts_as_fallback():
    t = IdTable(IdTableConfig(capacity=1, fallback_rows=2))
    t.observe(_keys(5), window=0)
    u = t.observe(_keys(5, 9, 9, 9), window=1)  # 9 (3 sightings) outranks 5 (2)
    assert u.evicted_keys.tolist() == [5] and u.admitted_keys.tolist() == [9]
    assert (u.stats.observed, u.stats.fallback) == (4, 1)
