"""Drift sketches and statistics.

One contract suite (River style) runs every sketch through the same checks: merging parts is
exactly the sketch of the whole, the same input gives the same result, an empty window changes
nothing, inputs are not mutated, unseen ids do not crash, and the state round-trips through an
``.npz`` without pickle. A second suite does the same for every divergence on counts (the drift
statistics themselves have theirs in test_drift_contract.py). Behaviour tests follow, with
numbers.
"""

from __future__ import annotations

import copy
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from freshrank.core import Telemetry
from freshrank.drift import (
    DriftMonitor,
    DriftReport,
    DriftSource,
    DriftThresholds,
    FeatureDrift,
    ReferenceProfile,
    SketchConfig,
    Statistic,
    WindowSketch,
    compare,
)
from freshrank.drift.divergences import js_divergence, linf_distance, psi, top_k_distributions
from freshrank.drift.profile import profile_from_npz_bytes, profile_npz_bytes
from freshrank.drift.sketches import BloomFilter, ConditionalCounts, HashedCounts, NumericHistogram

# Small tables keep every test well under a second.
SMALL = SketchConfig(
    categorical_width=64,
    bloom_bits=4096,
    bloom_hashes=3,
    reference_windows=3,
    pair_width=1024,
    key_width=256,
    value_width=64,
    conditional_min_count=3,
    conditional_halve_every=4,
)
LOOSE = DriftThresholds(min_rows=10, warmup_windows=0)


def encoded_rows(seed: int, n: int = 400, users: int = 50, categories: int = 8) -> dict:
    """Random rows shaped like `features.encode` output (bucket 0 = missing)."""
    rng = np.random.default_rng(seed)
    price = rng.lognormal(3.0, 0.8, n)
    missing = rng.random(n) < 0.05
    dense = np.stack([np.where(missing, 0.0, np.log1p(price)), missing], axis=1).astype(np.float32)
    query = rng.integers(0, 40, (n, 4))
    query[:, 2:] = 0
    return {
        "user": rng.integers(1, users + 1, n),
        "item": rng.integers(1, 300, n),
        "category": rng.integers(1, categories + 1, n),
        "brand": rng.integers(1, 30, n),
        "device": rng.integers(1, 4, n),
        "query": query,
        "dense": dense,
        "position": rng.integers(0, 10, n),
        "label": (rng.random(n) < 0.1).astype(np.float32),
    }


def take(rows: dict, index: Any) -> dict:
    return {k: v[index] for k, v in rows.items()}


NO_ROWS = take(encoded_rows(0), slice(0, 0))
"""Encoded rows of an empty window."""


def reference_for_tests() -> ReferenceProfile:
    profile = ReferenceProfile(SMALL)
    for seed in (101, 102):
        rows = encoded_rows(seed)
        scores = np.random.default_rng(seed).normal(0.0, 1.0, 400)
        profile = profile.absorb(WindowSketch.from_rows(rows, scores=scores, reference=profile))
    return profile


# ---------------------------------------------------------------------------------------------
# Contract suite over every sketch


@dataclass(frozen=True)
class SketchCase:
    """How to drive one kind of sketch through the contract."""

    name: str
    make: Callable[[], Any]
    batch: Callable[[int], Any]
    feed: Callable[[Any, Any], Any]  # returns the sketch (ReferenceProfile is immutable)
    split: Callable[[Any], list[Any]]
    empty: Callable[[], Any]
    unseen: Callable[[], Any]
    from_state: Callable[[dict], Any]


def _split_array(a: np.ndarray) -> list[np.ndarray]:
    return [a[:7], a[7:100], a[100:]]


def _split_rows(rows: dict) -> list[dict]:
    return [take(rows, slice(0, 7)), take(rows, slice(7, 150)), take(rows, slice(150, None))]


def _feed_numeric(s: NumericHistogram, x: np.ndarray) -> NumericHistogram:
    s.update(x)
    return s


def _feed_counts(s: HashedCounts, x: np.ndarray) -> HashedCounts:
    s.update(x)
    return s


def _feed_bloom(s: BloomFilter, x: np.ndarray) -> BloomFilter:
    s.add(x)
    return s


