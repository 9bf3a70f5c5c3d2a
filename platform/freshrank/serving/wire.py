"""The ranking endpoint's hot-path codec: a JSON body straight to encoder columns, and back.

``api.RankRequest`` (pydantic) is the documented schema: FastAPI builds ``/docs`` from it and
answers every body it refuses with a 422 naming the field. Validating 100 candidates into 100
pydantic models is, however, the largest single cost of a ranking request (0.10 ms of CPU, plus
~300 objects for the garbage collector to track), so the fast path decodes with ``msgspec``
instead: :func:`decode_search` validates the same constraints (lengths, ``price >= 0`` and
finite, unknown fields refused) into untracked structs in ~0.02 ms and returns the encoder's
columns (``features.encode.SearchCandidates``). Anything it refuses goes on to FastAPI, so a
client sees exactly the documented answers. Both are strict about JSON types (no ``"1.5"`` or
``true`` for a price, no number for an id), so they accept the same bodies:
``tests/unit/test_serving_wire.py`` checks that every body one accepts the other accepts, with
the same values.

:func:`encode_ranking` writes the answer with ``orjson``: byte for byte
``RankResponse(...).model_dump_json()`` (same field order, same float text, non-finite as
``null``) at a third of pydantic-core's cost.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated, Protocol

import msgspec
import numpy as np
import orjson

from freshrank.features.encode import SearchCandidates
from freshrank.serving.api import MAX_CANDIDATES, MAX_ID_LENGTH, MAX_QUERY_LENGTH

_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH)]
_OptionalId = Annotated[str, msgspec.Meta(max_length=MAX_ID_LENGTH)] | None
_Price = Annotated[float, msgspec.Meta(ge=0, le=sys.float_info.max)] | None
"""``le=max float`` refuses what pydantic's ``allow_inf_nan=False`` refuses: JSON has no NaN or
infinity literals, but a number beyond the float range would decode as infinity."""


class _Candidate(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    item_id: _Id
    category: _OptionalId = None
    brand: _OptionalId = None
    price: _Price = None


class _Search(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    user_id: _Id
    candidates: Annotated[list[_Candidate], msgspec.Meta(min_length=1, max_length=MAX_CANDIDATES)]
    query: Annotated[str, msgspec.Meta(max_length=MAX_QUERY_LENGTH)] = ""
    device: _OptionalId = None


_DECODER = msgspec.json.Decoder(_Search)


def decode_search(body: bytes) -> SearchCandidates | None:
    """The columns of a valid ``POST /rank`` body, or None when msgspec refuses it (then let
    the pydantic route answer: it accepts what it accepts, and explains the rest).

    >>> s = decode_search(b'{"user_id": "u", "candidates": [{"item_id": "a", "price": 2}]}')
    >>> s.user_id, s.query, s.item_id, s.price
    ('u', '', ['a'], [2.0])
    >>> decode_search(b'{"user_id": "u", "candidates": []}') is None
    True
    """
    try:
        search = _DECODER.decode(body)
    except msgspec.DecodeError:  # ValidationError is a DecodeError
        return None
    return search_columns(search)


class CandidateFields(Protocol):
    """A candidate's fields as attributes (``api.Candidate``, the decoder's struct)."""

    item_id: str
    category: str | None
    brand: str | None
    price: float | None


class SearchFields(Protocol):
    """A search's fields as attributes (``api.RankRequest``, the decoder's struct)."""

    user_id: str
    query: str
    device: str | None

    @property
    def candidates(self) -> Sequence[CandidateFields]: ...


def search_columns(search: SearchFields) -> SearchCandidates:
    """A validated search as the columns the encoder reads."""
    candidates = search.candidates
    return SearchCandidates(
        user_id=search.user_id,
        query=search.query,
        device=search.device,
        item_id=[c.item_id for c in candidates],
        category=[c.category for c in candidates],
        brand=[c.brand for c in candidates],
        price=[c.price for c in candidates],
    )


def encode_ranking(version: int, item_ids: Sequence[str | None], scores: np.ndarray) -> bytes:
    """The ``RankResponse`` JSON of ``item_ids`` scored ``scores`` (best first, ties in input
    order), byte for byte what ``RankResponse(...).model_dump_json()`` gives.

    >>> encode_ranking(3, ["a", "b"], np.array([0.5, 2.0]))
    b'{"model_version":3,"ranked":[{"item_id":"b","score":2.0,"rank":0},{"item_id":"a","score":0.5,"rank":1}]}'
    """
    order = np.argsort(-scores, kind="stable").tolist()
    values = scores.tolist()
    ranked = [{"item_id": item_ids[i], "score": values[i], "rank": r} for r, i in enumerate(order)]
    return orjson.dumps({"model_version": version, "ranked": ranked})
