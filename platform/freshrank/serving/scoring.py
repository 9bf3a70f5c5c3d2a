"""Scoring requests with a loaded model, through the same encoder training uses.

:func:`rank_requests` scores a batch of requests in one forward pass: each request becomes a
``candidates_table()`` (the table the encoder also sees in training), the tables are
concatenated, encoded once and scored once, and the scores are split back per request.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import torch

from freshrank.features.encode import candidates_table, encode
from freshrank.model.device import to_tensors
from freshrank.registry.checkpoint import ServingModel
from freshrank.serving.api import RankRequest, RankResponse

_CPU = torch.device("cpu")


def _table(request: RankRequest) -> pa.Table:
    # One model_dump of the list (pydantic-core) rather than one per candidate: 5x cheaper.
    candidates = request.model_dump(include={"candidates"})["candidates"]
    return candidates_table(request.user_id, request.query, candidates, device=request.device)


def score_batch(served: ServingModel, requests: Sequence[RankRequest]) -> list[np.ndarray]:
    """Relevance scores (position bias left out) of each request's candidates, in input order,
    from one encode and one forward pass over all of them."""
    if not requests:
        return []
    tables = [_table(r) for r in requests]
    table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
    inputs = encode(table, served.model.config.features)
    with torch.inference_mode():
        logits = served.model(to_tensors(inputs, _CPU), use_position=False)
    scores = logits.numpy().astype(np.float64)
    bounds = np.cumsum([t.num_rows for t in tables])[:-1]
    return np.split(scores, bounds)


def score_candidates(served: ServingModel, request: RankRequest) -> np.ndarray:
    """Relevance scores (position bias left out) of the request's candidates, in input order."""
    return score_batch(served, [request])[0]


def _ranked(served: ServingModel, request: RankRequest, scores: np.ndarray) -> RankResponse:
    order = np.argsort(-scores, kind="stable").tolist()
    values, candidates = scores.tolist(), request.candidates
    ranked = [
        {"item_id": candidates[i].item_id, "score": values[i], "rank": r}
        for r, i in enumerate(order)
    ]
    # Validated in one pydantic-core call: 3x cheaper than a ScoredItem(...) per candidate.
    return RankResponse.model_validate({"model_version": served.version, "ranked": ranked})


def rank_requests(served: ServingModel, requests: Sequence[RankRequest]) -> list[RankResponse]:
    """Each request's candidates ordered by score, best first, scored in one forward pass."""
    scores = score_batch(served, requests)
    return [_ranked(served, r, s) for r, s in zip(requests, scores, strict=True)]


def rank_request(served: ServingModel, request: RankRequest) -> RankResponse:
    """The request's candidates ordered by score, best first (ties keep input order)."""
    return rank_requests(served, [request])[0]


def warm_up(served: ServingModel) -> ServingModel:
    """Run one small request through a freshly loaded model so the first real one is not slow."""
    request = RankRequest(
        user_id="warmup",
        query="warm up",
        candidates=[{"item_id": f"w{i}", "price": 1.0} for i in range(8)],
    )
    rank_request(served, request)
    return served