def _feed_conditional(s: ConditionalCounts, x: np.ndarray) -> ConditionalCounts:
    s.update(x[:, 0], x[:, 1])
    return s


REFERENCE = reference_for_tests()


def _feed_window(s: WindowSketch, rows: dict) -> WindowSketch:
    scores = np.asarray(rows["dense"][:, 0], dtype=np.float64) - 3.0  # a stand-in model score
    s.update(rows, scores=scores, reference=REFERENCE)
    return s


def _feed_profile(p: ReferenceProfile, rows: dict) -> ReferenceProfile:
    return p.absorb(WindowSketch.from_rows(rows, SMALL, scores=rows["dense"][:, 0]))


def _numbers(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 2.0, 300)
    x[::17] = np.nan
    x[::23] = np.inf
    return x


def _ids(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 500, 300)


def _pairs(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(1, 50, 300), rng.integers(1, 9, 300)], axis=1)


def _profile_split(rows: dict) -> list[dict]:
    return _split_rows(rows)


CASES = [
    SketchCase(
        "numeric_histogram",
        lambda: NumericHistogram(np.linspace(-4, 4, 17)),
        _numbers,
        _feed_numeric,
        _split_array,
        lambda: np.zeros(0),
        lambda: np.array([1e300, -1e300, np.nan]),
        NumericHistogram.from_state,
    ),
    SketchCase(
        "hashed_counts",
        lambda: HashedCounts(64, "category"),
        _ids,
        _feed_counts,
        _split_array,
        lambda: np.zeros(0, dtype=np.int64),
        lambda: np.array([10**15, 2**62, 7]),
        HashedCounts.from_state,
    ),
    SketchCase(
        "bloom_filter",
        lambda: BloomFilter(2048, 3, "item"),
        _ids,
        _feed_bloom,
        _split_array,
        lambda: np.zeros(0, dtype=np.int64),
        lambda: np.array([10**15, 2**62]),
        BloomFilter.from_state,
    ),
    SketchCase(
        "conditional_counts",
        lambda: ConditionalCounts(512, 128, 32, "user_category"),
        _pairs,
        _feed_conditional,
        _split_array,
        lambda: np.zeros((0, 2), dtype=np.int64),
        lambda: np.array([[10**12, 5], [3, 10**9]]),
        ConditionalCounts.from_state,
    ),
    SketchCase(
        "window_sketch",
        lambda: WindowSketch(SMALL),
        encoded_rows,
        _feed_window,
        _split_rows,
        lambda: take(encoded_rows(0), slice(0, 0)),
        lambda: encoded_rows(7, n=50, users=10**6) | {"item": np.full(50, 99_999)},
        WindowSketch.from_state,
    ),
    SketchCase(
        "reference_profile",
        lambda: ReferenceProfile(SMALL),
        encoded_rows,
        _feed_profile,
        _profile_split,
        lambda: take(encoded_rows(0), slice(0, 0)),
        lambda: encoded_rows(8, n=50, users=10**6),
        ReferenceProfile.from_state,
    ),
]


def _merge_parts(case: SketchCase, parts: list[Any]) -> Any:
    if case.name == "reference_profile":
        # Profiles merge window by window: each worker profiles its part of the same window.
        profiles = [case.feed(case.make(), part) for part in parts]
        out = profiles[0]
        for p in profiles[1:]:
            out = out.merge(p)
        return out
    sketches = [case.feed(case.make(), part) for part in parts]
    out = sketches[0]
    for s in sketches[1:]:
        out = out.merge(s)
    return out


@pytest.fixture(params=CASES, ids=lambda c: c.name)
def case(request) -> SketchCase:
    return request.param


def test_merge_of_parts_is_exactly_the_sketch_of_the_whole(case):
    batch = case.batch(1)
    whole = case.feed(case.make(), batch)
    merged = _merge_parts(case, case.split(batch))
    assert merged == whole
    for key, value in whole.state_dict().items():
        np.testing.assert_array_equal(merged.state_dict()[key], value, err_msg=key)


