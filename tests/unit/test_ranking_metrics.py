"""Ranking metrics against straightforward per-request reference implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from freshrank.evaluation.classification import roc_auc
from freshrank.evaluation.ranking import (
    gauc,
    mrr_at_k,
    ndcg_at_k,
    ranking_report,
    recall_at_k,
)


def _random_requests(seed: int, n_requests: int = 60):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 12, n_requests)
    groups = np.repeat(np.arange(n_requests), sizes)
    labels = (rng.random(len(groups)) < 0.3).astype(int)
    scores = np.round(rng.random(len(groups)), 1)  # coarse: plenty of ties
    order = rng.permutation(len(groups))  # rows of a request need not be contiguous
    return groups[order], labels[order], scores[order]


def _ranks_reference(labels, scores):
    """1-based ranks, higher score first, ties broken against clicks."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], labels[i]))
    ranks = [0] * len(scores)
    for r, i in enumerate(order, start=1):
        ranks[i] = r
    return ranks


def _per_request(groups, labels, scores):
    for g in np.unique(groups):
        m = groups == g
        yield labels[m], scores[m]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_reference(seed):
    groups, labels, scores = _random_requests(seed)
    k = 3
    recalls, rrs, ndcgs, aucs, weights = [], [], [], [], []
    for y, s in _per_request(groups, labels, scores):
        if y.sum() == 0:
            continue
        ranks = np.array(_ranks_reference(y, s))
        recalls.append(((ranks <= k) & (y == 1)).sum() / y.sum())
        first = ranks[y == 1].min()
        rrs.append(1.0 / first if first <= k else 0.0)
        dcg = sum(1 / math.log2(r + 1) for r in ranks[(y == 1) & (ranks <= k)])
        idcg = sum(1 / math.log2(i + 2) for i in range(min(int(y.sum()), k)))
        ndcgs.append(dcg / idcg)
        if 0 < y.sum() < len(y):
            aucs.append(roc_auc(y, s))
            weights.append(len(y))
    assert recall_at_k(groups, labels, scores, k) == pytest.approx(np.mean(recalls))
    assert mrr_at_k(groups, labels, scores, k) == pytest.approx(np.mean(rrs))
    assert ndcg_at_k(groups, labels, scores, k) == pytest.approx(np.mean(ndcgs))
    assert gauc(groups, labels, scores) == pytest.approx(np.average(aucs, weights=weights))


def test_constant_scores_get_no_credit_and_perfect_scores_get_all():
    groups = np.repeat(np.arange(10), 100)
    labels = np.zeros(1000, dtype=int)
    labels[::100] = 1  # one click per request, first row
    flat = np.zeros(1000)
    assert recall_at_k(groups, labels, flat, 20) == 0.0  # the click ties with 99: ranked last
    assert mrr_at_k(groups, labels, flat, 20) == 0.0
    assert gauc(groups, labels, flat) == 0.5
    perfect = labels.astype(float)
    report = ranking_report(groups, labels, perfect)
    assert report == {"gauc": 1.0, "ndcg@10": 1.0, "recall@20": 1.0, "mrr@20": 1.0}


def test_string_request_ids_and_requests_without_clicks():
    groups = np.array(["r2", "r2", "r1", "r1", "r3", "r3"])
    labels = np.array([0, 1, 1, 0, 0, 0])  # r3 has no click: skipped everywhere
    scores = np.array([0.9, 0.1, 0.8, 0.2, 0.5, 0.4])
    assert recall_at_k(groups, labels, scores, 1) == 0.5
    assert mrr_at_k(groups, labels, scores, 20) == 0.75
    assert gauc(groups, labels, scores) == 0.5  # r1: 1.0, r2: 0.0, equal sizes
    no_clicks = np.zeros(6, dtype=int)
    assert math.isnan(recall_at_k(groups, no_clicks, scores))
    assert math.isnan(gauc(groups, no_clicks, scores))
    assert math.isnan(ndcg_at_k(groups, no_clicks, scores))


def test_bad_inputs_are_explained():
    with pytest.raises(ValueError, match="one entry per row"):
        gauc(np.zeros(3), np.zeros(2), np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        recall_at_k(np.zeros(2), np.array([1, 0]), np.array([np.nan, 0.0]))
    with pytest.raises(ValueError, match="k must be >= 1"):
        mrr_at_k(np.zeros(2), np.array([1, 0]), np.zeros(2), k=0)
