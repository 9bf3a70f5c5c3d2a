"""Contract suite over every drift statistic (River style: one parametrized suite, every
registered implementation).

Each statistic in `freshrank.drift.STATISTICS` runs through the same checks: a window drawn
exactly like the reference gives the statistic's null value and no alarm; a planted shift of
what it measures goes over its threshold and alarms (or, for a statistic that never alarms,
moves far from its null value); values are finite, and >= 0 unless the statistic is signed;
neither the reference nor the window is modified; merging the parts of a window in another
order gives the same value; an empty window neither crashes nor alarms; ids the reference never
saw do not crash. The suite's cases must be exactly the registry's statistics and the
`Statistic` members: a statistic registered without a case fails
`test_every_statistic_has_a_contract_case`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum

import numpy as np
import pytest

from freshrank.core.catalogue import DRIFT_STATISTICS
from freshrank.drift import (
    STATISTICS,
    DriftMonitor,
    DriftStatistic,
    DriftThresholds,
    ReferenceProfile,
    Sides,
    SketchConfig,
    Statistic,
    WindowSketch,
    compare,
    get_statistic,
    judge,
)
from freshrank.drift.statistics import LInfinity

CONFIG = SketchConfig(
    categorical_width=64,
    bloom_bits=8192,
    bloom_hashes=3,
    reference_windows=3,
    pair_width=2048,
    key_width=256,
    value_width=64,
    conditional_min_count=3,
    conditional_halve_every=8,
)
THRESHOLDS = DriftThresholds(min_rows=10, warmup_windows=0)

Rows = dict[str, np.ndarray]


def make_rows(seed: int, n: int = 1500, users: int = 60) -> Rows:
    """Encoded rows of one stationary world: each user mostly looks at one category."""
    rng = np.random.default_rng(seed)
    user = rng.integers(1, users + 1, n)
    favourite = 1 + (user * 7) % 8
    category = np.where(rng.random(n) < 0.9, favourite, rng.integers(1, 9, n))
    price = rng.lognormal(3.0, 0.8, n)
    missing = rng.random(n) < 0.05
    dense = np.stack([np.where(missing, 0.0, np.log1p(price)), missing], axis=1)
    query = rng.integers(1, 40, (n, 4))
    query[:, 2:] = 0
    return {
        "user": user,
        "item": rng.integers(1, 200, n),
        "category": category,
        "brand": rng.integers(1, 30, n),
        "device": rng.integers(1, 4, n),
        "query": query,
        "dense": dense.astype(np.float32),
        "position": rng.integers(0, 10, n),
        "label": (rng.random(n) < 0.1).astype(np.float32),
    }


def scores_of(rows: Rows) -> np.ndarray:
    """A deterministic stand-in for the model's relevance scores."""
    return rows["dense"][:, 0].astype(np.float64) - 3.0 + 0.1 * rows["category"]


def concat(parts: Iterable[Rows]) -> Rows:
    parts = list(parts)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def take(rows: Rows, index: slice) -> Rows:
    return {k: v[index] for k, v in rows.items()}


REFERENCE_ROWS = [make_rows(seed) for seed in (1, 2, 3)]


def build_reference() -> ReferenceProfile:
    """Three windows absorbed the trainer's way (each sketched against the reference so far)."""
    profile = ReferenceProfile(CONFIG)
    for rows in REFERENCE_ROWS:
        window = WindowSketch.from_rows(rows, scores=scores_of(rows), reference=profile)
        profile = profile.absorb(window)
    return profile


REFERENCE = build_reference()


def sketch(rows: Rows, reference: ReferenceProfile = REFERENCE) -> WindowSketch:
    return WindowSketch.from_rows(rows, scores=scores_of(rows), reference=reference)


def identical() -> Rows:
    """Exactly the rows the reference's kept windows hold: the reference's distribution."""
    return concat(REFERENCE_ROWS)


# Planted shifts, each of what one statistic measures (scores follow the shifted rows).


def _shift_price(rows: Rows) -> Rows:
    dense = rows["dense"].copy()
    dense[:, 0] += 2.0  # prices times e^2; the stand-in scores move with them
    return rows | {"dense": dense}


def _collapse_categories(rows: Rows) -> Rows:
    query = np.where(rows["query"] != 0, 1, 0)
    ones = np.ones_like(rows["item"])
    return rows | {k: ones for k in ("category", "brand", "device", "item")} | {"query": query}


