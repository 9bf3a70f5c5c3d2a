"""Experience replay from a buffer of past rows (a reservoir or a click-balanced buffer; the
buffers themselves are in ``learn/replay.py`` and ``learn/buffers.py``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

import numpy as np
from torch import Tensor, nn

from freshrank.features.encode import num_rows
from freshrank.learn.buffers import ClickBalancedBuffer, ReplayBuffer
from freshrank.learn.replay import ReservoirBuffer
from freshrank.learn.strategies.base import (
    StateDict,
    Strategy,
    StrategyConfig,
    StrategyKind,
    check_float,
    check_int,
    config_error,
    derive_seed,
    to_numpy,
)

__all__ = ["BufferKind", "Replay", "ReplayConfig"]


class BufferKind(Enum):
    """Which replay buffer a :class:`ReplayConfig` builds."""

    RESERVOIR = "reservoir"
    CLICK_BALANCED = "click_balanced"


@dataclass(frozen=True)
class ReplayConfig(StrategyConfig):
    """Experience replay from a buffer of past rows.

    >>> ReplayConfig(mix_ratio=-1)
    Traceback (most recent call last):
    ...
    ValueError: ReplayConfig: mix_ratio must be >= 0 (0.5: one old row per two new), got -1
    """

    kind: ClassVar[str] = StrategyKind.REPLAY
    knobs: ClassVar[Mapping[str, str]] = {
        "replay_capacity": "capacity",
        "replay_ratio": "mix_ratio",
        "replay_positive_fraction": "positive_fraction",
        "replay_seed": "seed",
    }
    chosen_by_name: ClassVar[tuple[str, ...]] = ("buffer",)
    capacity: int = 50_000
    """Rows the buffer holds (per worker in the trainer)."""
    mix_ratio: float = 0.5
    """Replay rows per step, as a fraction of the step's new rows."""
    buffer: BufferKind = BufferKind.RESERVOIR
    positive_fraction: float = 0.5
    """Click-balanced buffer only: share of clicks in the buffer and in each sample."""
    seed: int = 0

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_int(name, "capacity", self.capacity, 1)
        if not (isinstance(self.mix_ratio, int | float) and math.isfinite(self.mix_ratio)) or (
            self.mix_ratio < 0
        ):
            config_error(
                name,
                f"mix_ratio must be >= 0 (0.5: one old row per two new), got {self.mix_ratio!r}",
            )
        if not isinstance(self.buffer, BufferKind):
            config_error(
                name,
                f"buffer must be a BufferKind (e.g. BufferKind.RESERVOIR), got {self.buffer!r}",
            )
        check_float(name, "positive_fraction", self.positive_fraction, 0.0, 1.0)
        check_int(name, "seed", self.seed, 0)


class Replay(Strategy):
    """Mix ``mix_ratio`` old rows per new row into every step; remember each window after it."""

    kind = StrategyKind.REPLAY

    def __init__(self, config: ReplayConfig, rank: int = 0) -> None:
        self.config = config
        seed = derive_seed(config.seed, rank)
        if config.buffer is BufferKind.CLICK_BALANCED:
            self.buffer: ReplayBuffer = ClickBalancedBuffer(
                config.capacity, config.positive_fraction, seed=seed
            )
        else:
            self.buffer = ReservoirBuffer(config.capacity, seed=seed)

    def replay_rows(self, n_new: int) -> dict[str, np.ndarray]:
        k = int(round(n_new * self.config.mix_ratio))
        if k <= 0 or len(self.buffer) == 0:
            return {}
        return self.buffer.sample(k)

    def replay_count(self, n_new: int) -> int | None:
        k = int(round(n_new * self.config.mix_ratio))
        return k if k > 0 and len(self.buffer) > 0 else 0

    def after_window(self, model: nn.Module, rows: Mapping[str, np.ndarray]) -> None:
        if num_rows(rows):
            self.buffer.add(rows)

    def state_dict(self) -> StateDict:
        return dict(self.buffer.state_dict())

    def load_state_dict(self, state: Mapping[str, np.ndarray | Tensor]) -> None:
        self.buffer.load_state_dict({k: to_numpy(v) for k, v in state.items()})
