"""The pydantic reference path of serving, for tests only: each request answered by building
``RankResponse`` models, which the endpoint's fast path (``serving.scoring.rank_requests_json``)
must equal byte for byte."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from freshrank.registry.checkpoint import ServingModel
from freshrank.serving.api import RankRequest, RankResponse
from freshrank.serving.scoring import Search, score_batch


def score_candidates(served: ServingModel, request: Search) -> np.ndarray:
    """Relevance scores of one request's candidates, in input order."""
    return score_batch(served, [request])[0]


def rank_requests(served: ServingModel, requests: Sequence[RankRequest]) -> list[RankResponse]:
    """Each request's candidates ordered by score, best first, as validated response models."""
    out = []
    for request, scores in zip(requests, score_batch(served, requests), strict=True):
        order = np.argsort(-scores, kind="stable").tolist()
        values, candidates = scores.tolist(), request.candidates
        ranked = [
            {"item_id": candidates[i].item_id, "score": values[i], "rank": r}
            for r, i in enumerate(order)
        ]
        out.append(RankResponse.model_validate({"model_version": served.version, "ranked": ranked}))
    return out


def rank_request(served: ServingModel, request: RankRequest) -> RankResponse:
    """One request through :func:`rank_requests`."""
    return rank_requests(served, [request])[0]
