"""Reading freshrank's series from a Prometheus text endpoint (a Ray node's metrics agent, or a
``prometheus_client`` server), with Ray's ``ray_`` prefix taken off the names: the one scraper
behind ``freshrank status`` and the demo's summary, and `histogram_quantile` over its buckets.

>>> text = '''# TYPE ray_freshrank_window_auc gauge
... ray_freshrank_window_auc{WorkerId="a"} 0.7
... ray_freshrank_window_auc{WorkerId="b"} 0.8
... # TYPE ray_other gauge
... ray_other 1.0
... '''
>>> [(s.name, s.value) for s in parse_series(text)]
[('freshrank_window_auc', 0.7), ('freshrank_window_auc', 0.8)]
>>> summarise_series(parse_series(text))
{'freshrank_window_auc': 0.8}
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from freshrank.core.catalogue import METRIC_PREFIX, RAY_PROMETHEUS_PREFIX


@dataclass(frozen=True)
class Series:
    """One sample: its name without Ray's prefix, the family's type, its labels and value."""

    name: str
    kind: str
    labels: Mapping[str, str]
    value: float


class ScrapeError(RuntimeError):
    """The endpoint did not answer, or not with Prometheus text."""


def parse_series(text: str) -> list[Series]:
    """The ``freshrank_`` samples of a Prometheus text page, in page order."""
    out = []
    for family in text_string_to_metric_families(text):
        if not family.name.removeprefix(RAY_PROMETHEUS_PREFIX).startswith(METRIC_PREFIX):
            continue
        for sample in family.samples:
            name = sample.name.removeprefix(RAY_PROMETHEUS_PREFIX)
            out.append(Series(name, family.type, sample.labels, sample.value))
    return out


def scrape_series(url: str, timeout_s: float = 3.0) -> list[Series]:
    """`parse_series` of what ``url`` serves; ``ScrapeError`` says why when that fails."""
    try:
        response = httpx.get(url, timeout=timeout_s)
        response.raise_for_status()
        return parse_series(response.text)
    except Exception as exc:  # unreachable, refused, an error status, not Prometheus text
        raise ScrapeError(f"{type(exc).__name__}: {exc}"[:200]) from exc


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus's ``histogram_quantile`` over cumulative bucket counts ``{le: count}``.

    Linear interpolation inside the bucket; the +Inf bucket answers with the largest finite
    bound. None when there are no observations.

    >>> histogram_quantile(0.5, {0.1: 2, 1.0: 6, float("inf"): 8})
    0.55
    >>> histogram_quantile(0.99, {0.1: 2, 1.0: 6, float("inf"): 8})
    1.0
    """
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                finite = [b for b in bounds if not math.isinf(b)]
                return finite[-1] if finite else None
            if count == below:
                return le
            return round(lower + (le - lower) * (rank - below) / (count - below), 12)
        lower, below = le, count
    return None


def summarise_series(series: Iterable[Series]) -> dict[str, float]:
    """One number per sample name: series of one metric from several processes (Ray's
    ``WorkerId`` label) are summed for counters and histogram counts and sums, and the largest
    value is kept for gauges; histogram buckets are left out."""
    out: dict[str, float] = {}
    for s in series:
        if s.kind == "gauge":
            out[s.name] = max(out.get(s.name, float("-inf")), s.value)
        elif s.kind in ("counter", "histogram") and not s.name.endswith("_bucket"):
            out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def scrape_freshrank_metrics(url: str, timeout_s: float = 2.0) -> dict[str, float]:
    """`summarise_series` of what ``url`` serves; ``{}`` when the endpoint does not answer."""
    try:
        return summarise_series(scrape_series(url, timeout_s))
    except ScrapeError:
        return {}


__all__ = [
    "ScrapeError",
    "Series",
    "histogram_quantile",
    "parse_series",
    "scrape_freshrank_metrics",
    "scrape_series",
    "summarise_series",
]