def test_merge_does_not_change_its_operands(case):
    a = case.feed(case.make(), case.batch(2))
    b = case.feed(case.make(), case.batch(3))
    a_state = copy.deepcopy(a.state_dict())
    b_state = copy.deepcopy(b.state_dict())
    a.merge(b)
    for before, sketch in ((a_state, a), (b_state, b)):
        for key, value in before.items():
            np.testing.assert_array_equal(sketch.state_dict()[key], value, err_msg=key)


def test_same_input_same_result(case):
    first = case.feed(case.make(), case.batch(4))
    second = case.feed(case.make(), case.batch(4))
    other = case.feed(case.make(), case.batch(5))
    assert first == second
    assert first != other


def test_empty_window_is_a_no_op(case):
    fresh = case.make()
    assert case.feed(case.make(), case.empty()) == fresh
    full = case.feed(case.make(), case.batch(6))
    assert case.feed(case.feed(case.make(), case.batch(6)), case.empty()) == full


def test_inputs_are_not_mutated(case):
    batch = case.batch(9)
    before = copy.deepcopy(batch)
    case.feed(case.make(), batch)
    if isinstance(batch, dict):
        for key in before:
            np.testing.assert_array_equal(batch[key], before[key], err_msg=key)
    else:
        np.testing.assert_array_equal(batch, before)


def test_unseen_ids_do_not_crash(case):
    sketch = case.feed(case.feed(case.make(), case.batch(10)), case.unseen())
    assert sketch.state_dict()


def test_state_round_trips_through_npz_without_pickle(case):
    sketch = case.feed(case.make(), case.batch(11))
    state = sketch.state_dict()
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in state.values())
    buf = io.BytesIO()
    np.savez(buf, **state)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as npz:
        loaded = case.from_state({k: npz[k] for k in npz.files})
    assert loaded == sketch
    # The loaded sketch keeps working: feeding both the same batch keeps them equal.
    assert case.feed(loaded, case.batch(12)) == case.feed(sketch, case.batch(12))


def test_merge_refuses_another_layout():
    with pytest.raises(ValueError, match="different bin edges"):
        NumericHistogram((0.0, 1.0)).merge(NumericHistogram((0.0, 2.0)))
    with pytest.raises(ValueError, match="width or salt"):
        HashedCounts(8, "a").merge(HashedCounts(8, "b"))
    with pytest.raises(ValueError, match="bits, hashes or salt"):
        BloomFilter(64, 2, "a").merge(BloomFilter(128, 2, "a"))
    with pytest.raises(ValueError, match="widths or salt"):
        ConditionalCounts(8, 8, 8, "a").merge(ConditionalCounts(16, 8, 8, "a"))
    with pytest.raises(ValueError, match="configs"):
        WindowSketch(SMALL).merge(WindowSketch(SketchConfig()))
    with pytest.raises(ValueError, match="same windows"):
        ReferenceProfile(SMALL).merge(REFERENCE)
    with pytest.raises(ValueError, match="another SketchConfig"):
        WindowSketch.from_rows(encoded_rows(1), SketchConfig(), reference=REFERENCE)


# ---------------------------------------------------------------------------------------------
# Contract suite over every divergence on counts


STATISTICS = {
    "psi": psi,
    "js": js_divergence,
    "linf": linf_distance,
}


@pytest.fixture(params=sorted(STATISTICS))
def statistic(request) -> Callable:
    return STATISTICS[request.param]


def test_statistic_is_zero_on_identical_shares_and_scale_free(statistic):
    a = np.array([5, 10, 0, 85])
    assert statistic(a, a) == 0.0
    assert statistic(a, 3 * a) == pytest.approx(0.0, abs=1e-12)
    b = np.array([10, 10, 5, 75])
    assert statistic(a, b) == pytest.approx(statistic(2 * a, 7 * b), rel=1e-12)


def test_statistic_same_input_same_result_and_inputs_untouched(statistic):
    a, b = np.array([3, 1, 4, 1, 5]), np.array([2, 7, 1, 8, 2])
    a0, b0 = a.copy(), b.copy()
    assert statistic(a, b) == statistic(a, b) > 0
    np.testing.assert_array_equal(a, a0)
    np.testing.assert_array_equal(b, b0)


