"""Distances between two count vectors over the same cells (reference, current): PSI,
Jensen-Shannon, L-infinity, and the top-k + "other" restriction of two count tables.

Each takes counts (not shares), so it is scale-free, and returns NaN when either side has no
counts; `freshrank.drift.statistics` turns them into drift statistics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def _proportions(counts: Sequence[float] | np.ndarray) -> tuple[np.ndarray, float]:
    c = np.asarray(counts, dtype=np.float64).ravel()
    if np.any(c < 0) or not np.all(np.isfinite(c)):
        raise ValueError("counts must be finite and >= 0")
    total = float(c.sum())
    return (c / total if total > 0 else c), total


def _pair(
    expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    p, n_p = _proportions(expected)
    q, n_q = _proportions(actual)
    if p.shape != q.shape:
        raise ValueError(f"count vectors differ in length: {p.shape[0]} vs {q.shape[0]}")
    if n_p == 0 or n_q == 0:
        return None
    return p, q


def psi(
    expected: Sequence[float] | np.ndarray,
    actual: Sequence[float] | np.ndarray,
    eps: float = 1e-4,
) -> float:
    """Population stability index of ``actual`` against ``expected`` (counts per cell).

    ``sum((a - e) * ln(a / e))`` over cells, proportions floored at ``eps`` so an empty cell
    does not make it infinite. 0 means identical; the usual reading is < 0.1 stable,
    0.1-0.25 moderate shift, > 0.25 large shift. NaN when either side has no counts.

    >>> psi([50, 50], [50, 50])
    0.0
    >>> round(psi([90, 10], [10, 90]), 4)  # 2 * 0.8 * ln(9)
    3.5156
    >>> round(psi([25, 25, 25, 25], [30, 20, 25, 25]), 4)
    0.0203
    >>> psi([1, 2], [0, 0])
    nan
    """
    pair = _pair(expected, actual)
    if pair is None:
        return math.nan
    p, q = (np.maximum(x, eps) for x in pair)
    return float(np.sum((q - p) * np.log(q / p)))


def js_divergence(
    p_counts: Sequence[float] | np.ndarray, q_counts: Sequence[float] | np.ndarray
) -> float:
    """Jensen-Shannon divergence (base 2, so in [0, 1]) between two count vectors.

    Symmetric, finite even with empty cells: 0 for identical distributions, 1 for disjoint
    ones. NaN when either side has no counts.

    >>> js_divergence([1, 1], [2, 2])
    0.0
    >>> js_divergence([1, 0], [0, 1])
    1.0
    >>> round(js_divergence([3, 1], [1, 3]), 4)
    0.1887
    """
    pair = _pair(p_counts, q_counts)
    if pair is None:
        return math.nan
    p, q = pair
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return float(min(1.0, max(0.0, 0.5 * kl(p) + 0.5 * kl(q))))


def linf_distance(
    p_counts: Sequence[float] | np.ndarray, q_counts: Sequence[float] | np.ndarray
) -> float:
    """L-infinity distance: the largest change in any cell's share (in [0, 1]).

    >>> linf_distance([50, 30, 20], [40, 30, 30])
    0.1
    """
    pair = _pair(p_counts, q_counts)
    if pair is None:
        return math.nan
    p, q = pair
    return round(float(np.max(np.abs(p - q))), 12)


def top_k_distributions(
    reference: np.ndarray, current: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Restrict two count tables to the top-``k`` cells of each plus one "other" cell.

    The kept cells are the union of both sides' ``k`` largest (ties broken by cell index), so
    a key that becomes popular only in ``current`` still stands on its own. Returns two count
    vectors over the same ``<= 2k + 1`` cells, "other" last.

    >>> ref, cur = np.array([5, 3, 1, 1, 0]), np.array([1, 3, 0, 1, 5])
    >>> [a.tolist() for a in top_k_distributions(ref, cur, 1)]
    [[5, 0, 5], [1, 5, 4]]
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    reference = np.asarray(reference)
    current = np.asarray(current)
    if reference.shape != current.shape:
        raise ValueError("count tables differ in shape")

    def top(c: np.ndarray) -> np.ndarray:
        order = np.lexsort((np.arange(c.size), -c))
        return order[: min(k, c.size)][c[order[: min(k, c.size)]] > 0]

    keep = np.union1d(top(reference), top(current)).astype(np.int64)
    rest = np.ones(reference.size, dtype=bool)
    rest[keep] = False
    return (
        np.append(reference[keep], reference[rest].sum()),
        np.append(current[keep], current[rest].sum()),
    )


__all__ = ["js_divergence", "linf_distance", "psi", "top_k_distributions"]
