"""Scoring one request with a loaded model, through the same encoder training uses."""

from __future__ import annotations

import numpy as np
import torch

from freshrank.features.encode import candidates_table, encode
from freshrank.model.device import to_tensors
from freshrank.registry.checkpoint import ServingModel
from freshrank.serving.api import RankRequest, RankResponse, ScoredItem

_CPU = torch.device("cpu")


def score_candidates(served: ServingModel, request: RankRequest) -> np.ndarray:
    """Relevance scores (position bias left out) of the request's candidates, in input order."""
    table = candidates_table(
        request.user_id,
        request.query,
        [c.model_dump() for c in request.candidates],
        device=request.device,
    )
    inputs = encode(table, served.model.config.features)
    with torch.inference_mode():
        logits = served.model(to_tensors(inputs, _CPU), use_position=False)
    return logits.numpy().astype(np.float64)


def rank_request(served: ServingModel, request: RankRequest) -> RankResponse:
    """The request's candidates ordered by score, best first (ties keep input order)."""
    scores = score_candidates(served, request)
    order = np.argsort(-scores, kind="stable")
    ranked = [
        ScoredItem(item_id=request.candidates[i].item_id, score=float(scores[i]), rank=r)
        for r, i in enumerate(order)
    ]
    return RankResponse(model_version=served.version, ranked=ranked)


def warm_up(served: ServingModel) -> ServingModel:
    """Run one small request through a freshly loaded model so the first real one is not slow."""
    request = RankRequest(
        user_id="warmup",
        query="warm up",
        candidates=[{"item_id": f"w{i}", "price": 1.0} for i in range(8)],
    )
    rank_request(served, request)
    return served
