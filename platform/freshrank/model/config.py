"""Configuration of the ranker."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from freshrank.features.encode import FeatureConfig


@dataclass(frozen=True)
class RankerConfig:
    """Sizes of the ranker's parts.

    >>> RankerConfig(embedding_dim=0)
    Traceback (most recent call last):
    ...
    ValueError: embedding_dim must be >= 1, got 0
    >>> RankerConfig.from_dict(RankerConfig().to_dict()) == RankerConfig()
    True
    """

    features: FeatureConfig = field(default_factory=FeatureConfig)
    embedding_dim: int = 16
    dense_hidden: tuple[int, ...] = (32,)
    over_hidden: tuple[int, ...] = (64, 32)

    def __post_init__(self) -> None:
        if self.embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {self.embedding_dim}")
        for name in ("dense_hidden", "over_hidden"):
            sizes = getattr(self, name)
            if any(int(s) < 1 for s in sizes):
                raise ValueError(f"{name} sizes must all be >= 1, got {sizes}")
            object.__setattr__(self, name, tuple(int(s) for s in sizes))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (stored in checkpoint manifests)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RankerConfig:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        features = FeatureConfig(**data.pop("features", {}))
        return cls(features=features, **data)
