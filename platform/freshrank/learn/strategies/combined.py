"""Several strategies at once (e.g. replay + LwF): replay from the replaying part, penalties
summed, every hook passed to every part in order."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from torch import Tensor, nn

from freshrank.learn.strategies.base import (
    StateDict,
    Strategy,
    StrategyConfig,
    StrategyKind,
    config_error,
    zero_penalty,
)
from freshrank.learn.strategies.lwf import LwFConfig
from freshrank.learn.strategies.replay import Replay, ReplayConfig

__all__ = ["Combined", "CombinedConfig"]


@dataclass(frozen=True)
class CombinedConfig(StrategyConfig):
    """Several strategies at once, e.g. replay + LwF; at most one of them may replay.

    >>> CombinedConfig(parts=(ReplayConfig(), ReplayConfig()))
    Traceback (most recent call last):
    ...
    ValueError: CombinedConfig: at most one part may be a ReplayConfig, got 2
    """

    kind: ClassVar[str] = StrategyKind.COMBINED
    parts: tuple[StrategyConfig, ...] = field(default_factory=lambda: (ReplayConfig(), LwFConfig()))

    def __post_init__(self) -> None:
        name = type(self).__name__
        parts = tuple(self.parts)
        object.__setattr__(self, "parts", parts)
        if not parts:
            config_error(name, "parts must hold at least one strategy config")
        for part in parts:
            if isinstance(part, CombinedConfig):
                config_error(name, "parts cannot nest a CombinedConfig; list its parts directly")
            if not isinstance(part, StrategyConfig):
                config_error(name, f"parts must be strategy configs, got {part!r}")
        n_replay = sum(isinstance(p, ReplayConfig) for p in parts)
        if n_replay > 1:
            config_error(name, f"at most one part may be a ReplayConfig, got {n_replay}")


class Combined(Strategy):
    """Run several strategies together: replay from the replaying one, penalties summed.

    A part's state keys are prefixed with ``<position>.<kind>/`` (``0.replay/rows/label``).
    """

    kind = StrategyKind.COMBINED

    def __init__(self, parts: Sequence[Strategy]) -> None:
        if sum(isinstance(p, Replay) for p in parts) > 1:
            raise ValueError("Combined: at most one part may replay")
        self.parts = tuple(parts)
        self._prefixes = tuple(f"{i}.{p.kind}/" for i, p in enumerate(self.parts))

    @classmethod
    def from_config(
        cls,
        config: StrategyConfig,
        rank: int,
        build: Callable[[StrategyConfig, int], Strategy],
    ) -> Strategy:
        assert isinstance(config, CombinedConfig)
        return cls([build(p, rank) for p in config.parts])

    def before_window(self, model: nn.Module, rows: Mapping[str, np.ndarray]) -> None:
        for part in self.parts:
            part.before_window(model, rows)

    def replay_rows(self, n_new: int) -> dict[str, np.ndarray]:
        for part in self.parts:
            rows = part.replay_rows(n_new)
            if rows:
                return rows
        return {}

    def replay_count(self, n_new: int) -> int | None:
        counts = [part.replay_count(n_new) for part in self.parts]
        if any(c is None for c in counts):  # unknown for one part: unknown (on every rank)
            return None
        return next((c for c in counts if c), 0)  # the first part that replays supplies rows

    def penalty(self, batch: Mapping[str, Tensor], outputs: Tensor, model: nn.Module) -> Tensor:
        total = zero_penalty(outputs)
        for part in self.parts:
            total = total + part.penalty(batch, outputs, model)
        return total

    def on_step(self, model: nn.Module) -> None:
        for part in self.parts:
            part.on_step(model)

    def after_window(self, model: nn.Module, rows: Mapping[str, np.ndarray]) -> None:
        for part in self.parts:
            part.after_window(model, rows)

    def state_dict(self) -> StateDict:
        state: StateDict = {}
        for prefix, part in zip(self._prefixes, self.parts, strict=True):
            state.update({prefix + k: v for k, v in part.state_dict().items()})
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray | Tensor]) -> None:
        for prefix, part in zip(self._prefixes, self.parts, strict=True):
            part.load_state_dict(
                {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            )

    def extra_trained_rows(self) -> int:
        return sum(p.extra_trained_rows() for p in self.parts)

    def forward_only_rows(self) -> int:
        return sum(p.forward_only_rows() for p in self.parts)