def test_statistic_of_an_empty_window_is_nan(statistic):
    assert math.isnan(statistic([1, 2, 3], [0, 0, 0]))
    assert math.isnan(statistic([0, 0], [1, 1]))


def test_statistic_refuses_mismatched_or_negative_counts(statistic):
    with pytest.raises(ValueError, match="differ in length"):
        statistic([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match=">= 0"):
        statistic([1, -2], [1, 2])


def test_js_and_linf_are_symmetric_and_bounded():
    a, b = np.array([1, 0, 0]), np.array([0, 0, 9])
    assert js_divergence(a, b) == js_divergence(b, a) == 1.0
    assert linf_distance(a, b) == linf_distance(b, a) == 1.0


def test_psi_grows_with_the_shift():
    base = np.array([25, 25, 25, 25])
    small, large = np.array([28, 24, 24, 24]), np.array([55, 15, 15, 15])
    assert 0 < psi(base, small) < 0.01 < 0.25 < psi(base, large)


def test_top_k_keeps_a_newly_popular_key_apart():
    ref = np.zeros(100, dtype=np.int64)
    ref[:5] = [50, 40, 30, 20, 10]
    cur = ref.copy()
    cur[77] = 100  # a key the reference never had in its top-k
    p, q = top_k_distributions(ref, cur, k=3)
    assert p.tolist() == [50, 40, 30, 0, 30]  # cells 0, 1, 2, 77, other
    assert q.tolist() == [50, 40, 30, 100, 30]


# ---------------------------------------------------------------------------------------------
# compare / DriftMonitor as a contract: the judged "statistic" of a whole window


def test_compare_empty_window_judges_nothing_and_raises_no_alarm():
    empty = WindowSketch(SMALL)
    report = compare(REFERENCE, empty, LOOSE)
    assert report.rows == 0 and not report.alarm
    assert all(e.value is None for e in report.entries)


def test_compare_is_pure_and_repeatable():
    window = WindowSketch.from_rows(encoded_rows(20), reference=REFERENCE)
    ref_state = copy.deepcopy(REFERENCE.state_dict())
    win_state = copy.deepcopy(window.state_dict())
    first = compare(REFERENCE, window, LOOSE)
    assert compare(REFERENCE, window, LOOSE) == first
    for before, obj in ((ref_state, REFERENCE), (win_state, window)):
        for key, value in before.items():
            np.testing.assert_array_equal(obj.state_dict()[key], value, err_msg=key)


def test_first_window_without_reference_is_not_judged():
    window = WindowSketch.from_rows(encoded_rows(21), SMALL)
    report = compare(ReferenceProfile(SMALL), window, LOOSE)
    assert report.reference_rows == 0
    assert not report.alarm and all(e.value is None for e in report.entries)


# ---------------------------------------------------------------------------------------------
# Behaviour, with numbers


def test_window_counts_ctr_price_and_scores_exactly():
    rows = encoded_rows(30, n=200)
    scores = np.linspace(-3.0, 3.0, 200)
    w = WindowSketch.from_rows(rows, SMALL, scores=scores)
    assert w.rows == 200
    assert w.ctr == pytest.approx(float(rows["label"].mean()))
    missing = int(rows["dense"][:, 1].sum())
    assert w.numeric["price"].counts[0] == missing
    assert w.numeric["price"].total == 200
    assert w.numeric["score"].total == 200 and w.numeric["score"].counts[0] == 0
    assert w.categorical["query"].total == int((rows["query"] != 0).sum())


def test_served_requests_have_no_ctr():
    w = WindowSketch.from_rows(encoded_rows(31), SMALL, labelled=False)
    assert w.ctr is None
    report = compare(REFERENCE, w, LOOSE)
    assert report.value("ctr", Statistic.CTR_SHIFT) is None


def test_scores_must_match_rows():
    with pytest.raises(ValueError, match="3 scores for 400 rows"):
        WindowSketch.from_rows(encoded_rows(32), SMALL, scores=np.zeros(3))


def test_unseen_rate_counts_ids_the_reference_never_saw():
    n = 100
    seen = {"user": np.arange(1, n + 1), "item": np.arange(1, n + 1)}
    base = encoded_rows(40, n=n) | seen
    profile = ReferenceProfile.from_rows(base, SMALL)
    half_new = encoded_rows(41, n=n) | {
        "user": np.concatenate([np.arange(1, 51), np.arange(1001, 1051)]),
        "item": np.concatenate([np.arange(1, 76), np.arange(5001, 5026)]),
    }
    w = WindowSketch.from_rows(half_new, reference=profile)
    assert w.unseen_rate("user") == 0.5
    assert w.unseen_rate("item") == 0.25
    # Merged parts give the same counters.
    parts = [
        WindowSketch.from_rows(take(half_new, s), reference=profile)
        for s in (slice(0, 30), slice(30, None))
    ]
    assert parts[0].merge(parts[1]).unseen_rate("user") == 0.5


def test_unseen_rate_alarms_only_above_the_references_own_rate():
    profile = ReferenceProfile(SMALL)
    for seed in range(3):
        rows = encoded_rows(50 + seed, users=40)
        profile = profile.absorb(WindowSketch.from_rows(rows, reference=profile))
    assert profile.has_unseen_baseline("user")
    baseline = profile.unseen_baseline("user")
    familiar = WindowSketch.from_rows(encoded_rows(60, users=40), reference=profile)
    strangers = WindowSketch.from_rows(
        encoded_rows(61) | {"user": np.arange(10_000, 10_400)}, reference=profile
    )
    ok = compare(profile, familiar, LOOSE).get("user", Statistic.UNSEEN_RATE)
    bad = compare(profile, strangers, LOOSE).get("user", Statistic.UNSEEN_RATE)
    assert ok.threshold == pytest.approx(baseline + LOOSE.unseen_excess)
    assert ok.value <= baseline + 0.01 and not ok.alarm
    assert bad.value == 1.0 and bad.alarm


def test_surprise_flags_users_whose_interests_moved():
    n, users = 600, 20
    rng = np.random.default_rng(70)
    user = rng.integers(1, users + 1, n)

    def rows_with(category: np.ndarray, seed: int) -> dict:
        return encoded_rows(seed, n=n) | {"user": user, "category": category}

    favourite = 1 + (user % 5)  # each user sticks to one category
    profile = ReferenceProfile(SMALL)
    for seed in range(3):
        profile = profile.absorb(
            WindowSketch.from_rows(rows_with(favourite, seed), reference=profile)
        )
    same = WindowSketch.from_rows(rows_with(favourite, 10), reference=profile)
    moved = WindowSketch.from_rows(rows_with(1 + (user + 2) % 5, 11), reference=profile)
    calm = compare(profile, same, LOOSE).get("user_category", Statistic.SURPRISE)
    shifted = compare(profile, moved, LOOSE).get("user_category", Statistic.SURPRISE)
    assert abs(calm.value) < 0.05 and not calm.alarm
    assert shifted.value > 2.0 and shifted.alarm  # several nats: each user left their category
    # The marginal category mix barely moved, so JS alone would not have caught it.
    assert compare(profile, moved, LOOSE).value("category", Statistic.JS) < 0.05


def test_reference_ring_keeps_the_last_windows_and_forgets_interests():
    profile = ReferenceProfile(SMALL)
    batches = [encoded_rows(80 + i, n=50) for i in range(5)]
    windows = [WindowSketch.from_rows(b, SMALL) for b in batches]
    for i, w in enumerate(windows):
        profile = profile.absorb(w)
        assert len(profile.windows) == min(i + 1, SMALL.reference_windows)
    assert profile.windows_absorbed == 5
    assert profile.rows == 3 * 50
    assert profile.windows == tuple(w.without_ids() for w in windows[-3:])
    assert profile.distribution().rows == 150
    # Ids stay known after their window left the ring.
    assert profile.seen["user"].contains(batches[0]["user"]).all()
    # Interests: windows 1-4 summed, halved after the 4th (halve_every=4), then window 5.
    expected = windows[0].conditional["user_category"]
    for w in windows[1:4]:
        expected = expected.merge(w.conditional["user_category"])
    expected = expected.halve().merge(windows[4].conditional["user_category"])
    assert profile.conditional["user_category"] == expected
    assert profile.conditional["user_category"].total < 5 * 50


def test_halving_forgets_exactly_half():
    c = ConditionalCounts(64, 16, 8, "x")
    c.update(np.array([1, 1, 1, 2, 2]), np.array([3, 3, 3, 4, 4]))
    h = c.halve()
    assert c.total == 5 and h.keys.sum() == 1 + 1  # 3 // 2 + 2 // 2
    assert h.pairs.sum() == 2


def test_profile_npz_bytes_round_trip_and_compactness():
    data = profile_npz_bytes(REFERENCE)
    assert profile_from_npz_bytes(data) == REFERENCE
    default = ReferenceProfile().absorb(WindowSketch.from_rows(encoded_rows(90)))
    raw = sum(a.nbytes for a in default.state_dict().values())
    packed = len(profile_npz_bytes(default))
    assert packed < raw / 10  # sparse filters and tables compress well


def test_state_from_a_newer_format_is_refused():
    state = REFERENCE.state_dict()
    state["layout/format"] = np.array([99])
    with pytest.raises(ValueError, match="format 99 is not supported"):
        ReferenceProfile.from_state(state)


def test_report_dict_round_trip_and_leaders():
    report = DriftReport(
        rows=100,
        reference_rows=300,
        entries=(
            FeatureDrift("price", Statistic.PSI, 0.05, 0.2),
            FeatureDrift("category", Statistic.JS, 0.09, 0.05, alarm=True),
            FeatureDrift("user", Statistic.UNSEEN_RATE, None, None),
            FeatureDrift("ctr", Statistic.CTR_SHIFT, -0.2, 0.25),
        ),
    )
    assert DriftReport.from_dict(report.to_dict()) == report
    assert [e.feature for e in report.leaders(2)] == ["category", "ctr"]
    assert report.alarm and report.alarms == (report.entries[1],)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"price_edges": (1.0, 0.5)}, "strictly increasing"),
        ({"categorical_width": 1}, "categorical_width must be an int >= 2"),
        ({"bloom_bits": 100}, "multiple of 8"),
        ({"unseen_features": ("nope",)}, "encoded id keys"),
        ({"conditional_pairs": (("user", "user"),)}, "two different id keys"),
        ({"conditional_pairs": (("user", "query"),)}, "two different id keys"),
        ({"conditional_alpha": 0.0}, "conditional_alpha must be > 0"),
    ],
)
def test_sketch_config_says_what_is_wrong(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        SketchConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"psi": 0}, "psi must be a finite number > 0"),
        ({"js": 2.0}, "must be <= 1"),
        ({"min_rows": 0}, "min_rows must be an int >= 1"),
        ({"noise_z": -1.0}, "noise_z must be a finite number >= 0"),
        ({"noise_min_windows": 40}, "noise_min_windows <= noise_windows"),
    ],
)
def test_thresholds_say_what_is_wrong(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        DriftThresholds(**kwargs)


# ---------------------------------------------------------------------------------------------
# The monitor exports what it judged


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_trainer_monitor_exports_every_judged_statistic_and_counts_alarms():
    registry = CollectorRegistry()
    monitor = DriftMonitor(REFERENCE, Telemetry.for_prometheus_client(registry), LOOSE)
    rows = encoded_rows(95) | {"category": np.full(400, 3)}  # one category only: JS alarms
    report = monitor.check(monitor.sketch(rows, scores=np.zeros(400)))
    samples = scrape(registry)
    js = report.get("category", Statistic.JS)
    assert js.alarm
    assert samples[("freshrank_drift_js", (("feature", "category"),))] == pytest.approx(js.value)
    assert samples[("freshrank_drift_psi", (("feature", "price"),))] == pytest.approx(
        report.value("price", Statistic.PSI)
    )
    assert samples[("freshrank_score_psi", (("source", "trainer"),))] == pytest.approx(
        report.value("score", Statistic.PSI)
    )
    assert samples[("freshrank_ctr_shift", ())] == pytest.approx(
        report.value("ctr", Statistic.CTR_SHIFT)
    )
    assert ("freshrank_drift_unseen_rate", (("feature", "user"),)) in samples
    assert ("freshrank_drift_surprise", (("feature", "user_category"),)) in samples
    alarms = {k[1]: v for k, v in samples.items() if k[0] == "freshrank_drift_alarm"}
    assert alarms[(("feature", "category"), ("statistic", "js"))] == 1.0
    assert alarms[(("feature", "brand"), ("statistic", "js"))] == 0.0
    assert sum(alarms.values()) == len(report.alarms)
    judged = [e for e in report.entries if e.value is not None and e.threshold is not None]
    assert len(alarms) == len([e for e in judged if e.statistic is not Statistic.LINF])
    # An empty window exports nothing new.
    monitor.check(monitor.sketch(NO_ROWS))
    assert scrape(registry) == samples


def test_serving_monitor_exports_only_score_drift():
    registry = CollectorRegistry()
    monitor = DriftMonitor(
        REFERENCE, Telemetry.for_prometheus_client(registry), LOOSE, source=DriftSource.SERVING
    )
    window = monitor.sketch(NO_ROWS)
    assert not window.track_ids
    window.update(encoded_rows(96), scores=np.full(400, 5.0), labelled=False)
    report = monitor.check(window)
    names = {name for name, _ in scrape(registry)}
    assert names == {"freshrank_score_psi"}
    value = scrape(registry)[("freshrank_score_psi", (("source", "serving"),))]
    assert value == pytest.approx(report.value("score", Statistic.PSI)) and value > 1.0


def test_monitor_absorb_moves_the_reference_on():
    monitor = DriftMonitor(ReferenceProfile(SMALL))
    window = monitor.sketch(encoded_rows(97))
    monitor.absorb(window)
    assert monitor.reference.windows_absorbed == 1
    assert monitor.reference.rows == 400
    monitor.absorb(monitor.sketch(NO_ROWS))
    assert monitor.reference.windows_absorbed == 1


def test_serving_checks_a_score_histogram_cheaply():
    registry = CollectorRegistry()
    monitor = DriftMonitor(
        REFERENCE, Telemetry.for_prometheus_client(registry), LOOSE, source=DriftSource.SERVING
    )
    hist = monitor.score_histogram()
    entry = monitor.check_scores(hist)
    assert entry.value is None and not entry.alarm and scrape(registry) == {}
    rng = np.random.default_rng(3)
    for _ in range(20):  # like the reference's N(0, 1) scores
        hist.update(rng.normal(0.0, 1.0, 50))
    calm = monitor.check_scores(hist)
    assert calm.value < 0.1 and not calm.alarm
    shifted = monitor.score_histogram()
    shifted.update(rng.normal(2.0, 1.0, 1000))
    moved = monitor.check_scores(shifted)
    assert moved.value > 1.0 and moved.alarm
    samples = scrape(registry)
    assert samples[("freshrank_score_psi", (("source", "serving"),))] == pytest.approx(moved.value)
    # The same statistic as a full window sketch would give.
    window = WindowSketch(SMALL, track_ids=False).with_scores(shifted)
    window.rows = shifted.total
    assert compare(REFERENCE, window, LOOSE).value("score", Statistic.PSI) == moved.value


def test_thresholds_follow_each_statistics_own_noise():
    thresholds = DriftThresholds(min_rows=10, noise_z=3.0, noise_windows=10, noise_min_windows=4)
    monitor = DriftMonitor(REFERENCE, thresholds=thresholds)
    assert monitor.noise() == {}
    reports = [monitor.check(monitor.sketch(encoded_rows(400 + i, n=60))) for i in range(12)]
    # Tiny windows: JS is inflated by sampling, and the threshold rises above it.
    js = [r.get("query", Statistic.JS) for r in reports]
    history = np.array([e.value for e in js[-10:]])
    centre = float(np.median(history))
    spread = 1.4826 * float(np.median(np.abs(history - centre)))
    assert monitor.noise()[("query", Statistic.JS)] == pytest.approx((centre, spread))
    assert js[0].threshold == thresholds.js  # no history yet: the fixed threshold
    nxt = monitor.check(monitor.sketch(encoded_rows(500, n=60))).get("query", Statistic.JS)
    assert nxt.threshold == pytest.approx(max(thresholds.js, centre + 3.0 * spread))
    assert nxt.threshold > thresholds.js
    # The history is part of the monitor's state, and a monitor resumes from it.
    again = DriftMonitor.from_state(monitor.state_dict(), thresholds=thresholds)
    assert again.noise() == monitor.noise()
    assert again.reference == monitor.reference
    # noise_z = 0: fixed thresholds only.
    fixed = DriftMonitor.from_state(
        monitor.state_dict(), thresholds=DriftThresholds(min_rows=10, noise_z=0)
    )
    entry = fixed.check(fixed.sketch(encoded_rows(501, n=60))).get("query", Statistic.JS)
    assert entry.threshold == 0.05


def test_monitor_judges_small_windows_together():
    thresholds = DriftThresholds(min_rows=1000)
    monitor = DriftMonitor(REFERENCE, thresholds=thresholds)
    parts = [encoded_rows(600 + i, n=400) for i in range(3)]
    sketches = []
    reports = []
    for rows in parts:  # like the trainer: judge, then train on (absorb) the window
        sketches.append(monitor.sketch(rows))
        reports.append(monitor.check(sketches[-1]))
        if len(reports) == 1:
            assert monitor.check(monitor.sketch(NO_ROWS)).rows == 0  # changes nothing
        monitor.absorb(sketches[-1])
    assert [r.rows for r in reports] == [400, 800, 1200]
    assert all(e.value is None for r in reports[:2] for e in r.entries)
    assert monitor.pending_rows == 0
    # Judged as one window, against the reference from before the first of them.
    whole = WindowSketch.merge_all(sketches)
    assert reports[2] == compare(REFERENCE, whole, thresholds)
    assert reports[2].reference_rows == REFERENCE.rows
    assert monitor.reference.windows_absorbed == REFERENCE.windows_absorbed + 3


def test_score_reference_from_the_current_model_ignores_the_model_changing_itself():
    """A model still learning moves its own score distribution; on stationary rows that must not
    read as score drift once the reference holds the current model's scores."""

    def model(version: int, rows: dict) -> np.ndarray:  # a deterministic "model" per version
        return (version * 1.5) * rows["dense"][:, 0] - 2.0 * version + rows["category"] * 0.1

    profile = ReferenceProfile(SMALL)
    old_rows = encoded_rows(201, n=5000)
    profile = profile.absorb(WindowSketch.from_rows(old_rows, SMALL, scores=model(1, old_rows)))
    new_rows = encoded_rows(202, n=5000)  # same distribution: no drift in the world
    window = WindowSketch.from_rows(new_rows, SMALL, scores=model(2, new_rows), reference=profile)

    stale = compare(profile, window, LOOSE).get("score", Statistic.PSI)
    assert stale.alarm and stale.value > 1.0  # model 1's scores against model 2's: "drift"

    current = profile.with_model_scores(model(2, old_rows))  # model 2 on what it trained on
    fresh = compare(current, window, LOOSE).get("score", Statistic.PSI)
    assert not fresh.alarm and fresh.value < 0.05
    # The rest of the reference is untouched, and it survives a checkpoint round trip.
    assert current.rows == profile.rows and current.windows_absorbed == 1
    back = profile_from_npz_bytes(profile_npz_bytes(current))
    assert back.distribution().numeric["score"] == current.distribution().numeric["score"]


def test_no_alarm_while_the_reference_warms_up():
    """A reference of a window or two judges a shifted window (values reported) but pages only
    once it has absorbed ``warmup_windows`` windows."""
    shifted = encoded_rows(301, n=2000, categories=3)  # other category mix: JS drift
    strict = DriftThresholds(min_rows=10, warmup_windows=3)
    profile = ReferenceProfile(SMALL)
    verdicts = []
    for seed in (302, 303, 304):
        rows = encoded_rows(seed, n=2000)
        profile = profile.absorb(WindowSketch.from_rows(rows, SMALL, reference=profile))
        window = WindowSketch.from_rows(shifted, SMALL, reference=profile)
        entry = compare(profile, window, strict).get("category", Statistic.JS)
        verdicts.append((profile.windows_absorbed, entry.value > entry.threshold, entry.alarm))
    assert verdicts == [(1, True, False), (2, True, False), (3, True, True)]
