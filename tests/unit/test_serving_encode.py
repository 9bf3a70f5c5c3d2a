"""Serving's table-free encoder gives exactly what ``encode(candidates_table(...))`` gives."""

import numpy as np
import pyarrow as pa
import pytest

from freshrank.features import hashing
from freshrank.features.encode import (
    INPUT_KEYS,
    SEARCH_KEYS,
    FeatureConfig,
    SearchCandidates,
    candidates_table,
    encode,
    encode_candidates,
    encode_search_groups,
    encode_searches,
)
from freshrank.features.hashing import (
    bucket_of,
    buckets_of,
    stable_hash64,
)

FC = FeatureConfig(
    user_buckets=101,
    item_buckets=211,
    category_buckets=13,
    brand_buckets=7,
    device_buckets=5,
    query_buckets=307,
    max_query_tokens=4,
)
# Whitespace RE2 splits on, whitespace it does not (\v, Unicode spaces), case mappings where
# Python and Arrow differ (final sigma, dotted I), and the empty / missing cases.
QUERY_PARTS = [
    "red",
    "Shoes",
    "RUNNING",
    " ",
    "  ",
    "\t",
    "\n",
    "\r",
    "\f",
    "\v",
    "\x1c",
    "\xa0",
    "\u3000",
    "ΣΑΣ",
    "İstanbul",
    "straße",
    "ǅ",
    "日本",
    "x-y",
    "",
]


def _random_query(rng: np.random.Generator) -> str | None:
    if rng.random() < 0.1:
        return None
    k = int(rng.integers(0, 9))
    return "".join(QUERY_PARTS[int(i)] for i in rng.integers(0, len(QUERY_PARTS), k))


def _maybe(rng: np.random.Generator, value: object, p_missing: float = 0.25) -> object:
    return None if rng.random() < p_missing else value


def _random_search(rng: np.random.Generator) -> tuple[str | None, str | None, str | None, list]:
    n = int(rng.integers(0, 40))
    candidates = []
    for _ in range(n):
        c: dict[str, object] = {"item_id": rng.choice(["", f"i{rng.integers(50)}", "ü"])}
        for key in ("category", "brand"):
            if rng.random() < 0.7:  # absent key and explicit None both mean missing
                c[key] = _maybe(rng, rng.choice(["", f"{key}{rng.integers(9)}", "Ω"]))
        if rng.random() < 0.8:
            c["price"] = _maybe(
                rng,
                rng.choice(
                    [0.0, -3.0, float(rng.uniform(0, 1e4)), 1e300, float("nan"), float("inf"), 7]
                ),
            )
        candidates.append(c)
    user = _maybe(rng, rng.choice(["", f"u{rng.integers(20)}"]), 0.1)
    device = _maybe(rng, rng.choice(["", "ios", "web"]), 0.3)
    return user, _random_query(rng), device, candidates  # type: ignore[return-value]


def _assert_identical(fast: dict, slow: dict) -> None:
    assert list(fast) == list(INPUT_KEYS) and set(slow) == set(INPUT_KEYS)
    for key in INPUT_KEYS:
        assert fast[key].dtype == slow[key].dtype, key
        assert fast[key].shape == slow[key].shape, key
        assert fast[key].tobytes() == slow[key].tobytes(), key


@pytest.mark.parametrize("seed", range(8))
def test_fast_path_is_byte_identical_to_the_table_path(seed):
    rng = np.random.default_rng(seed)
    searches = [_random_search(rng) for _ in range(int(rng.integers(1, 12)))]
    tables = [candidates_table(u, q, c, device=d) for u, q, d, c in searches]
    slow = encode(pa.concat_tables(tables), FC)
    fast = encode_searches(
        [SearchCandidates.from_candidates(u, q, c, device=d) for u, q, d, c in searches], FC
    )
    _assert_identical(fast, slow)
    for (u, q, d, c), table in zip(searches, tables, strict=True):
        _assert_identical(encode_candidates(u, q, c, FC, device=d), encode(table, FC))