def _strangers(rows: Rows) -> Rows:
    n = len(rows["user"])
    fresh = np.arange(10**9, 10**9 + n)
    query = np.where(rows["query"] != 0, fresh[:, None] + 7, 0)
    return rows | {"user": fresh, "item": fresh + 3, "query": query}


def _all_clicked(rows: Rows) -> Rows:
    return rows | {"label": np.ones_like(rows["label"])}


def _interests_moved(rows: Rows) -> Rows:
    return rows | {"category": 1 + (rows["user"] * 7 + 3) % 8}  # every user's favourite moved


@dataclass(frozen=True)
class StatisticCase:
    """How to drive one statistic through the contract."""

    kind: Statistic
    shift: Callable[[Rows], Rows]
    null_tolerance: float = 1e-12
    """How far from its null value the statistic may be on the reference's own rows (surprise:
    the reference has since learned those rows, so they surprise it a little less)."""


CASES: dict[Statistic, StatisticCase] = {
    c.kind: c
    for c in (
        StatisticCase(Statistic.PSI, _shift_price),
        StatisticCase(Statistic.JS, _collapse_categories),
        StatisticCase(Statistic.LINF, _collapse_categories),
        StatisticCase(Statistic.UNSEEN_RATE, _strangers),
        StatisticCase(Statistic.CTR_SHIFT, _all_clicked),
        StatisticCase(Statistic.SURPRISE, _interests_moved, null_tolerance=0.1),
    )
}


@pytest.fixture(params=list(CASES), ids=lambda kind: kind.value)
def case(request) -> StatisticCase:
    return CASES[request.param]


def values(
    stat: DriftStatistic, reference: ReferenceProfile, window: WindowSketch
) -> dict[str, float | None]:
    sides = Sides(reference, window, THRESHOLDS)
    return {f: stat.value(sides, f) for f in stat.features(CONFIG)}


def entries(reference: ReferenceProfile, window: WindowSketch, kind: Statistic) -> list:
    report = compare(reference, window, THRESHOLDS)
    return [e for e in report.entries if e.statistic is kind]


def test_identical_distributions_give_the_null_value_and_no_alarm(case):
    stat = get_statistic(case.kind)
    judged = entries(REFERENCE, sketch(identical()), case.kind)
    assert [e.feature for e in judged] == list(stat.features(CONFIG))
    for e in judged:
        assert e.value == pytest.approx(stat.null, abs=case.null_tolerance), e
        assert not e.alarm, e


def test_a_planted_shift_goes_over_the_threshold_and_alarms(case):
    stat = get_statistic(case.kind)
    judged = entries(REFERENCE, sketch(case.shift(identical())), case.kind)
    assert judged
    for e in judged:
        if stat.alarms:
            assert e.threshold is not None and stat.magnitude(e.value) > e.threshold, e
            assert e.alarm and e.severity > 1, e
        else:  # reported beside another statistic: it moves, and it never pages
            assert e.threshold is None and not e.alarm, e
            assert abs(e.value - stat.null) > 0.1, e


def test_values_are_finite_and_non_negative_unless_signed(case):
    stat = get_statistic(case.kind)
    windows = [sketch(identical()), sketch(make_rows(9))] + [
        sketch(c.shift(identical())) for c in CASES.values()
    ]
    for window in windows:
        for feature, value in values(stat, REFERENCE, window).items():
            assert value is not None and math.isfinite(value), (feature, value)
            assert stat.signed or value >= 0, (feature, value)


def test_inputs_are_not_mutated(case):
    stat = get_statistic(case.kind)
    window = sketch(case.shift(make_rows(10)))
    before = [copy.deepcopy(REFERENCE.state_dict()), copy.deepcopy(window.state_dict())]
    sides = Sides(REFERENCE, window, THRESHOLDS)
    for feature in stat.features(CONFIG):
        judge(stat, feature, stat.value(sides, feature), stat.threshold(sides, feature), THRESHOLDS)
    for state, obj in zip(before, (REFERENCE, window), strict=True):
        after = obj.state_dict()
        assert after.keys() == state.keys()
        for key, value in state.items():
            np.testing.assert_array_equal(after[key], value, err_msg=key)


