"""The backtest library end to end on tiny simulator data (in process, no Ray): the figures of
the result object. Report files, tables and plots: test_backtest_harness.py; the command:
test_backtest_cli.py."""

from __future__ import annotations

import json
import math

import experimental_strategies
import numpy as np
import pytest
from _tiny import MODEL
from experimental_strategies import AverageConfig, DarkReplayConfig

from freshrank.events.simulator import SimulatorConfig
from freshrank.learn.backtest import (
    Arm,
    BacktestConfig,
    BacktestProgress,
    ParquetData,
    Schedule,
    SimulatorData,
    arms_from_names,
    recovery_windows,
    run_backtest,
    run_periods,
)
from freshrank.learn.strategies import CombinedConfig, LwFConfig, ReplayConfig

DATA = SimulatorData(
    SimulatorConfig(seed=1, n_users=60, n_items=40, n_categories=4, list_size=5),
    periods=3,
    requests_per_period=120,
    shift_at=2,
    test_fraction=0.25,
)
ARMS = (
    Arm("static", Schedule.STATIC),
    Arm("finetune"),
    Arm("replay+lwf", strategy=CombinedConfig((ReplayConfig(capacity=200), LwFConfig()))),
    Arm("joint", Schedule.JOINT),
)


def _config(**kw) -> BacktestConfig:
    base = dict(
        name="tiny",
        data=DATA,
        arms=ARMS,
        model=MODEL,
        batch_size=64,
        forgetting_requests=10,
        k=3,
    )
    base.update(kw)
    return BacktestConfig(**base)


@pytest.fixture(scope="module")
def periods():
    return DATA.load()


@pytest.fixture(scope="module")
def report(periods):
    return run_periods(periods, _config())


def test_report_has_every_arm_period_and_metric(report, periods):
    assert report.periods == ("sim0", "sim1", "sim2")
    assert [a.name for a in report.arms] == ["static", "finetune", "replay+lwf", "joint"]
    for arm in report.arms:
        assert len(arm.prequential) == 2  # tested on periods 1 and 2
        for p, metrics in enumerate(arm.prequential, start=1):
            ages = {
                f"{m} {age}" for m in ("recall@3", "clicks") for age in ("new", "older", "unseen")
            }
            base = {"auc", "logloss", "gauc", "ndcg@10", "recall@3", "mrr@3"}
            assert set(metrics) == base | ages
            assert 0.0 <= metrics["auc"] <= 1.0 and metrics["logloss"] > 0
            clicks = sum(metrics[f"clicks {age}"] for age in ("new", "older", "unseen"))
            assert clicks == sum(periods[p].test["clicked"].to_pylist())
        assert set(arm.accuracy) == {"auc", "logloss", "gauc", "ndcg@10", "recall@3", "mrr@3"}
        matrix = arm.accuracy["auc"]
        assert matrix.shape == (2, 3)  # after training through period 0 and 1; slices 0..2
        assert np.isfinite(matrix[0, :2]).all() and np.isnan(matrix[0, 2])
        assert np.isfinite(matrix[1]).all()
        assert arm.bwt("auc") == pytest.approx(matrix[1, 0] - matrix[0, 0])
        assert arm.train_s >= 0 and arm.eval_s > 0
    assert arm.series("auc") == [m["auc"] for m in arm.prequential]
    clicks = arm.clicks_by_item_age()
    assert sum(clicks.values()) == sum(sum(p.test["clicked"].to_pylist()) for p in periods[1:])
    recall = arm.recall_by_item_age(3)
    assert set(recall) == {"new", "older", "unseen"}
    assert all(math.isnan(v) or 0.0 <= v <= 1.0 for v in recall.values())


def test_events_follow_each_schedule(report, periods):
    rows = [p.train.num_rows for p in periods]
    assert report.events_per_period == tuple(rows)
    static, finetune, replay_lwf, joint = report.arms
    assert static.events_trained == rows[0]
    assert finetune.events_trained == finetune.new_events == rows[0] + rows[1]
    assert joint.events_trained == rows[0] + (rows[0] + rows[1])  # from scratch each period
    assert joint.events_trained > finetune.events_trained
    # replay mixes round(0.5 * n) old rows into every step after the first period
    assert replay_lwf.new_events == finetune.new_events
    assert finetune.events_trained < replay_lwf.events_trained <= 1.5 * rows[1] + rows[0] + 2
    # The prequential scores of the first tested period come from the same period-0 training
    # for static and finetune (same seed, same rows), so they agree exactly.
    np.testing.assert_equal(static.prequential[0], finetune.prequential[0])  # NaN == NaN


def test_same_config_same_numbers(report, periods):
    again = run_periods(periods, _config(arms=ARMS[1:2]))
    np.testing.assert_equal(again.arm("finetune").prequential, report.arm("finetune").prequential)
    assert report.gap_closed("finetune", "auc") == pytest.approx(0.0)
    assert report.gap_closed("joint", "auc") == pytest.approx(1.0)
    assert math.isnan(report.gap_closed("nope", "auc"))


