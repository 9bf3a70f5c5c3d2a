"""Strategy selection (``learn.backtest.selection``) on tiny simulator data, in process: the
split, the seeds' spread, eligibility, and that nothing the search decides reads a test period."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pyarrow as pa
import pytest
from _tiny import MODEL

from freshrank.events.simulator import SimulatorConfig
from freshrank.learn.backtest import (
    BacktestConfig,
    Candidate,
    CandidateResult,
    Period,
    SelectionConfig,
    SimulatorData,
    Spread,
    run_periods,
    run_seeds,
    run_selection,
    split_tested_periods,
)
from freshrank.learn.backtest.arms import Arm, Schedule

JOINT = Schedule.JOINT

DATA = SimulatorData(
    SimulatorConfig(seed=2, n_users=60, n_items=40, n_categories=4, list_size=5),
    periods=6,
    requests_per_period=150,
    test_fraction=0.3,
)
BASE_LR = 1e-5
"""Fine-tuning at a step this small barely learns: a candidate at 0.02 beats it beyond noise."""
LEARNER = Candidate("lwf", lwf_alpha=0.0, learning_rate=0.02)
SAME_AS_FINETUNE = Candidate("lwf", lwf_alpha=0.0)
"""LwF with weight 0 is fine-tuning step for step (same seeds): never beyond noise."""


def _config(**kw) -> BacktestConfig:
    base = dict(
        name="tiny",
        data=DATA,
        model=MODEL,
        batch_size=64,
        learning_rate=BASE_LR,
        forgetting_requests=10,
        k=3,
    )
    return BacktestConfig(**(base | kw))


def _selection(**kw) -> SelectionConfig:
    base = dict(
        seeds=(0, 1),
        candidates=(SAME_AS_FINETUNE, LEARNER),
        learning_rates=(0.05,),
        refine=1,
        metrics=("auc",),
    )
    return SelectionConfig(**(base | kw))


@pytest.fixture(scope="module")
def periods():
    return DATA.load()


@pytest.fixture(scope="module")
def report(periods):
    return run_selection(_config(), _selection(), periods=periods)


def test_split_is_by_time_with_two_periods_each_side_at_least():
    assert split_tested_periods(6, None) == (2, 6)
    assert split_tested_periods(17, None) == (8, 17)
    assert split_tested_periods(17, 12) == (12, 17)
    with pytest.raises(ValueError, match="at least 5 periods .* the log has 4"):
        split_tested_periods(4, None)
    with pytest.raises(ValueError, match="can be 2 .. 3, got 4"):
        split_tested_periods(6, 4)


def test_report_names_the_halves_and_every_candidate_tried(report):
    assert report.periods == tuple(f"sim{i}" for i in range(6))
    assert report.selection_periods == ("sim1", "sim2")
    assert report.test_periods == ("sim3", "sim4", "sim5")
    names = {c.name for c in report.candidates}
    # stage 1 and the learning-rate refinement of the best eligible candidate (stage 2)
    assert names == {"lwf a0 lr1e-05", "lwf a0 lr0.02", "lwf a0 lr0.05"}
    assert {c.stage for c in report.candidates if c.name == "lwf a0 lr0.05"} == {2}
    scores = [c.score for c in report.candidates]
    assert scores == sorted(scores, reverse=True)
    for c in report.candidates:
        assert len(c.figures["auc"].values) == 2  # one value per seed


def test_beating_finetune_beyond_noise_is_chosen_with_its_live_flags(report):
    assert report.chosen is not None
    assert report.chosen.name in {"lwf a0 lr0.02", "lwf a0 lr0.05"}
    assert report.chosen.versus_baseline == {"auc": "above"}
    assert report.chosen.figures["auc"].low > report.baseline["auc"].high
    flags = report.train_flags()
    assert flags[:4] == ("--strategy", "lwf", "--lwf-alpha", "0")
    assert flags[-2] == "--learning-rate"
    assert math.isclose(float(flags[-1]), report.chosen.learning_rate)
    assert report.message.startswith(f"chose {report.chosen.name}")
    json.dumps(report.to_dict())  # JSON-able


def test_identical_to_finetune_is_within_noise_never_eligible(report):
    same = next(c for c in report.candidates if c.name == "lwf a0 lr1e-05")
    assert same.versus_baseline == {"auc": "within noise"}
    # step for step the same training: the same figures, seed by seed
    assert same.figures["auc"].values == report.baseline["auc"].values
    assert not same.eligible(None)


def test_final_runs_repeat_the_search_on_the_selection_periods(report):
    """The runs over every period start with the same periods, seeds and shuffles as the
    search's runs: their selection-period figures are the search's, exactly."""
    final = report.final
    assert set(final) == {"finetune", "joint", report.chosen.name}
    assert final["finetune"]["selection"]["auc"].values == report.baseline["auc"].values
    assert final["joint"]["selection"]["auc"].values == report.reference["auc"].values
    assert final[report.chosen.name]["selection"]["auc"].values == (
        report.chosen.figures["auc"].values
    )
    for arm in final.values():
        assert len(arm["test"]["auc"].values) == 2
        assert math.isfinite(arm["test"]["bwt recall@3"].mean)
    # joint retrains on everything before each tested period: its share is 1 by definition
    assert report.events_vs_joint["joint"] == {"selection": 1.0, "test": 1.0}
    assert 0 < report.events_vs_joint["finetune"]["test"] < 1


def _scrambled(periods: list[Period], first_test: int) -> list[Period]:
    """The same periods with every test period's labels reversed."""
    out = list(periods[:first_test])
    for p in periods[first_test:]:
        flip = lambda t: t.set_column(  # noqa: E731
            t.schema.get_field_index("clicked"),
            "clicked",
            pa.array(~np.asarray(t.column("clicked").to_pylist(), dtype=bool)),
        )
        out.append(Period(p.name, flip(p.train), flip(p.test)))
    return out


