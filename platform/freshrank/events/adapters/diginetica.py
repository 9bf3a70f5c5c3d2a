"""DIGINETICA sessions (``../shared/data/diginetica/period_*.txt``) as search impressions.

The files hold item views only (``sessionId itemId`` per line, time-ordered within a period).
We turn them into search-impression events with this protocol:

* **Request**: every view after a session's first. The session is the user context
  (``user_id = "s<session>"``); the items viewed so far in the session are the behaviour
  feature: the last ``history`` of them, most recent first, become the ``query`` text as tokens
  ``"v<item>"`` (the encoder hashes query tokens, and keeps the first ``max_query_tokens``).
* **Candidates**: the next viewed item is the click (``clicked = True``) among ``K`` candidates:
  that positive plus ``K - 1`` negatives drawn with replacement from the period's items (by
  view popularity or uniformly, never the positive itself). Candidates are shuffled; ``position``
  is the shuffled slot, so it carries no signal. ``item_id = "i<item>"``; category, brand,
  price, device and purchase are null (the log has none of them).
* **Splits**: within each period a seeded ``holdout_fraction`` of sessions is held out. Their
  requests form the **test** table (at most ``test_requests`` of them, ``candidates`` = 100 by
  default: 1 positive + 99 negatives); the other sessions form the **train** table with
  ``train_candidates`` per request (1 positive + a few negatives, to keep training cheap).
* **Metrics** on test tables: Recall@20 and MRR@20 of the positive among the ``K`` candidates
  (next-item prediction, as in ADER but over sampled candidates rather than every item), plus
  AUC over all rows and GAUC per request.
* **Time**: a period ``p`` starts at 2016-01-01 + ``p`` weeks (period 0 holds everything older,
  compressed to that week); each view adds one second, in file order. The original log has no
  timestamps in this form, so only the order is real.

Everything is seeded (``seed`` and the period number) and vectorised with numpy: a period of
80k views becomes event tables in well under a second.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from freshrank.events.schema import FILE_SCHEMA

N_PERIODS = 17
"""Periods in the published split: ``period_0.txt`` … ``period_16.txt``."""

DEFAULT_DATA_DIR = "../shared/data/diginetica"
"""Where the periods are read from when neither ``DigineticaConfig.path`` nor the
``FRESHRANK_DIGINETICA`` environment variable names a directory: relative to the working
directory (the repository root, for the benches and jobs run from there)."""
DATA_DIR_ENV = "FRESHRANK_DIGINETICA"
"""Environment variable naming the directory of ``period_*.txt`` (used when ``path`` is None)."""
_EPOCH_2016 = datetime(2016, 1, 1, tzinfo=timezone.utc)
_WEEK_US = 7 * 24 * 3600 * 1_000_000
_EPOCH_2016_US = (
    int((_EPOCH_2016 - datetime(1970, 1, 1, tzinfo=timezone.utc)).total_seconds()) * 1_000_000
)


class NegativeSampling(Enum):
    """How negatives are drawn from a period's items."""

    POPULARITY = "popularity"
    """In proportion to the item's views in the period (hard negatives: popular items)."""
    UNIFORM = "uniform"
    """Every item of the period equally likely."""


