"""Turn events (training) and request candidates (serving) into model inputs.

There is one encoder, :func:`encode`, over an Arrow table in the event schema. Serving builds
such a table from a request with :func:`candidates_table` and calls the same function, so
training and serving cannot disagree about a feature.

Serving's fast path, :func:`encode_searches` (and :func:`encode_candidates` for one search),
gives the arrays ``encode(candidates_table(...))`` gives, byte for byte, without building an
Arrow table: the ids go through the same (memoised) hashing, a query is tokenised once per
search (pure Python for ASCII, where it agrees with Arrow's ``utf8_lower`` and RE2's
whitespace class; through the table path otherwise), and prices through the same dense transform.
``tests/unit/test_serving_encode.py`` holds the two paths equal on random requests.

Encoded inputs (B = rows, T = query tokens):

====================  ==========  =====================================================
key                   dtype/shape meaning
====================  ==========  =====================================================
``user``              int64 (B,)  hashed user id bucket (0 = missing)
``item``              int64 (B,)  hashed item id bucket
``category``          int64 (B,)  hashed category bucket
``brand``             int64 (B,)  hashed brand bucket
``device``            int64 (B,)  hashed device bucket
``query``             int64 (B,T) hashed query token buckets, 0 = padding
``dense``             f32 (B,2)   ``log1p(price)`` (0 if missing), price-missing flag
``position``          int64 (B,)  display position, clipped to ``max_position - 1``
``label``             f32 (B,)    clicked (0/1); 0 where the table has no labels
====================  ==========  =====================================================
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from freshrank.events.schema import FILE_SCHEMA
from freshrank.features.hashing import bucket_of, buckets_of, hash_buckets

ID_FEATURES: tuple[str, ...] = ("user", "item", "category", "brand", "device")
"""Id features, each one embedding table; the column they come from is in ``_ID_COLUMNS``."""

_ID_COLUMNS: dict[str, str] = {
    "user": "user_id",
    "item": "item_id",
    "category": "category",
    "brand": "brand",
    "device": "device",
}

INPUT_KEYS: tuple[str, ...] = (*ID_FEATURES, "query", "dense", "position", "label")
"""Every key :func:`encode` returns."""

CANDIDATE_KEYS: tuple[str, ...] = ("item", "category", "brand", "dense", "position")
"""The keys that describe the shown candidate (its item, price and display slot); the rest but
``label`` describe the search (``SEARCH_KEYS``)."""

SEARCH_KEYS: tuple[str, ...] = ("user", "device", "query")
"""The keys that describe the search (the same for every candidate of one search)."""

DENSE_DIM = 2


@dataclass(frozen=True)
class FeatureConfig:
    """Sizes of the hashed id spaces and query tokenisation.

    >>> FeatureConfig(user_buckets=1)
    Traceback (most recent call last):
    ...
    ValueError: user_buckets must be >= 2 (bucket 0 means missing), got 1
    """

    user_buckets: int = 50_000
    item_buckets: int = 100_000
    category_buckets: int = 1_000
    brand_buckets: int = 5_000
    device_buckets: int = 16
    query_buckets: int = 20_000
    max_query_tokens: int = 4
    max_position: int = 50

    def __post_init__(self) -> None:
        for name in (
            "user_buckets",
            "item_buckets",
            "category_buckets",
            "brand_buckets",
            "device_buckets",
            "query_buckets",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 2:
                raise ValueError(f"{name} must be >= 2 (bucket 0 means missing), got {value}")
        if self.max_query_tokens < 1:
            raise ValueError(f"max_query_tokens must be >= 1, got {self.max_query_tokens}")
        if self.max_position < 1:
            raise ValueError(f"max_position must be >= 1, got {self.max_position}")

    def buckets(self, feature: str) -> int:
        """Number of embedding rows of an id feature (``user``, ``item``, ...) or ``query``."""
        return int(getattr(self, f"{feature}_buckets"))


def encode(table: pa.Table | pa.RecordBatch, config: FeatureConfig) -> dict[str, np.ndarray]:
    """Encode event rows into model inputs (see the module docstring for the keys).

    Missing optional values (null category, brand, price, device, query) encode as "missing";
    a missing ``position`` encodes as 0 and a missing ``clicked`` as label 0.
    Rows are not filtered: drop invalid rows first (``events.drop_invalid_rows``).

    >>> t = candidates_table("u1", "red shoes", [{"item_id": "i1", "price": 9.0}])
    >>> enc = encode(t, FeatureConfig())
    >>> sorted(enc) == sorted(INPUT_KEYS)
    True
    >>> enc["query"].shape, enc["dense"].shape
    ((1, 4), (1, 2))
    """
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    n = table.num_rows
    out: dict[str, np.ndarray] = {}
    for feature in ID_FEATURES:
        column = _ID_COLUMNS[feature]
        if column in table.column_names:
            out[feature] = hash_buckets(table.column(column), feature, config.buckets(feature))
        else:
            out[feature] = np.zeros(n, dtype=np.int64)
    out["query"] = _encode_query(table, config)
    out["dense"] = _encode_dense(table)
    if "position" in table.column_names:
        pos = np.asarray(pc.fill_null(table.column("position"), 0).to_numpy(), dtype=np.int64)
        out["position"] = np.clip(pos, 0, config.max_position - 1)
    else:
        out["position"] = np.zeros(n, dtype=np.int64)
    if "clicked" in table.column_names:
        clicked = pc.fill_null(table.column("clicked"), False)
        out["label"] = np.asarray(clicked.to_numpy(zero_copy_only=False), dtype=np.float32)
    else:
        out["label"] = np.zeros(n, dtype=np.float32)
    return out


def _encode_query(table: pa.Table, config: FeatureConfig) -> np.ndarray:
    n, t = table.num_rows, config.max_query_tokens
    out = np.zeros((n, t), dtype=np.int64)
    if n == 0 or "query" not in table.column_names:
        return out
    query = pc.fill_null(table.column("query"), "")
    tokens = pc.split_pattern_regex(pc.utf8_lower(query), r"\s+", max_splits=t + 1)
    if isinstance(tokens, pa.ChunkedArray):
        tokens = tokens.combine_chunks()
    flat = tokens.flatten()
    offsets = np.asarray(tokens.offsets.to_numpy(), dtype=np.int64)
    if tokens.offset:  # sliced list arrays carry a base offset
        offsets = offsets - offsets[0]
    flat_buckets = hash_buckets(flat, "query", config.query_buckets)
    lengths = np.diff(offsets)
    row = np.repeat(np.arange(n), lengths)
    col = np.arange(len(flat_buckets)) - np.repeat(offsets[:-1], lengths)
    keep = col < t
    out[row[keep], col[keep]] = flat_buckets[keep]
    return out


def _encode_dense(table: pa.Table) -> np.ndarray:
    n = table.num_rows
    if "price" not in table.column_names or n == 0:
        return _dense(None, None, n)
    price = table.column("price")
    missing = np.asarray(pc.is_null(price, nan_is_null=True).to_numpy(zero_copy_only=False))
    values = np.asarray(pc.fill_null(price, 0.0).to_numpy(zero_copy_only=False), dtype=np.float64)
    return _dense(missing, values, n)


def _dense(missing: np.ndarray | None, values: np.ndarray | None, n: int) -> np.ndarray:
    """``dense`` from price values (float64) and their missing mask (None: no prices)."""
    dense = np.zeros((n, DENSE_DIM), dtype=np.float32)
    if missing is None or values is None or n == 0:
        dense[:, 1] = 1.0
        return dense
    values = np.where(missing | ~np.isfinite(values), 0.0, np.maximum(values, 0.0))
    dense[:, 0] = np.log1p(values)
    dense[:, 1] = missing.astype(np.float32)
    return dense


def candidates_table(
    user_id: str,
    query: str | None,
    candidates: Sequence[Mapping[str, object]],
    device: str | None = None,
) -> pa.Table:
    """Build an event-schema table for one search request, one row per candidate.

    Each candidate maps ``item_id`` (required) and optionally ``category``, ``brand``,
    ``price``. Event and label columns stay null: a request has no outcome yet.

    >>> candidates_table("u1", "shoes", [{"item_id": "a"}, {"item_id": "b"}]).num_rows
    2
    """
    n = len(candidates)
    columns: dict[str, pa.Array] = {}
    for field in FILE_SCHEMA:
        name = field.name
        if name == "user_id":
            arr = pa.array([user_id] * n, field.type)
        elif name == "query":
            arr = pa.array([query] * n, field.type)
        elif name == "device":
            arr = pa.array([device] * n, field.type)
        elif name in ("item_id", "category", "brand", "price"):
            arr = pa.array([c.get(name) for c in candidates], field.type)
        else:
            arr = pa.nulls(n, field.type)
        columns[name] = arr
    return pa.Table.from_pydict(columns, schema=FILE_SCHEMA)


@dataclass(frozen=True)
class SearchCandidates:
    """One search's candidates, column by column: what :func:`encode_searches` encodes.

    ``item_id``, ``category``, ``brand`` and ``price`` have one entry per candidate (None =
    missing); ``user_id``, ``query`` and ``device`` are the search's own.
    """

    user_id: str | None
    query: str | None
    device: str | None
    item_id: Sequence[str | None]
    category: Sequence[str | None]
    brand: Sequence[str | None]
    price: Sequence[float | None]

    @classmethod
    def from_candidates(
        cls,
        user_id: str | None,
        query: str | None,
        candidates: Sequence[Mapping[str, object]],
        device: str | None = None,
    ) -> SearchCandidates:
        """The columns of ``candidates_table(user_id, query, candidates, device)``."""
        return cls(
            user_id,
            query,
            device,
            [c.get("item_id") for c in candidates],  # type: ignore[misc]
            [c.get("category") for c in candidates],  # type: ignore[misc]
            [c.get("brand") for c in candidates],  # type: ignore[misc]
            [c.get("price") for c in candidates],  # type: ignore[misc]
        )

    def __len__(self) -> int:
        return len(self.item_id)


_QUERY_CACHE_SIZE = 4096
_RE2_SPACE = re.compile(r"[\t\n\f\r ]+")
"""RE2's ``\\s`` (what Arrow's ``split_pattern_regex`` uses): ASCII space, tab, newline, form
feed and carriage return; not vertical tab, not Unicode spaces."""


@functools.lru_cache(maxsize=_QUERY_CACHE_SIZE)
def _query_row(query: str | None, max_tokens: int, buckets: int) -> tuple[int, ...]:
    """The ``query`` row :func:`encode` gives a row holding ``query`` (memoised)."""
    if query is None or query == "":
        return (0,) * max_tokens
    if query.isascii():
        # ASCII only: str.lower() equals Arrow's utf8_lower, and _RE2_SPACE equals RE2's \s.
        tokens = _RE2_SPACE.split(query.lower(), maxsplit=max_tokens)[:max_tokens]
        row = [bucket_of(t, "query", buckets) for t in tokens]
        return tuple(row + [0] * (max_tokens - len(row)))
    # Unicode case mapping differs between Python and Arrow (e.g. final sigma): use Arrow.
    config = FeatureConfig(query_buckets=buckets, max_query_tokens=max_tokens)
    table = pa.table({"query": pa.array([query], pa.string())})
    return tuple(int(v) for v in _encode_query(table, config)[0])


def encode_searches(
    searches: Sequence[SearchCandidates], config: FeatureConfig
) -> dict[str, np.ndarray]:
    """The encoded inputs of several searches' candidates, rows in order, without Arrow.

    Equal, array for array and byte for byte, to ``encode`` of the concatenated
    ``candidates_table`` of each search (serving's hot path; see the module docstring).

    >>> s = SearchCandidates("u1", "Red shoes", None, ["i1", "i2"], [None, "c"], [None, None],
    ...                      [9.0, None])
    >>> fast = encode_searches([s], FeatureConfig())
    >>> slow = encode(candidates_table("u1", "Red shoes", [
    ...     {"item_id": "i1", "price": 9.0}, {"item_id": "i2", "category": "c"}]),
    ...     FeatureConfig())
    >>> all(np.array_equal(fast[k], slow[k]) and fast[k].dtype == slow[k].dtype for k in slow)
    True
    """
    inputs, groups = encode_search_groups(searches, config)
    for key in SEARCH_KEYS:
        inputs[key] = inputs[key][groups]
    return inputs


def encode_search_groups(
    searches: Sequence[SearchCandidates], config: FeatureConfig
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """:func:`encode_searches` with the search-level keys (``SEARCH_KEYS``) once per search.

    Returns the inputs, where ``user``, ``device`` and ``query`` have one row per search and
    every other key one row per candidate, and ``groups``: the search of each candidate row
    (int64). ``inputs[k][groups]`` for the search-level keys gives :func:`encode_searches`;
    ``Ranker.relevance(inputs, groups)`` scores them without repeating them.

    >>> s = SearchCandidates("u1", "shoes", None, ["i1", "i2"], [None, None], [None, None],
    ...                      [None, None])
    >>> inputs, groups = encode_search_groups([s, s], FeatureConfig())
    >>> inputs["user"].shape, inputs["query"].shape, inputs["item"].shape, groups.tolist()
    ((2,), (2, 4), (4,), [0, 0, 1, 1])
    """
    sizes = np.fromiter((len(s) for s in searches), dtype=np.int64, count=len(searches))
    n = int(sizes.sum())
    out: dict[str, np.ndarray] = {}
    for feature, attr in (("user", "user_id"), ("device", "device")):
        out[feature] = buckets_of(
            [getattr(s, attr) for s in searches], feature, config.buckets(feature)
        )
    for feature, attr in (("item", "item_id"), ("category", "category"), ("brand", "brand")):
        values: list[str | None] = []
        for s in searches:
            values.extend(getattr(s, attr))
        out[feature] = buckets_of(values, feature, config.buckets(feature))
    t = config.max_query_tokens
    rows = [_query_row(s.query, t, config.query_buckets) for s in searches]
    out["query"] = np.asarray(rows, dtype=np.int64).reshape(len(searches), t)
    prices: list[float | None] = []
    for s in searches:
        prices.extend(s.price)
    if n:
        price = np.array(prices, dtype=np.float64)  # None -> NaN
        out["dense"] = _dense(np.isnan(price), price, n)
    else:
        out["dense"] = _dense(None, None, 0)
    out["position"] = np.zeros(n, dtype=np.int64)
    out["label"] = np.zeros(n, dtype=np.float32)
    groups = np.repeat(np.arange(len(searches), dtype=np.int64), sizes)
    return {k: out[k] for k in INPUT_KEYS}, groups


def encode_candidates(
    user_id: str | None,
    query: str | None,
    candidates: Sequence[Mapping[str, object]],
    config: FeatureConfig,
    device: str | None = None,
) -> dict[str, np.ndarray]:
    """``encode(candidates_table(user_id, query, candidates, device), config)``, without Arrow.

    >>> enc = encode_candidates("u1", "shoes", [{"item_id": "a"}], FeatureConfig())
    >>> enc["dense"].tolist()
    [[0.0, 1.0]]
    """
    return encode_searches(
        [SearchCandidates.from_candidates(user_id, query, candidates, device)], config
    )


def slice_inputs(
    inputs: Mapping[str, np.ndarray], index: np.ndarray | slice
) -> dict[str, np.ndarray]:
    """Select rows of every array in an encoded batch."""
    return {k: v[index] for k, v in inputs.items()}


def concat_inputs(parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate encoded batches row-wise (all parts must have the same keys)."""
    if not parts:
        raise ValueError("concat_inputs needs at least one part")
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def num_rows(inputs: Mapping[str, np.ndarray]) -> int:
    """Number of rows of an encoded batch."""
    return int(len(inputs["label"])) if inputs else 0
