"""model.scoring.score_logits: the one chunked no-grad scoring loop (trainer, gate, backtest)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _tiny import FEATURES, MODEL

from freshrank.events.simulator import Simulator, SimulatorConfig
from freshrank.features.encode import encode
from freshrank.model.device import to_tensors
from freshrank.model.ranker import Ranker
from freshrank.model.scoring import score_logits
from freshrank.registry.checkpoint import ServingModel
from freshrank.registry.promotion import metrics_from_logits, score_rows


@pytest.fixture(scope="module")
def rows():
    table = Simulator(SimulatorConfig(seed=2, n_users=40, n_items=60)).generate(30)
    return encode(table, FEATURES)


def _model() -> Ranker:
    torch.manual_seed(0)
    return Ranker(MODEL)


def test_chunks_give_the_same_logits_as_one_pass(rows):
    model = _model()
    with torch.no_grad():  # a position bias that is not zero, so the two forms differ
        model.position.bias.weight.normal_()
    n = len(rows["label"])
    with torch.no_grad():
        model.eval()
        direct = model(to_tensors(rows, torch.device("cpu"))).numpy().astype(np.float64)
        relevance = model(to_tensors(rows, torch.device("cpu")), use_position=False).numpy()
    model.train()
    whole = score_logits(model, rows)
    pieces = score_logits(model, rows, chunk_rows=7)
    assert whole.dtype == np.float64 and whole.shape == (n,)
    np.testing.assert_allclose(whole, direct, rtol=1e-6)
    np.testing.assert_allclose(pieces, whole, rtol=1e-6)
    np.testing.assert_allclose(score_logits(model, rows, use_position=False), relevance, rtol=1e-6)
    assert not np.allclose(relevance, direct)  # the position bias is there when asked for


def test_mode_is_restored_and_no_gradients_are_kept(rows):
    model = _model()
    model.train()
    score_logits(model, rows, chunk_rows=5)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    score_logits(model, rows)
    assert not model.training


def test_empty_rows_and_bad_chunk_size(rows):
    model = _model()
    empty = {k: v[:0] for k, v in rows.items()}
    assert score_logits(model, empty).shape == (0,)
    assert score_logits(model, {}).shape == (0,)
    with pytest.raises(ValueError, match="chunk_rows must be >= 1"):
        score_logits(model, rows, chunk_rows=0)


def test_the_gate_scores_with_the_same_loop(rows):
    model = _model().eval()
    served = ServingModel(1, model, None, {})
    expected = metrics_from_logits(rows["label"], score_logits(model, rows))
    assert score_rows(served, rows, chunk_rows=11) == pytest.approx(expected)
