"""The promotion gate: the pure rule, and the Promoter on real (tiny) models and fresh rows."""

import math

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry

from freshrank.core.telemetry import Telemetry
from freshrank.features.encode import FeatureConfig, candidates_table, encode
from freshrank.model.config import RankerConfig
from freshrank.model.ranker import Ranker
from freshrank.registry import (
    Direction,
    GateConfig,
    MetricTolerance,
    Promoter,
    PromotionOutcome,
    Registry,
    evaluate_gate,
    load_serving_model,
    save_checkpoint,
    score_rows,
)

CFG = RankerConfig(
    features=FeatureConfig(
        user_buckets=11, item_buckets=101, category_buckets=5, brand_buckets=5, query_buckets=17
    ),
    embedding_dim=4,
)
GATE = GateConfig(min_rows=100)
CHAMP = {"auc": 0.700, "logloss": 0.400, "rows": 1000}


# ----- the rule --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "challenger, promote, needle",
    [
        ({"auc": 0.700, "logloss": 0.400, "rows": 1000}, True, "auc 0.7000 -> 0.7000: within"),
        ({"auc": 0.720, "logloss": 0.390, "rows": 1000}, True, "better"),
        ({"auc": 0.6951, "logloss": 0.400, "rows": 1000}, True, "within tolerance"),
        ({"auc": 0.6949, "logloss": 0.400, "rows": 1000}, False, "absolute tolerance 0.005"),
        ({"auc": 0.700, "logloss": 0.4079, "rows": 1000}, True, "logloss"),
        ({"auc": 0.700, "logloss": 0.4099, "rows": 1000}, False, "relative tolerance 2.00%"),
        ({"auc": 0.700, "logloss": 0.4101, "rows": 1000}, False, "logloss 0.4000 -> 0.4101"),
        ({"auc": 0.700, "logloss": math.inf, "rows": 1000}, False, "logloss is inf"),
        ({"auc": 0.700, "logloss": 0.400, "rows": 99}, False, "only 99 fresh rows"),
        ({"auc": None, "logloss": 0.400, "rows": 1000}, True, "auc not compared"),
        ({"auc": None, "logloss": None, "rows": 1000}, False, "no metric could be compared"),
    ],
)
def test_rule(challenger, promote, needle):
    decision = evaluate_gate(challenger, CHAMP, GATE)
    assert decision.promote is promote, decision.reasons
    assert any(needle in r for r in decision.reasons), decision.reasons


def test_relative_tolerance_binds_when_tighter():
    cfg = GateConfig(
        tolerances=(MetricTolerance("logloss", Direction.LOWER_IS_BETTER, 1.0, 0.02),),
        min_rows=1,
    )
    champ = {"logloss": 0.100, "rows": 10}
    assert evaluate_gate({"logloss": 0.1019, "rows": 10}, champ, cfg).promote
    d = evaluate_gate({"logloss": 0.1030, "rows": 10}, champ, cfg)
    assert not d.promote and "relative tolerance 2.00%" in d.reasons[0]


def test_config_is_validated():
    with pytest.raises(ValueError, match="absolute or a relative"):
        MetricTolerance("auc", Direction.HIGHER_IS_BETTER)
    with pytest.raises(ValueError, match="Direction"):
        MetricTolerance("auc", "up", 0.1)
    with pytest.raises(ValueError, match="tolerances is empty"):
        GateConfig(tolerances=())
    with pytest.raises(ValueError, match="min_rows"):
        GateConfig(min_rows=True)


def test_rule_does_not_mutate_inputs():
    new, old = {"auc": 0.71, "rows": 500}, dict(CHAMP)
    evaluate_gate(new, old, GATE)
    assert new == {"auc": 0.71, "rows": 500} and old == CHAMP


# ----- the promoter ------------------------------------------------------------------------------


def _model(seed, nan=False):
    torch.manual_seed(seed)
    model = Ranker(CFG)
    if nan:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float("nan"))
    return model


def _publish(reg, model):
    return save_checkpoint(
        reg,
        CFG,
        model.state_dict(),
        None,
        {},
        {"cursor": 1, "watermark": 1.0, "metrics": {"loss": 0.5}, "events_trained": 1},
    ).version


def _fresh_rows(oracle, n=600):
    """Rows whose clicks a given model ranks perfectly (and others do not)."""
    rng = np.random.default_rng(0)
    cands = [
        {"item_id": f"i{rng.integers(1000)}", "price": float(rng.random() * 50)} for _ in range(n)
    ]
    rows = encode(candidates_table("u1", "red shoes", cands), CFG.features)
    with torch.no_grad():
        logits = oracle(
            {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in rows.items()}
        ).numpy()
    rows["label"] = (logits > np.median(logits)).astype(np.float32)
    return rows


@pytest.fixture
def setup(tmp_path):
    reg = Registry(tmp_path)
    prom = CollectorRegistry()
    good, other = _model(1), _model(2)
    v_good, v_other = _publish(reg, good), _publish(reg, other)
    promoter = Promoter(reg, GATE, metrics=Telemetry.for_prometheus_client(prom))

    def count(outcome):
        return prom.get_sample_value("freshrank_promotions_total", {"outcome": outcome}) or 0.0

    return reg, promoter, v_good, v_other, _fresh_rows(good), count


