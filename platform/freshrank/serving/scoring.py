"""Scoring requests with a loaded model, through the same encoder training uses.

:func:`score_batch` scores a batch of requests in one forward pass: the requests' candidates
are encoded together by ``features.encode.encode_search_groups`` (byte for byte what ``encode``
gives for the requests' ``candidates_table()``s, the tables training encodes, without building
them, and with each search's own features once per search), scored once, and the scores are
split back per request. :func:`rank_requests_json` gives each
answer as the JSON body the endpoint sends (what ``RankResponse.model_dump_json()`` gives,
without building the response model).

A request is a pydantic ``RankRequest`` or already the encoder's columns (``SearchCandidates``,
what the endpoint's fast path decodes a body into: ``serving.wire``); both score the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from freshrank.features.encode import ID_FEATURES, SearchCandidates, encode_search_groups
from freshrank.registry.checkpoint import ServingModel
from freshrank.serving.api import RankRequest
from freshrank.serving.wire import encode_ranking, search_columns

Search = RankRequest | SearchCandidates
"""A request to score: validated by pydantic, or decoded into columns by ``serving.wire``."""

_RELEVANCE_KEYS = (*ID_FEATURES, "query", "dense")
"""The encoded inputs the ranker reads with ``use_position=False`` (position and label are
training's)."""


def search_candidates(request: RankRequest) -> SearchCandidates:
    """A request's candidates as the columns the encoder reads."""
    return search_columns(request)


def columns(request: Search) -> SearchCandidates:
    """The request as the encoder's columns."""
    return request if isinstance(request, SearchCandidates) else search_candidates(request)


def score_batch(served: ServingModel, requests: Sequence[Search]) -> list[np.ndarray]:
    """Relevance scores (position bias left out) of each request's candidates, in input order,
    from one encode and one forward pass over all of them."""
    if not requests:
        return []
    searches = [columns(r) for r in requests]
    inputs, groups = encode_search_groups(searches, served.model.config.features)
    with torch.inference_mode():
        tensors = {k: torch.from_numpy(inputs[k]) for k in _RELEVANCE_KEYS}
        # The search-level features embedded once per search: bit for bit the per-row scores.
        logits = served.model.relevance(tensors, torch.from_numpy(groups))
    scores = logits.numpy().astype(np.float64)
    if len(searches) == 1:
        return [scores]
    return np.split(scores, np.cumsum([len(s) for s in searches[:-1]]))


def responses_json(
    served: ServingModel, requests: Sequence[Search], scores: Sequence[np.ndarray]
) -> list[bytes]:
    """Each request's ``RankResponse`` JSON body for its ``scores`` (from :func:`score_batch`).

    Byte for byte ``RankResponse(...).model_dump_json()`` (``wire.encode_ranking``), without
    validating into models first; a non-finite score is ``null`` as there.
    """
    return [
        encode_ranking(served.version, columns(r).item_id, s)
        for r, s in zip(requests, scores, strict=True)
    ]


def rank_requests_json(served: ServingModel, requests: Sequence[Search]) -> list[bytes]:
    """Each request's candidates ordered by score, best first (ties keep input order), as the
    JSON body the endpoint sends (see :func:`responses_json`)."""
    return responses_json(served, requests, score_batch(served, requests))


def warm_up(served: ServingModel) -> ServingModel:
    """Run one small request through a freshly loaded model so the first real one is not slow."""
    request = RankRequest(
        user_id="warmup",
        query="warm up",
        candidates=[{"item_id": f"w{i}", "price": 1.0} for i in range(8)],
    )
    rank_requests_json(served, [request])
    return served
