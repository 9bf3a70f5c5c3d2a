"""Per-request ranking metrics over scored rows (pure numpy, vectorised).

Every function takes three aligned arrays: ``groups`` (the request each row belongs to; any
sortable ids, e.g. ``request_id`` strings), ``labels`` (clicked = 1) and ``scores`` (higher ranks
first). Ties are broken against the clicks (a clicked row tied with unclicked ones ranks after
them), so a model that scores everything the same gets no credit; GAUC counts ties half, like
``roc_auc``. Requests with no click carry no ranking signal and are skipped by every metric
here; GAUC also skips requests where every row was clicked.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["gauc", "hits_at_k", "mrr_at_k", "ndcg_at_k", "ranking_report", "recall_at_k"]


def _prepare(
    groups: np.ndarray, labels: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    groups = np.asarray(groups)
    if not (len(groups) == len(labels) == len(scores)):
        raise ValueError(
            f"groups, labels and scores must have one entry per row, got lengths "
            f"{len(groups)}, {len(labels)}, {len(scores)}"
        )
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    _, codes = np.unique(groups, return_inverse=True)
    codes = codes.reshape(-1)
    n_groups = int(codes.max()) + 1 if len(codes) else 0
    return codes, labels, scores, n_groups


def _ranks(codes: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """1-based rank of every row in its group: higher score first, ties put clicks last."""
    order = np.lexsort((labels, -scores, codes))
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[order] = np.arange(len(order)) - group_start + 1
    return ranks


def hits_at_k(
    groups: np.ndarray, labels: np.ndarray, scores: np.ndarray, k: int = 20
) -> np.ndarray:
    """Per row: is it a click ranked within the top ``k`` of its request (bool array)?

    >>> hits_at_k(np.array([0, 0, 0]), np.array([1, 0, 1]), np.array([0.9, 0.5, 0.1]), k=2)
    array([ True, False, False])
    """
    codes, labels, scores, _ = _prepare(groups, labels, scores)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return labels & (_ranks(codes, labels, scores) <= k)


def recall_at_k(groups: np.ndarray, labels: np.ndarray, scores: np.ndarray, k: int = 20) -> float:
    """Mean over requests with a click of (clicks ranked in the top ``k``) / (clicks).

    With one click per request this is the hit rate, Recall@K of next-item prediction.
    NaN when no request has a click.

    >>> g = np.array([0, 0, 0, 1, 1, 1])
    >>> y = np.array([0, 1, 0, 1, 0, 0])
    >>> s = np.array([0.9, 0.5, 0.1, 0.2, 0.3, 0.4])
    >>> recall_at_k(g, y, s, k=2), recall_at_k(g, y, s, k=3)
    (0.5, 1.0)
    """
    codes, labels, scores, n_groups = _prepare(groups, labels, scores)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ranks = _ranks(codes, labels, scores)
    pos = np.bincount(codes[labels], minlength=n_groups)
    hits = np.bincount(codes[labels & (ranks <= k)], minlength=n_groups)
    has = pos > 0
    return float((hits[has] / pos[has]).mean()) if has.any() else float("nan")


def mrr_at_k(groups: np.ndarray, labels: np.ndarray, scores: np.ndarray, k: int = 20) -> float:
    """Mean over requests with a click of ``1 / rank`` of the first click, 0 beyond rank ``k``.

    >>> g = np.array([0, 0, 0, 1, 1, 1])
    >>> y = np.array([0, 1, 0, 1, 0, 0])
    >>> s = np.array([0.9, 0.5, 0.1, 0.2, 0.3, 0.4])
    >>> round(mrr_at_k(g, y, s, k=20), 4)  # ranks 2 and 3: (1/2 + 1/3) / 2
    0.4167
    >>> mrr_at_k(g, y, s, k=2)
    0.25
    """
    codes, labels, scores, n_groups = _prepare(groups, labels, scores)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ranks = _ranks(codes, labels, scores)
    first = np.full(n_groups, np.iinfo(np.int64).max)
    np.minimum.at(first, codes[labels], ranks[labels])
    has = first < np.iinfo(np.int64).max
    if not has.any():
        return float("nan")
    rr = np.where(first[has] <= k, 1.0 / first[has], 0.0)
    return float(rr.mean())


def ndcg_at_k(groups: np.ndarray, labels: np.ndarray, scores: np.ndarray, k: int = 10) -> float:
    """Mean NDCG@k over requests with a click (binary gains, ``1 / log2(rank + 1)`` discount).

    >>> g = np.array([0, 0, 0])
    >>> ndcg_at_k(g, np.array([1, 0, 0]), np.array([0.9, 0.5, 0.1]))
    1.0
    >>> round(ndcg_at_k(g, np.array([0, 1, 0]), np.array([0.9, 0.5, 0.1])), 4)  # 1/log2(3)
    0.6309
    >>> ndcg_at_k(g, np.array([0, 0, 1]), np.array([0.9, 0.5, 0.1]), k=2)
    0.0
    """
    codes, labels, scores, n_groups = _prepare(groups, labels, scores)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ranks = _ranks(codes, labels, scores)
    gain = labels & (ranks <= k)
    dcg = np.bincount(codes[gain], weights=1.0 / np.log2(ranks[gain] + 1.0), minlength=n_groups)
    pos = np.bincount(codes[labels], minlength=n_groups)
    has = pos > 0
    if not has.any():
        return float("nan")
    ideal_prefix = np.r_[0.0, np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))]
    idcg = ideal_prefix[np.minimum(pos[has], k)]
    return float((dcg[has] / idcg).mean())


def gauc(groups: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Group AUC: each request's AUC weighted by its number of rows, over requests that have
    both clicked and unclicked rows (ties count half). NaN when no request has both.

    >>> g = np.array([0, 0, 0, 1, 1, 2, 2])
    >>> y = np.array([1, 0, 0, 0, 1, 1, 1])
    >>> s = np.array([0.9, 0.5, 0.1, 0.7, 0.3, 0.5, 0.2])
    >>> round(gauc(g, y, s), 4)  # request 0: AUC 1 (3 rows), 1: AUC 0 (2 rows), 2: skipped
    0.6
    >>> gauc(np.array([0, 0]), np.array([1, 0]), np.array([0.5, 0.5]))
    0.5
    """
    codes, labels, scores, n_groups = _prepare(groups, labels, scores)
    if len(codes) == 0:
        return float("nan")
    # Average rank (ascending score, 1-based) of every row within its group, ties averaged.
    order = np.lexsort((scores, codes))
    c, s = codes[order], scores[order]
    new_group = np.r_[True, c[1:] != c[:-1]]
    new_run = new_group | np.r_[True, s[1:] != s[:-1]]
    run_id = np.cumsum(new_run) - 1
    run_start = np.flatnonzero(new_run)
    run_end = np.r_[run_start[1:], len(order)]
    group_start = np.flatnonzero(new_group)
    row_group_start = np.repeat(group_start, np.diff(np.r_[group_start, len(order)]))
    avg_rank = (run_start[run_id] + run_end[run_id] + 1) / 2.0 - row_group_start
    ranks = np.empty(len(order))
    ranks[order] = avg_rank
    size = np.bincount(codes, minlength=n_groups).astype(np.float64)
    pos = np.bincount(codes[labels], minlength=n_groups).astype(np.float64)
    neg = size - pos
    rank_sum = np.bincount(codes[labels], weights=ranks[labels], minlength=n_groups)
    ok = (pos > 0) & (neg > 0)
    if not ok.any():
        return float("nan")
    auc = (rank_sum[ok] - pos[ok] * (pos[ok] + 1) / 2.0) / (pos[ok] * neg[ok])
    return float(np.average(auc, weights=size[ok]))


def ranking_report(
    groups: np.ndarray, labels: np.ndarray, scores: np.ndarray, k: int = 20, ndcg_k: int = 10
) -> dict[str, float]:
    """GAUC, NDCG@ndcg_k, Recall@k and MRR@k in one dict (keys like ``"recall@20"``).

    >>> r = ranking_report(np.array([0, 0]), np.array([1, 0]), np.array([0.9, 0.1]))
    >>> r == {"gauc": 1.0, "ndcg@10": 1.0, "recall@20": 1.0, "mrr@20": 1.0}
    True
    """
    _, codes = np.unique(np.asarray(groups), return_inverse=True)  # factorise strings once
    codes = codes.reshape(-1)
    out = {
        "gauc": gauc(codes, labels, scores),
        f"ndcg@{ndcg_k}": ndcg_at_k(codes, labels, scores, ndcg_k),
        f"recall@{k}": recall_at_k(codes, labels, scores, k),
        f"mrr@{k}": mrr_at_k(codes, labels, scores, k),
    }
    return {key: (float("nan") if math.isnan(v) else v) for key, v in out.items()}
