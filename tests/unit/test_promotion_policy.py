"""registry.promotion.PromotionPolicy (what the trainer promotes, and when) and the trainer's
gate judge around it (learn/gating.GateJudge: fencing, too few rows)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from test_gate import CFG, _model, _publish

from freshrank.core.telemetry import Telemetry
from freshrank.learn.gating import GateJudge
from freshrank.registry import (
    GateConfig,
    Promoter,
    PromotionMode,
    PromotionOutcome,
    PromotionPolicy,
    Registry,
)
from freshrank.registry.checkpoint import save_checkpoint
from freshrank.registry.control import TrainerControl
from freshrank.registry.store import VersionInfo

GOOD = {"rows": 500.0, "auc": 0.75, "logloss": 0.40, "ctr": 0.1}
WORSE = {"rows": 500.0, "auc": 0.60, "logloss": 0.50, "ctr": 0.1}


def _version(reg: Registry, metrics: dict) -> VersionInfo:
    model = _model(0)
    manifest = {"cursor": 1, "watermark": 1.0, "metrics": metrics, "events_trained": 1}
    return save_checkpoint(reg, CFG, model.state_dict(), None, {}, manifest)


@pytest.fixture
def world(tmp_path):
    reg = Registry(tmp_path)
    prom = CollectorRegistry()
    promoter = Promoter(
        reg, GateConfig(min_rows=100), metrics=Telemetry.for_prometheus_client(prom)
    )

    def count(outcome):
        return prom.get_sample_value("freshrank_promotions_total", {"outcome": outcome}) or 0.0

    def latencies():
        labels = {"stage": "checkpointed_to_promoted"}
        return prom.get_sample_value("freshrank_stage_latency_seconds_count", labels) or 0.0

    return reg, promoter, count, latencies


def test_manual_promotes_nothing(world):
    reg, promoter, count, _ = world
    policy = PromotionPolicy(PromotionMode.MANUAL, promoter)
    assert policy.after_checkpoint(_version(reg, {"loss": 0.5})) is None
    assert reg.champion_version() is None and count("promoted") == 0
    assert policy.pending_after_restart(reg.latest_version()) is None


def test_finite_promotes_every_finite_version_at_once(world):
    reg, promoter, count, latencies = world
    policy = PromotionPolicy(PromotionMode.FINITE, promoter)
    first, second = _version(reg, {"loss": 0.5}), _version(reg, {"loss": 0.4})
    assert policy.after_checkpoint(first) is None and reg.champion_version() == first.version
    assert policy.after_checkpoint(second) is None and reg.champion_version() == second.version
    bad = _version(reg, {"loss": float("nan")})
    assert policy.after_checkpoint(bad) is None and reg.champion_version() == second.version
    assert (count("promoted"), count("rejected")) == (2, 1)
    assert latencies() == 2
    assert reg.promotions()[-1]["kind"] == "rejected"


def test_gate_promotes_the_first_then_waits_for_fresh_rows(world):
    reg, promoter, count, latencies = world
    policy = PromotionPolicy(PromotionMode.GATE, promoter)
    first = _version(reg, {"loss": 0.5})
    assert policy.after_checkpoint(first) is None and reg.champion_version() == first.version
    second = _version(reg, {"loss": 0.4})
    assert policy.after_checkpoint(second) == second.version  # pending: judged on the next window
    assert reg.champion_version() == first.version
    assert policy.pending_after_restart(second.version) == second.version
    assert policy.pending_after_restart(first.version) is None  # the champion itself
    nan = _version(reg, {"loss": float("inf")})
    assert policy.after_checkpoint(nan) is None  # settled at once: rejected
    assert reg.champion_version() == first.version and count("rejected") == 1

    result = policy.judge(second.version, first.version, GOOD, WORSE)
    assert result.outcome is PromotionOutcome.PROMOTED and reg.champion_version() == second.version
    assert latencies() == 2  # the first version and this one
    assert policy.pending_after_restart(second.version) is None  # the log names it now
    third = _version(reg, {"loss": 0.3})
    assert policy.after_checkpoint(third) == third.version
    rejected = policy.judge(third.version, second.version, WORSE, GOOD)
    assert rejected.outcome is PromotionOutcome.REJECTED
    assert policy.pending_after_restart(third.version) is None  # judged once, never again


def test_too_few_rows_leave_a_version_unjudged(world):
    reg, promoter, _count, _ = world
    policy = PromotionPolicy(PromotionMode.GATE, promoter)
    assert policy.min_rows == 100
    assert not policy.judgeable({"rows": 99.0}, champion=1)
    assert policy.judgeable({"rows": 100.0}, champion=1)
    assert policy.judgeable({"rows": 3.0}, champion=None)
    with pytest.raises(ValueError, match="PromotionMode"):
        PromotionPolicy("gate", promoter)


def test_gate_judge_skips_small_windows_and_stops_when_fenced(world, tmp_path, capsys):
    reg, promoter, count, _ = world
    policy = PromotionPolicy(PromotionMode.GATE, promoter)
    champion = _version(reg, {"loss": 0.5}).version
    reg.set_champion(champion)
    challenger = _publish(reg, _model(3))
    control = TrainerControl(str(tmp_path))
    judge = GateJudge(policy, control, control.claim())
    judge.judge(challenger, champion, {"rows": 10.0, "auc": 0.9}, GOOD, [])
    assert "not judged: only 10 fresh rows (gate_min_rows 100)" in capsys.readouterr().out
    assert reg.champion_version() == champion and count("rejected") == 0
    judge.judge(challenger, champion, GOOD, WORSE, [])
    assert f"gate: v{challenger} promoted" in capsys.readouterr().out
    assert reg.champion_version() == challenger

    later = _publish(reg, _model(4))
    TrainerControl(str(tmp_path)).claim()  # a newer trainer takes over
    judge.judge(later, challenger, GOOD, WORSE, [])
    assert judge.fenced and reg.champion_version() == challenger