@dataclass(frozen=True)
class DigineticaConfig:
    """Where the periods are and how they become events (see the module docstring).

    >>> DigineticaConfig(candidates=1)
    Traceback (most recent call last):
    ...
    ValueError: DigineticaConfig: candidates must be >= 2 (one positive and a negative), got 1
    """

    path: str | None = None
    """Directory with ``period_*.txt`` (a relative path is read from the working directory);
    None: ``$FRESHRANK_DIGINETICA``, else ``../shared/data/diginetica``
    (:func:`default_data_dir`)."""
    history: int = 3
    """Items viewed so far (most recent first) put into the query text."""
    candidates: int = 100
    """Candidates per test request (1 positive + ``candidates - 1`` negatives)."""
    train_candidates: int = 5
    """Candidates per training request."""
    negatives: NegativeSampling = NegativeSampling.POPULARITY
    holdout_fraction: float = 0.1
    """Share of each period's sessions held out for testing (never trained on)."""
    test_requests: int | None = 2000
    """At most this many test requests per period (a seeded sample); None keeps all."""
    train_session_fraction: float = 1.0
    """Share of each period's training sessions kept (a seeded sample), to make runs cheaper."""
    seed: int = 0

    def __post_init__(self) -> None:
        def fail(msg: str) -> None:
            raise ValueError(f"DigineticaConfig: {msg}")

        if self.history < 1:
            fail(f"history must be >= 1, got {self.history}")
        if self.candidates < 2:
            fail(f"candidates must be >= 2 (one positive and a negative), got {self.candidates}")
        if self.train_candidates < 2:
            fail(f"train_candidates must be >= 2, got {self.train_candidates}")
        if not isinstance(self.negatives, NegativeSampling):
            fail(f"negatives must be a NegativeSampling, got {self.negatives!r}")
        if not 0.0 < self.holdout_fraction < 1.0:
            fail(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
        if self.test_requests is not None and self.test_requests < 1:
            fail(f"test_requests must be >= 1 or None, got {self.test_requests}")
        if not 0.0 < self.train_session_fraction <= 1.0:
            fail(f"train_session_fraction must be in (0, 1], got {self.train_session_fraction}")
        if self.seed < 0:
            fail(f"seed must be >= 0, got {self.seed}")

    def data_dir(self) -> Path:
        """The directory the periods are read from."""
        return Path(self.path) if self.path is not None else default_data_dir()


@dataclass(frozen=True)
class PeriodViews:
    """One period's item views in file (time) order."""

    period: int
    session: np.ndarray
    """int64 (V,) session id of each view."""
    item: np.ndarray
    """int64 (V,) item id of each view."""

    @property
    def n_views(self) -> int:
        """Number of views."""
        return int(len(self.item))


@dataclass(frozen=True)
class PeriodEvents:
    """A period as event tables (``FILE_SCHEMA``): train and held-out test rows."""

    period: int
    train: pa.Table
    test: pa.Table
    n_views: int


def default_data_dir() -> Path:
    """``$FRESHRANK_DIGINETICA`` when set, else ``../shared/data/diginetica`` (relative to the
    working directory; nothing is looked up next to the installed package).

    >>> import os
    >>> default_data_dir() == Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)
    True
    """
    return Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


def available_periods(directory: str | os.PathLike[str]) -> list[int]:
    """The period numbers with a ``period_<n>.txt`` in ``directory`` (sorted; [] if absent)."""
    d = Path(directory)
    if not d.is_dir():
        return []
    out = []
    for p in d.glob("period_*.txt"):
        suffix = p.stem[len("period_") :]
        if suffix.isdigit():
            out.append(int(suffix))
    return sorted(out)


def read_period(directory: str | os.PathLike[str], period: int) -> PeriodViews:
    """Read ``period_<period>.txt`` (``sessionId itemId`` lines) into arrays.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "period_0.txt").write_text("1 10\\n1 11\\n2 10\\n")
    >>> v = read_period(d, 0)
    >>> v.session.tolist(), v.item.tolist()
    ([1, 1, 2], [10, 11, 10])
    """
    path = Path(directory) / f"period_{period}.txt"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; point DigineticaConfig.path (or --data) at the directory with "
            f"period_*.txt (see ../shared/data/diginetica/SOURCE.md)"
        )
    table = pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(column_names=["session", "item"]),
        parse_options=pacsv.ParseOptions(delimiter=" "),
        convert_options=pacsv.ConvertOptions(
            column_types={"session": pa.int64(), "item": pa.int64()}
        ),
    )
    return PeriodViews(
        period,
        np.asarray(table.column("session").to_numpy(), dtype=np.int64),
        np.asarray(table.column("item").to_numpy(), dtype=np.int64),
    )


@dataclass(frozen=True)
class _Requests:
    view_index: np.ndarray  # (R,) index of the target view in the file
    session: np.ndarray  # (R,)
    target: np.ndarray  # (R,)
    history: np.ndarray  # (R, h) most recent first, -1 = none


def _requests(views: PeriodViews, history: int) -> _Requests:
    """One request per view after the first of its session, with the preceding views."""
    order = np.argsort(views.session, kind="stable")  # keeps time order within a session
    sess = views.session[order]
    items = views.item[order]
    first = np.r_[True, sess[1:] != sess[:-1]]
    start = np.maximum.accumulate(np.where(first, np.arange(len(sess)), 0))
    step = np.arange(len(sess)) - start
    keep = np.flatnonzero(step >= 1)
    hist = np.full((len(keep), history), -1, dtype=np.int64)
    for j in range(1, history + 1):
        ok = step[keep] >= j
        hist[ok, j - 1] = items[keep[ok] - j]
    req = _Requests(order[keep], sess[keep], items[keep], hist)
    by_time = np.argsort(req.view_index, kind="stable")
    return _Requests(
        req.view_index[by_time], req.session[by_time], req.target[by_time], req.history[by_time]
    )


def _sample_negatives(
    target: np.ndarray,
    n_neg: int,
    pool: np.ndarray,
    weights: np.ndarray | None,
    rng: np.random.Generator,
) -> np.ndarray:
    """(R, n_neg) items from ``pool`` (with replacement), none equal to its row's target."""
    r = len(target)
    if len(pool) < 2:
        raise ValueError("a period needs at least two distinct items to sample negatives")
    cdf = None if weights is None else np.cumsum(weights / weights.sum())

    def draw(n: int) -> np.ndarray:
        if cdf is None:
            return pool[rng.integers(0, len(pool), n)]
        return pool[np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), len(pool) - 1)]

    neg = draw(r * n_neg).reshape(r, n_neg)
    for _ in range(100):
        clash = neg == target[:, None]
        if not clash.any():
            return neg
        neg[clash] = draw(int(clash.sum()))
    raise RuntimeError("could not draw negatives different from the positive")  # pragma: no cover


