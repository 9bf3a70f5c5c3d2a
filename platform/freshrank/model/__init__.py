"""The ranker, its configuration and chunked no-grad scoring."""

from freshrank.model.config import RankerConfig
from freshrank.model.ranker import (
    DenseArch,
    InteractionArch,
    OverArch,
    PositionBias,
    Ranker,
    SparseArch,
)
from freshrank.model.scoring import score_logits

__all__ = [
    "DenseArch",
    "InteractionArch",
    "OverArch",
    "PositionBias",
    "Ranker",
    "RankerConfig",
    "SparseArch",
    "score_logits",
]
