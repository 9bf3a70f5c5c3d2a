"""The ranker and its configuration."""

from freshrank.model.config import RankerConfig
from freshrank.model.ranker import (
    DenseArch,
    InteractionArch,
    OverArch,
    PositionBias,
    Ranker,
    SparseArch,
)

__all__ = [
    "DenseArch",
    "InteractionArch",
    "OverArch",
    "PositionBias",
    "Ranker",
    "RankerConfig",
    "SparseArch",
]