def _events_table(
    period: int, req: _Requests, n_candidates: int, negatives: np.ndarray, rng: np.random.Generator
) -> pa.Table:
    """Event rows for ``req`` with candidates ``[target, negatives...]`` shuffled per request."""
    r, k = len(req.target), n_candidates
    cand = np.concatenate([req.target[:, None], negatives], axis=1)  # (R, K), positive in col 0
    perm = np.argsort(rng.random((r, k)), axis=1)
    cand = np.take_along_axis(cand, perm, axis=1)
    clicked = perm == 0
    n = r * k
    row_req = np.repeat(np.arange(r), k)

    def prefixed(prefix: str, values: np.ndarray) -> pa.Array:
        return pc.binary_join_element_wise(prefix, pc.cast(pa.array(values), pa.string()), "")

    request_ids = prefixed(f"dg{period}-", req.view_index)
    tokens = [
        pc.if_else(
            pa.array(req.history[:, j] >= 0),
            prefixed("v", req.history[:, j]),
            pa.scalar(None, pa.string()),
        )
        for j in range(req.history.shape[1])
    ]
    query = pc.binary_join_element_wise(*tokens, " ", null_handling="skip")
    times = _EPOCH_2016_US + period * _WEEK_US + req.view_index * 1_000_000
    row_ids = pc.binary_join_element_wise(
        request_ids.take(row_req),
        pc.cast(pa.array(np.tile(np.arange(k), r)), pa.string()),
        "-",
    )
    columns = {
        "event_id": row_ids,
        "event_time": pa.array(np.repeat(times, k), pa.timestamp("us", tz="UTC")),
        "request_id": request_ids.take(row_req),
        "user_id": prefixed("s", req.session).take(row_req),
        "query": query.take(row_req),
        "item_id": prefixed("i", cand.ravel()),
        "position": pa.array(np.tile(np.arange(k, dtype=np.int32), r)),
        "category": pa.nulls(n, pa.string()),
        "brand": pa.nulls(n, pa.string()),
        "price": pa.nulls(n, pa.float64()),
        "device": pa.nulls(n, pa.string()),
        "clicked": pa.array(clicked.ravel()),
        "purchased": pa.nulls(n, pa.bool_()),
    }
    return pa.Table.from_pydict(columns, schema=FILE_SCHEMA)


def period_events(views: PeriodViews, config: DigineticaConfig) -> PeriodEvents:
    """A period's views as train and held-out test event tables (see the module docstring).

    Deterministic: the same views, config and period give the same tables.
    """
    rng = np.random.default_rng([config.seed, views.period])
    req = _requests(views, config.history)
    pool, counts = np.unique(views.item, return_counts=True)
    weights = counts.astype(np.float64) if config.negatives is NegativeSampling.POPULARITY else None

    sessions = np.unique(views.session)
    n_test = max(1, int(round(len(sessions) * config.holdout_fraction))) if len(sessions) else 0
    shuffled = rng.permutation(sessions)
    test_sessions = shuffled[:n_test]
    train_sessions = shuffled[n_test:]
    if config.train_session_fraction < 1.0:
        keep = int(math.ceil(len(train_sessions) * config.train_session_fraction))
        train_sessions = train_sessions[:keep]
    is_test = np.isin(req.session, test_sessions)
    is_train = np.isin(req.session, train_sessions)

    test_idx = np.flatnonzero(is_test)
    if config.test_requests is not None and len(test_idx) > config.test_requests:
        test_idx = np.sort(rng.choice(test_idx, config.test_requests, replace=False))
    train_idx = np.flatnonzero(is_train)

    tables = []
    for idx, k in ((train_idx, config.train_candidates), (test_idx, config.candidates)):
        part = _Requests(req.view_index[idx], req.session[idx], req.target[idx], req.history[idx])
        negs = _sample_negatives(part.target, k - 1, pool, weights, rng)
        tables.append(_events_table(views.period, part, k, negs, rng))
    return PeriodEvents(views.period, tables[0], tables[1], views.n_views)


def load_periods(
    config: DigineticaConfig, periods: Sequence[int] | None = None
) -> list[PeriodEvents]:
    """Read and convert the given periods (default: every ``period_*.txt`` found), in order."""
    directory = config.data_dir()
    wanted = available_periods(directory) if periods is None else list(periods)
    if not wanted:
        raise FileNotFoundError(
            f"no period_*.txt in {directory} (working directory {Path.cwd()}); set "
            f"DigineticaConfig.path (--diginetica-path) or ${DATA_DIR_ENV} to the DIGINETICA "
            f"directory (default {DEFAULT_DATA_DIR}; see its SOURCE.md)"
        )
    return [period_events(read_period(directory, p), config) for p in wanted]