@pytest.mark.parametrize("seed", range(4))
def test_search_groups_hold_each_search_once(seed):
    rng = np.random.default_rng(100 + seed)
    searches = [
        SearchCandidates.from_candidates(u, q, c, device=d)
        for u, q, d, c in (_random_search(rng) for _ in range(int(rng.integers(1, 9))))
    ]
    by_row = encode_searches(searches, FC)
    grouped, groups = encode_search_groups(searches, FC)
    sizes = [len(s) for s in searches]
    assert groups.dtype == np.int64
    assert groups.tolist() == [i for i, n in enumerate(sizes) for _ in range(n)]
    for key in INPUT_KEYS:
        if key in SEARCH_KEYS:
            assert len(grouped[key]) == len(searches), key
            expanded = grouped[key][groups]
            assert expanded.tobytes() == by_row[key].tobytes(), key
        else:
            assert grouped[key].tobytes() == by_row[key].tobytes(), key
        assert grouped[key].dtype == by_row[key].dtype, key


def test_queries_whose_tokens_python_and_arrow_split_or_case_differently():
    for query in [
        " leading",
        "trailing ",
        "a\vb c",
        "a\xa0b",
        "ΣΑΣ ΣΑΣ",
        "İ",
        "one two three four five six",
        "MiXeD\tCase\r\nend",
        "",
        None,
    ]:
        c = [{"item_id": "a"}, {"item_id": "b", "price": 2.0}]
        fast = encode_candidates("u", query, c, FC)
        _assert_identical(fast, encode(candidates_table("u", query, c), FC))
    # a real difference between the two lower-casings is there, so the test above can fail
    assert "ΣΑΣ".lower() != pa.compute.utf8_lower(pa.array(["ΣΑΣ"])).to_pylist()[0]


def test_no_searches_and_empty_search():
    empty = encode_searches([], FC)
    assert all(len(v) == 0 for v in empty.values()) and empty["query"].shape == (0, 4)
    _assert_identical(
        encode_searches([SearchCandidates("u", "q", None, [], [], [], [])], FC),
        encode(candidates_table("u", "q", []), FC),
    )


def _count_hashes(monkeypatch) -> list[str]:
    """Every value the bucket memos hash from now on (a miss hashes; a hit does not)."""
    seen: list[str] = []
    real = hashing.stable_hash64

    def counting(value: str, salt: str = "") -> int:
        seen.append(value)
        return real(value, salt)

    monkeypatch.setattr(hashing, "stable_hash64", counting)
    return seen


def test_memoised_buckets_equal_the_hash_and_hit_the_cache(monkeypatch):
    values = [f"memo-{i % 5}" for i in range(50)]
    want = [1 + stable_hash64(v, "item") % 999 for v in values]
    hashed = _count_hashes(monkeypatch)
    got = buckets_of(values, "item", 1000)
    assert got.tolist() == want and got.dtype == np.int64
    assert sorted(hashed) == sorted(set(values))  # 5 distinct values hashed once, 50 lookups
    assert buckets_of(values, "item", 1000).tolist() == want
    assert len(hashed) == 5  # all hits now
    assert [bucket_of(v, "item", 1000) for v in values] == want
    assert len(hashed) == 10  # bucket_of has its own memo: each distinct value hashed once more
    assert bucket_of(None, "item", 1000) == bucket_of("", "item", 1000) == 0
    with pytest.raises(ValueError, match="buckets must be >= 2"):
        buckets_of(["a"], "item", 1)


def test_a_full_bucket_memo_is_emptied_and_stays_right(monkeypatch):
    monkeypatch.setattr(hashing, "BUCKET_CACHE_SIZE", 10)
    values = [f"full-{i}" for i in range(35)] + [None, ""] + [f"full-{i}" for i in range(5)]
    want = [bucket_of(v, "full", 97) for v in values]
    hashed = _count_hashes(monkeypatch)
    got = buckets_of(values, "full", 97)
    assert got.tolist() == want
    assert len(hashed) == 40  # emptied when full, so the 5 repeats were hashed again
