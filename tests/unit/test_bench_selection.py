"""bench/bench_selection.py's live-default rule, on hand-made selection results."""

from __future__ import annotations

from bench_selection import live_default


def _spread(*values: float) -> dict:
    return {"mean": sum(values) / len(values), "low": min(values), "high": max(values),
            "values": list(values)}  # fmt: skip


def _result(metrics: list[str], candidates: list[tuple[str, bool, dict]], test: dict) -> dict:
    final = {"finetune": {"test": {m: _spread(0.5, 0.51) for m in metrics}}}
    for name, value in test.items():
        final[name] = {"test": {m: _spread(value, value + 0.01) for m in metrics}}
    return {
        "metrics": metrics,
        "candidates": [{"name": n, "eligible": e, "versus_finetune": v} for n, e, v in candidates],
        "final": final,
    }


def test_the_first_diginetica_choice_that_holds_on_the_simulator_is_the_default():
    dg_metrics, sim_metrics = ["recall@20", "mrr@20"], ["auc", "mrr@20"]
    above = dict.fromkeys(dg_metrics, "above")
    dg = _result(
        dg_metrics,
        [("exemplar", True, above), ("lwf", True, above), ("replay", False, above)],
        {"exemplar": 0.6, "lwf": 0.55},
    )
    sim = _result(
        sim_metrics,
        [
            ("exemplar", False, {"auc": "within noise", "mrr@20": "within noise"}),
            ("lwf", False, {"auc": "within noise", "mrr@20": "within noise"}),
            ("replay", False, {"auc": "above", "mrr@20": "above"}),
        ],
        {"exemplar": 0.3, "lwf": 0.505},  # exemplar: below fine-tuning in the second half
    )
    name, table = live_default(dg, sim)
    assert name == "lwf"
    rows = table.splitlines()[2:]
    assert [r.split(" | ")[0] for r in rows] == ["| exemplar", "| lwf **(live default)**"]
    assert rows[0].endswith("| no |") and rows[1].endswith("| yes |")
    assert "| below, below | no |" in rows[0]
    assert "| within noise, within noise | yes |" in rows[1]


def test_a_configuration_the_simulator_never_ran_to_the_end_does_not_hold():
    dg = _result(["recall@20"], [("exemplar", True, {"recall@20": "above"})], {})
    sim = _result(["auc"], [("exemplar", False, {"auc": "within noise"})], {})
    name, table = live_default(dg, sim)
    assert name is None and "not run | no |" in table


def test_no_default_when_nothing_holds():
    dg = _result(["recall@20"], [("exemplar", True, {"recall@20": "above"})], {})
    sim = _result(["auc"], [("exemplar", False, {"auc": "below"})], {})
    assert live_default(dg, sim)[0] is None
