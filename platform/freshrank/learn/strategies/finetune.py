"""Plain fine-tuning: train on the new rows only, nothing against forgetting."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from freshrank.learn.strategies.base import Strategy, StrategyConfig, StrategyKind

__all__ = ["FineTune", "FineTuneConfig"]


@dataclass(frozen=True)
class FineTuneConfig(StrategyConfig):
    """Plain fine-tuning: train on the new rows only, nothing against forgetting."""

    kind: ClassVar[str] = StrategyKind.FINETUNE


class FineTune(Strategy):
    """No anti-forgetting: the hooks of :class:`Strategy`."""

    kind = StrategyKind.FINETUNE

    def __init__(self, config: FineTuneConfig | None = None, rank: int = 0) -> None:
        self.config = config or FineTuneConfig()
