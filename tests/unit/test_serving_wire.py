"""The hot-path codec accepts only what the documented schema accepts, with the same values,
and writes byte for byte what the response model writes."""

import json
import math

import numpy as np
import pytest
from pydantic import ValidationError

from freshrank.features.encode import SearchCandidates
from freshrank.serving.api import (
    MAX_CANDIDATES,
    MAX_ID_LENGTH,
    MAX_QUERY_LENGTH,
    RankRequest,
    RankResponse,
)
from freshrank.serving.scoring import search_candidates
from freshrank.serving.wire import decode_search, encode_ranking

GOOD = {
    "user_id": "u1",
    "query": "red shoes",
    "device": "ios",
    "candidates": [
        {"item_id": "a", "category": "c", "brand": "b", "price": 9.5},
        {"item_id": "b"},
        {"item_id": "c", "price": 0, "category": None, "brand": None},
    ],
}


def _with(path: tuple, value: object) -> dict:
    body = json.loads(json.dumps(GOOD))
    target = body
    for key in path[:-1]:
        target = target[key]
    if value is _DROP:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return body


_DROP = object()
LONG_ID = "x" * MAX_ID_LENGTH

# (name, raw body): valid, invalid, and bodies near every constraint's edge.
BODIES = [
    ("good", json.dumps(GOOD)),
    ("no query, no device", json.dumps(_with(("query",), _DROP) | {"device": None})),
    ("int price", json.dumps(_with(("candidates", 0, "price"), 3))),
    ("zero price", json.dumps(_with(("candidates", 0, "price"), 0.0))),
    ("negative zero price", json.dumps(_with(("candidates", 0, "price"), -0.0))),
    ("huge price", json.dumps(_with(("candidates", 0, "price"), 1.7e308))),
    ("price beyond float", json.dumps(GOOD).replace("9.5", "1e400")),
    ("price NaN token", json.dumps(GOOD).replace("9.5", "NaN")),
    ("price Infinity token", json.dumps(GOOD).replace("9.5", "Infinity")),
    ("negative price", json.dumps(_with(("candidates", 0, "price"), -0.01))),
    ("price as string", json.dumps(_with(("candidates", 0, "price"), "9.5"))),
    ("price as bool", json.dumps(_with(("candidates", 0, "price"), True))),
    ("price as int string", json.dumps(_with(("candidates", 0, "price"), "5"))),
    ("price false", json.dumps(_with(("candidates", 0, "price"), False))),
    ("price object", json.dumps(_with(("candidates", 0, "price"), {"v": 1}))),
    ("brand int", json.dumps(_with(("candidates", 0, "brand"), 3))),
    ("category bool", json.dumps(_with(("candidates", 0, "category"), True))),
    ("query int", json.dumps(_with(("query",), 5))),
    ("device bool", json.dumps(_with(("device",), False))),
    ("user id float", json.dumps(_with(("user_id",), 1.5))),
    ("item id at the limit", json.dumps(_with(("candidates", 1, "item_id"), LONG_ID))),
    ("item id over the limit", json.dumps(_with(("candidates", 1, "item_id"), LONG_ID + "x"))),
    ("multibyte id at the limit", json.dumps(_with(("user_id",), "é" * MAX_ID_LENGTH))),
    ("multibyte id over", json.dumps(_with(("user_id",), "😀" * (MAX_ID_LENGTH + 1)))),
    ("escaped multibyte", json.dumps(_with(("user_id",), "😀" * MAX_ID_LENGTH), ensure_ascii=True)),
    ("lone surrogate", json.dumps(GOOD).replace('"u1"', '"\\ud800"')),
    ("empty item id", json.dumps(_with(("candidates", 1, "item_id"), ""))),
    ("empty user id", json.dumps(_with(("user_id",), ""))),
    ("empty category", json.dumps(_with(("candidates", 1, "category"), ""))),
    ("query at the limit", json.dumps(_with(("query",), "q" * MAX_QUERY_LENGTH))),
    ("query over the limit", json.dumps(_with(("query",), "q" * (MAX_QUERY_LENGTH + 1)))),
    ("query null", json.dumps(_with(("query",), None))),
    ("user id null", json.dumps(_with(("user_id",), None))),
    ("user id int", json.dumps(_with(("user_id",), 7))),
    ("item id int", json.dumps(_with(("candidates", 0, "item_id"), 7))),
    ("category list", json.dumps(_with(("candidates", 0, "category"), ["c"]))),
    ("no user", json.dumps(_with(("user_id",), _DROP))),
    ("no item id", json.dumps(_with(("candidates", 0, "item_id"), _DROP))),
    ("unknown field", json.dumps(GOOD | {"page": 2})),
    ("unknown candidate field", json.dumps(_with(("candidates", 0, "colour"), "red"))),
    ("no candidates", json.dumps(_with(("candidates",), []))),
    ("candidates null", json.dumps(_with(("candidates",), None))),
    ("candidates object", json.dumps(_with(("candidates",), {"item_id": "a"}))),
    ("candidate string", json.dumps(_with(("candidates", 0), "a"))),
    (
        "most candidates",
        json.dumps(GOOD | {"candidates": [{"item_id": f"i{i}"} for i in range(MAX_CANDIDATES)]}),
    ),
    (
        "too many candidates",
        json.dumps(GOOD | {"candidates": [{"item_id": "i"}] * (MAX_CANDIDATES + 1)}),
    ),
    ("duplicate key", json.dumps(GOOD)[:-1] + ', "user_id": "u2"}'),
    ("array body", json.dumps([GOOD])),
    ("string body", json.dumps("hello")),
    ("null body", "null"),
    ("empty body", ""),
    ("trailing garbage", json.dumps(GOOD) + " x"),
    ("whitespace around", "\n " + json.dumps(GOOD) + " \t\n"),
    ("truncated", json.dumps(GOOD)[:-5]),
    ("byte order mark", "\ufeff" + json.dumps(GOOD)),
]