def test_score_rows(setup):
    reg, _p, v_good, v_other, rows, _c = setup
    good = score_rows(load_serving_model(reg, v_good), rows)
    other = score_rows(load_serving_model(reg, v_other), rows)
    assert good["rows"] == 600 and good["auc"] == 1.0 and good["ctr"] == 0.5
    assert other["auc"] < 0.9 and math.isfinite(other["logloss"])
    one_class = dict(rows, label=np.zeros(600, np.float32))
    assert score_rows(load_serving_model(reg, v_good), one_class)["auc"] is None


def test_first_version_is_promoted_then_a_worse_one_rejected(setup):
    reg, promoter, v_good, v_other, rows, count = setup
    first = promoter.consider(v_good, rows)
    assert first.outcome is PromotionOutcome.PROMOTED and reg.champion_version() == v_good
    worse = promoter.consider(v_other, rows)
    assert worse.outcome is PromotionOutcome.REJECTED
    assert reg.champion_version() == v_good  # the champion keeps serving
    assert any(r.startswith("auc 1.0000 -> ") for r in worse.reasons)
    last = reg.promotions()[-1]
    assert last["kind"] == "rejected" and last["to_version"] == v_other
    assert last["from_version"] == v_good and "auc" in last["reason"]
    assert last["challenger_metrics"]["auc"] < 1 and last["champion_metrics"]["auc"] == 1
    assert (count("promoted"), count("rejected")) == (1, 1)


def test_better_challenger_is_promoted(setup):
    reg, promoter, v_good, v_other, rows, count = setup
    reg.set_champion(v_other)
    result = promoter.consider(v_good, rows)
    assert result.outcome is PromotionOutcome.PROMOTED and result.previous_champion == v_other
    assert reg.champion_version() == v_good
    event = reg.promotions()[-1]
    assert event["kind"] == "promoted" and event["from_version"] == v_other
    assert "auc" in event["reason"] and event["champion_metrics"]["rows"] == 600


def test_nan_challenger_is_rejected(setup):
    reg, promoter, v_good, _v, rows, count = setup
    reg.set_champion(v_good)
    v_nan = _publish(reg, _model(3, nan=True))
    result = promoter.consider(v_nan, rows)
    assert result.outcome is PromotionOutcome.REJECTED
    assert "not finite" in result.reasons[0] and reg.champion_version() == v_good


def test_corrupt_challenger_is_rejected_without_loading(setup, monkeypatch):
    reg, promoter, v_good, _v, rows, count = setup
    reg.set_champion(v_good)
    v_bad = _publish(reg, _model(4))
    path = reg.get(v_bad).path / "model.pt"
    path.write_bytes(path.read_bytes()[:-10])
    loads = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a))
    result = promoter.consider(v_bad, rows)
    assert result.outcome is PromotionOutcome.REJECTED and "CorruptVersion" in result.reasons[0]
    assert loads == [] and reg.champion_version() == v_good and count("rejected") == 1


def test_too_few_rows_rejects(setup):
    reg, promoter, v_good, v_other, rows, _count = setup
    reg.set_champion(v_other)
    few = {k: v[:50] for k, v in rows.items()}
    result = promoter.consider(v_good, few)
    assert result.outcome is PromotionOutcome.REJECTED and "only 50 fresh rows" in result.reasons[0]


def test_evaluation_error_is_logged_not_raised(setup):
    reg, promoter, v_good, v_other, rows, count = setup
    reg.set_champion(v_other)
    result = promoter.consider(v_good, {"label": rows["label"]})  # missing features
    assert result.outcome is PromotionOutcome.ERROR and "evaluation failed" in result.reasons[0]
    assert reg.promotions()[-1]["kind"] == "error" and count("error") == 1
    assert reg.champion_version() == v_other


def test_champion_moved_meanwhile_is_not_overwritten(setup):
    reg, _promoter, v_good, v_other, rows, _count = setup
    prom = CollectorRegistry()
    reg.set_champion(v_other)
    v_third = _publish(reg, _model(5))

    def loader(v):  # someone promotes v_third while the gate evaluates
        if v == v_other and reg.champion_version() == v_other:
            reg.set_champion(v_third)
        return load_serving_model(reg, v)

    promoter = Promoter(reg, GATE, loader=loader, metrics=Telemetry.for_prometheus_client(prom))
    result = promoter.consider(v_good, rows)
    assert result.outcome is PromotionOutcome.ERROR and "ChampionChanged" in result.reasons[-1]
    assert reg.champion_version() == v_third
    assert prom.get_sample_value("freshrank_promotions_total", {"outcome": "error"}) == 1


def test_rollback_counts(setup):
    reg, promoter, v_good, v_other, rows, count = setup
    reg.set_champion(v_other)
    reg.set_champion(v_good)
    assert promoter.rollback(reason="ctr fell") == v_other
    assert count("rolled_back") == 1 and reg.champion_version() == v_other