def test_to_dict_is_json_with_nan_as_null(report):
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert [a["name"] for a in data["arms"]] == [a.name for a in report.arms]
    first = data["arms"][0]
    assert len(first["accuracy"]["auc"]) == 2 and first["accuracy"]["auc"][0][2] is None
    assert first["bwt"]["auc"] == pytest.approx(report.arms[0].bwt("auc"))
    assert first["events_trained"] == report.arms[0].events_trained
    assert data["events_per_period"] == list(report.events_per_period)


def test_progress_callback_hears_every_tested_period(periods):
    heard: list[BacktestProgress] = []
    run_periods(periods, _config(arms=ARMS[:2], forgetting_requests=None), progress=heard.append)
    assert [(p.arm, p.period, p.done, p.total) for p in heard] == [
        ("static", "sim1", 1, 4),
        ("static", "sim2", 2, 4),
        ("finetune", "sim1", 3, 4),
        ("finetune", "sim2", 4, 4),
    ]
    assert all(0.0 <= p.metrics["auc"] <= 1.0 for p in heard)


def test_run_backtest_loads_the_data_it_names(tmp_path):
    import pyarrow.parquet as pq

    paths = []
    for i, p in enumerate(DATA.load()):
        path = tmp_path / f"week{i}.parquet"
        pq.write_table(p.train, path)
        paths.append(str(path))
    data = ParquetData(tuple(paths), test_fraction=0.3)
    report = run_backtest(_config(data=data, arms=ARMS[1:2], forgetting_requests=None))
    assert report.periods == ("week0", "week1", "week2")
    assert report.arm("finetune").new_events == sum(report.events_per_period[:2])


def test_recovery_after_a_shift_counts_windows():
    assert recovery_windows([0.70, 0.72, 0.60, 0.69, 0.715], shift_index=2) == 2
    assert recovery_windows([0.70, 0.72, 0.80], shift_index=2) == 0
    assert recovery_windows([0.70, 0.72, 0.60, 0.65], shift_index=2) is None
    with pytest.raises(ValueError, match="shift_index must be in"):
        recovery_windows([0.7, 0.7], shift_index=2)


def test_arm_recovery_is_counted_from_the_shifted_period(report):
    arm = report.arm("finetune")
    series = arm.series("auc")  # series[i] tests period i + 1; the shift is before period 2
    assert arm.recovery_windows(2, "auc", baseline=1) == recovery_windows(series, 1, baseline=1)


def test_arm_names_and_config_errors():
    arms = arms_from_names(
        ["replay-balanced+ewc-separate", "sliding", "static"],
        window=4,
        replay=ReplayConfig(capacity=7, mix_ratio=0.25),
    )
    assert [a.name for a in arms] == ["replay-balanced+ewc-separate", "sliding-4", "static"]
    replay_part = arms[0].strategy.parts[0]
    assert (replay_part.capacity, replay_part.mix_ratio, replay_part.buffer.value) == (
        7,
        0.25,
        "click_balanced",
    )
    with pytest.raises(ValueError, match="arm names must be unique"):
        _config(arms=(Arm("a"), Arm("a")))
    with pytest.raises(ValueError, match="at least two periods"):
        run_periods([], _config())
    with pytest.raises(ValueError, match="threads must be >= 1 or None"):
        _config(threads=0)


def test_optimizer_reset_and_forward_only_rows_are_per_arm(periods):
    experimental_strategies.register()  # dark replay is a bench strategy
    arms = (
        Arm("finetune"),
        Arm("finetune-reset", reset_optimizer=True),
        Arm("dark", strategy=DarkReplayConfig(capacity=100, mix_ratio=0.5)),
    )
    report = run_periods(periods, _config(arms=arms, forgetting_requests=None))
    keep, reset, dark = (report.arm(a.name) for a in arms)
    assert keep.events_trained == reset.events_trained  # same rows, other optimizer state
    first, second = ([a.prequential[i]["auc"] for a in (keep, reset)] for i in (0, 1))
    assert first[0] == first[1]  # the first update starts from a fresh optimizer anyway
    assert second[0] != second[1]
    assert keep.rows_scored == reset.rows_scored == 0
    assert dark.rows_scored == sum(len(p.train) for p in periods[:-1])  # each window once
    assert report.to_dict()["arms"][2]["rows_scored"] == dark.rows_scored
    with pytest.raises(ValueError, match="reset_optimizer is for INCREMENTAL"):
        Arm("joint", Schedule.JOINT, reset_optimizer=True)


def test_arm_names_take_tuned_configs_of_any_strategy():
    experimental_strategies.register()  # their names parse once bench registered them
    arms = arms_from_names(
        ["dark-replay", "lwf+average:3"],
        replay=ReplayConfig(capacity=7, mix_ratio=0.25),
        others=(DarkReplayConfig(hard_weight=0.5), AverageConfig(decay=0.3, keep=0.9)),
        reset_optimizer=True,
    )
    dark = arms[0].strategy
    assert isinstance(dark, DarkReplayConfig)
    assert (dark.capacity, dark.mix_ratio, dark.hard_weight) == (7, 0.25, 0.5)
    assert arms[1].strategy.parts[1] == AverageConfig(decay=0.3, keep=0.9)
    assert arms[1].epochs == 3 and all(a.reset_optimizer for a in arms)