def _pydantic(raw: bytes) -> SearchCandidates | None:
    try:
        return search_candidates(RankRequest.model_validate_json(raw))
    except ValidationError:
        return None


@pytest.mark.parametrize("name, raw", BODIES, ids=[b[0] for b in BODIES])
def test_decoder_accepts_only_what_the_schema_accepts_with_the_same_values(name, raw):
    data = raw.encode("utf-8", "surrogatepass")
    fast, slow = decode_search(data), _pydantic(data)
    if fast is not None:
        # Everything the fast path takes, the documented schema takes, with the same columns.
        assert slow is not None, name
        assert fast == slow, name
        assert all(
            type(a) is type(b)
            for col in ("item_id", "category", "brand", "price")
            for a, b in zip(getattr(fast, col), getattr(slow, col), strict=True)
        )
    # And the other way round: both are strict (issue 17, fault 9), so they accept the same.
    if slow is not None:
        assert fast is not None, name


def test_the_edges_fall_where_the_limits_say():
    accepted = {name for name, raw in BODIES if decode_search(raw.encode()) is not None}
    assert {"good", "item id at the limit", "multibyte id at the limit", "most candidates"} <= (
        accepted
    )
    refused = {
        "item id over the limit",
        "multibyte id over",
        "negative price",
        "price beyond float",
        "price NaN token",
        "too many candidates",
        "no candidates",
        "unknown field",
        "empty item id",
        # wrong JSON types are refused, never coerced (issue 17, fault 9)
        "price as string",
        "price as int string",
        "price as bool",
        "price false",
        "price object",
        "brand int",
        "category bool",
        "query int",
        "device bool",
        "user id int",
        "user id float",
        "item id int",
    }
    assert not refused & accepted
    for name, raw in BODIES:
        if name in refused:
            assert _pydantic(raw.encode("utf-8", "surrogatepass")) is None, name


@pytest.mark.parametrize("seed", range(5))
def test_answer_bytes_equal_the_response_model(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    ids = [f'item-{i}-é"\\' if i % 7 == 0 else f"i{i}" for i in range(n)]
    scores = np.concatenate(
        [
            rng.normal(size=n - 3) * 10.0 ** float(rng.integers(-8, 18)),
            [0.0, -0.0, float(np.float32(rng.normal()))],
        ]
    )
    rng.shuffle(scores)
    scores[: n // 5] = scores[0]  # ties keep input order
    if seed == 0:
        scores[1] = math.nan
        scores[2] = math.inf
    order = np.argsort(-scores, kind="stable")
    model = RankResponse.model_validate(
        {
            "model_version": 12,
            "ranked": [
                {"item_id": ids[i], "score": float(scores[i]), "rank": r}
                for r, i in enumerate(order)
            ],
        }
    )
    assert encode_ranking(12, ids, scores) == model.model_dump_json().encode()