def test_the_choice_cannot_see_the_test_periods(report, periods):
    """Reverse every click of the test periods: the search's figures and its choice are the
    same to the last digit; only the figures reported on the test periods change."""
    scrambled = _scrambled(periods, first_test=3)
    other = run_selection(_config(), _selection(), periods=scrambled)
    assert other.chosen.name == report.chosen.name
    for mine, theirs in zip(report.candidates, other.candidates, strict=True):
        assert mine.name == theirs.name
        assert mine.figures["auc"].values == theirs.figures["auc"].values
    chosen = report.chosen.name
    assert other.final[chosen]["test"]["auc"].values != report.final[chosen]["test"]["auc"].values


def test_nothing_beyond_noise_means_nothing_chosen_and_finetune_recommended(periods):
    out = run_selection(
        _config(learning_rate=0.02),
        _selection(candidates=(SAME_AS_FINETUNE,), learning_rates=()),
        periods=periods,
    )
    assert out.chosen is None
    assert out.message.startswith("no configuration beat fine-tuning beyond noise")
    assert out.message.endswith("keep fine-tuning")
    assert out.train_flags() == ("--strategy", "finetune", "--learning-rate", "0.02")
    assert set(out.final) == {"finetune", "joint"}


def test_an_events_budget_rules_out_a_costlier_candidate(periods):
    replay = Candidate("replay", replay_ratio=1.0, learning_rate=0.02)
    out = run_selection(
        _config(),
        _selection(candidates=(replay,), learning_rates=(), max_events_vs_joint=0.01),
        periods=periods,
    )
    (tried,) = out.candidates
    assert tried.versus_baseline == {"auc": "above"}
    assert tried.events_vs_joint > 0.01
    assert out.chosen is None
    assert "within the events budget (1% of joint)" in out.message


def test_seeds_vary_init_shuffles_and_strategy_draws(periods):
    arm = Candidate("replay").arm()
    a, b = (
        run_periods(periods[:3], _config(learning_rate=0.02, arms=(arm,), seed=s)) for s in (0, 1)
    )
    assert a.arms[0].series("auc") != b.arms[0].series("auc")
    again = run_periods(periods[:3], _config(learning_rate=0.02, arms=(arm,), seed=1))
    assert again.arms[0].series("auc") == b.arms[0].series("auc")
    assert sum(a.arms[0].events_per_update) == a.arms[0].events_trained


def test_worker_processes_give_the_same_numbers_as_one_process(report):
    pooled = run_selection(_config(), _selection(jobs=2))
    for mine, theirs in zip(report.candidates, pooled.candidates, strict=True):
        assert (mine.name, mine.figures["auc"].values) == (
            theirs.name,
            theirs.figures["auc"].values,
        )
    assert (
        pooled.final["joint"]["test"]["auc"].values == report.final["joint"]["test"]["auc"].values
    )


def test_spread_and_eligibility_rules():
    assert Spread.of([0.5, float("nan"), 0.7]).values == (0.5, 0.7)
    assert math.isnan(Spread.of([float("nan")]).mean)
    touching = Spread.of([0.5, 0.6]).compare(Spread.of([0.6, 0.7]))
    assert touching == "within noise"
    gap = {"recall@20": Spread.of([1.2]), "mrr@20": Spread.of([0.4])}
    result = CandidateResult(
        Candidate("lwf"), 0.02, {}, gap, {"recall@20": "above", "mrr@20": "above"}, 0.18, 1
    )
    assert result.score == 0.4 and result.eligible(0.2) and not result.eligible(0.1)
    below = dataclasses.replace(result, versus_baseline={"recall@20": "above", "mrr@20": "below"})
    assert not below.eligible(None)


def test_bad_selection_configs_name_the_field():
    with pytest.raises(ValueError, match="seeds must hold at least one"):
        SelectionConfig(seeds=())
    with pytest.raises(ValueError, match="candidate names must be distinct"):
        SelectionConfig(candidates=(Candidate("lwf"), Candidate("lwf")))
    with pytest.raises(ValueError, match="selection_periods must be >= 2"):
        SelectionConfig(selection_periods=1)
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        Candidate("lwf", learning_rate=0.0)
    assert isinstance(Candidate("exemplar-replay").arm(), Arm)


def test_run_seeds_is_run_periods_once_per_seed(periods):
    config = _config(learning_rate=0.02, arms=(Candidate("replay").arm(), Arm("joint", JOINT)))
    reports = run_seeds(config, (0, 3), periods=periods[:3])
    assert [r.periods for r in reports] == [("sim0", "sim1", "sim2")] * 2
    for seed, report in zip((0, 3), reports, strict=True):
        alone = run_periods(periods[:3], dataclasses.replace(config, seed=seed))
        for mine, theirs in zip(report.arms, alone.arms, strict=True):
            assert (mine.name, mine.series("auc")) == (theirs.name, theirs.series("auc"))
            assert mine.events_trained == theirs.events_trained


def test_report_all_shows_every_candidate_on_the_test_periods_without_changing_the_choice(
    report, periods
):
    everything = run_selection(_config(), _selection(report_all=True), periods=periods)
    assert everything.chosen.name == report.chosen.name
    assert set(everything.final) == {"finetune", "joint"} | {c.name for c in report.candidates}
    for c in everything.candidates:
        assert everything.final[c.name]["selection"]["auc"].values == c.figures["auc"].values
        assert len(everything.final[c.name]["test"]["auc"].values) == 2
    chosen = report.chosen.name
    assert everything.final[chosen] == report.final[chosen]
