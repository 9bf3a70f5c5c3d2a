"""Serving: request models, scoring through the shared encoder, hot-swap holder, the Serve app
and a client for its endpoint."""

from freshrank.serving.api import Candidate, ModelStatus, RankRequest, RankResponse, ScoredItem
from freshrank.serving.app import RankingAppConfig, build_ranking_app
from freshrank.serving.client import RankAnswer, RankingClient
from freshrank.serving.holder import Loaded, ModelHolder
from freshrank.serving.limits import BodySizeLimit
from freshrank.serving.scoring import rank_requests_json, score_batch, warm_up

__all__ = [
    "BodySizeLimit",
    "Candidate",
    "Loaded",
    "ModelHolder",
    "ModelStatus",
    "RankAnswer",
    "RankRequest",
    "RankResponse",
    "RankingAppConfig",
    "RankingClient",
    "ScoredItem",
    "build_ranking_app",
    "rank_requests_json",
    "score_batch",
    "warm_up",
]