def test_same_input_same_value(case):
    stat = get_statistic(case.kind)
    rows = case.shift(make_rows(11))
    assert values(stat, build_reference(), sketch(rows)) == values(stat, REFERENCE, sketch(rows))


def test_merging_window_parts_in_another_order_gives_the_same_value(case):
    stat = get_statistic(case.kind)
    rows = concat([case.shift(make_rows(12)), make_rows(13)])
    a, b, c = (sketch(take(rows, s)) for s in (slice(0, 7), slice(7, 1600), slice(1600, None)))
    forward = values(stat, REFERENCE, a.merge(b).merge(c))
    assert values(stat, REFERENCE, c.merge(a.merge(b))) == forward
    assert values(stat, REFERENCE, WindowSketch.merge_all([b, c, a])) == forward
    assert values(stat, REFERENCE, sketch(rows)) == forward  # and the whole window's


def test_an_empty_window_neither_crashes_nor_alarms(case):
    stat = get_statistic(case.kind)
    empty = WindowSketch(CONFIG)
    for value in values(stat, REFERENCE, empty).values():
        assert value is None or math.isnan(value)
    judged = entries(REFERENCE, empty, case.kind)
    assert judged and all(e.value is None and not e.alarm for e in judged)
    # Nor against an empty reference, nor through the monitor.
    assert all(not e.alarm for e in entries(ReferenceProfile(CONFIG), empty, case.kind))
    monitor = DriftMonitor(REFERENCE, thresholds=THRESHOLDS)
    report = monitor.check(empty)
    assert not [e for e in report.entries if e.statistic is case.kind and e.alarm]
    assert monitor.last_report is None and monitor.noise() == {}


def test_unseen_ids_do_not_crash(case):
    stat = get_statistic(case.kind)
    rows = _strangers(make_rows(14, n=300)) | {"category": np.full(300, 10**12)}
    for window in (sketch(rows), sketch(rows, reference=ReferenceProfile(CONFIG))):
        for value in values(stat, REFERENCE, window).values():
            assert value is None or math.isfinite(value)
        entries(REFERENCE, window, case.kind)  # judging them does not crash either


# ---------------------------------------------------------------------------------------------
# Coverage: every registered statistic, and only those, has a case


def coverage_gaps(
    registry: Iterable[DriftStatistic], cases: Iterable[object], members: Iterable[Enum]
) -> dict[str, str]:
    """What is registered, declared or tested without the other two (empty: full coverage)."""
    registered = [s.kind.value for s in registry]
    tested = {c.value for c in cases}  # type: ignore[attr-defined]
    declared = {m.value for m in members}
    gaps = {}
    for name in sorted(set(registered) | tested | declared):
        if registered.count(name) > 1:
            gaps[name] = "registered twice"
        elif name not in tested:
            gaps[name] = "registered without a contract case"
        elif name not in registered:
            gaps[name] = "a contract case for no registered statistic"
        elif name not in declared:
            gaps[name] = "registered without a Statistic member"
    return gaps


def test_every_statistic_has_a_contract_case():
    assert coverage_gaps(STATISTICS, CASES, Statistic) == {}
    assert [s.kind for s in STATISTICS] == list(Statistic) == list(CASES)
    # The telemetry catalogue (core, below drift) lists the alarm's statistic tag values.
    assert DRIFT_STATISTICS == tuple(s.name for s in STATISTICS)


def test_the_coverage_check_fails_for_a_statistic_registered_without_a_case():
    extra = Enum("Extra", {"RATIO": "ratio"})

    class Ratio(LInfinity):  # any statistic: what matters is that it has no case
        kind = extra.RATIO  # type: ignore[assignment]

    temporary = (*STATISTICS, Ratio())
    assert coverage_gaps(temporary, CASES, [*Statistic, *extra]) == {
        "ratio": "registered without a contract case"
    }
    assert coverage_gaps(temporary, CASES, Statistic) == {
        "ratio": "registered without a contract case"
    }
    missing = {k: v for k, v in CASES.items() if k is not Statistic.SURPRISE}
    assert coverage_gaps(STATISTICS, missing, Statistic) == {
        "surprise": "registered without a contract case"
    }
    assert coverage_gaps((*STATISTICS, STATISTICS[0]), CASES, Statistic) == {
        "psi": "registered twice"
    }
