"""Exemplar replay: past clicks replayed against candidates shown *now* (the pairwise form of
ADER's exemplar replay); on DIGINETICA the one strategy that matches joint retraining
(bench/RESULTS.md)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from torch import Tensor, nn

from freshrank.core.serialization import restore_rng_state, rng_state_array
from freshrank.features.encode import CANDIDATE_KEYS, concat_inputs, num_rows, slice_inputs
from freshrank.learn.strategies.base import (
    StateDict,
    StrategyKind,
    check_int,
    config_error,
    derive_seed,
)
from freshrank.learn.strategies.replay import BufferKind, Replay, ReplayConfig

__all__ = ["ExemplarReplay", "ExemplarReplayConfig"]


@dataclass(frozen=True)
class ExemplarReplayConfig(ReplayConfig):
    """Exemplar replay: past clicks replayed against candidates shown *now*.

    The buffer keeps a uniform reservoir of clicked rows only (``capacity`` of them). Each step
    mixes ``mix_ratio`` replay rows per new row: replayed clicks (label 1), each followed by
    ``negatives`` rows that pair the same search (user, device, query) with the candidate side
    (item, category, brand, price, position) of a random row of the current window (label 0;
    never the clicked item itself). The negatives therefore follow what is shown and popular
    now, as they do when the model is used, while the clicks carry what users chose before:
    the pairwise form of ADER's exemplar replay (Mi et al., RecSys 2020), whose exemplar
    sessions are scored against every current item.

    >>> ExemplarReplayConfig(negatives=0)
    Traceback (most recent call last):
    ...
    ValueError: ExemplarReplayConfig: negatives must be >= 1, got 0
    """

    kind: ClassVar[str] = StrategyKind.EXEMPLAR_REPLAY
    knobs: ClassVar[Mapping[str, str]] = {
        **ReplayConfig.knobs,
        "exemplar_negatives": "negatives",
    }
    negatives: int = 3
    """Current candidates paired with each replayed click (3: best of 1-7 on DIGINETICA)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        check_int(name, "negatives", self.negatives, 1)
        if self.buffer is not BufferKind.RESERVOIR:
            config_error(
                name, f"the buffer holds clicks only, so it is a reservoir; got {self.buffer}"
            )


class ExemplarReplay(Replay):
    """Replay past clicks against the current window's candidates (see
    :class:`ExemplarReplayConfig`).

    :meth:`before_window` keeps the window's rows as the pool of current candidates;
    :meth:`after_window` files the window's clicks in the reservoir. The state is the
    reservoir's plus the random stream that draws the negatives.
    """

    kind = StrategyKind.EXEMPLAR_REPLAY

    def __init__(self, config: ExemplarReplayConfig, rank: int = 0) -> None:
        super().__init__(config, rank)
        self.config: ExemplarReplayConfig = config
        self._rng = np.random.default_rng(derive_seed(config.seed + 1, rank))
        self._pool: Mapping[str, np.ndarray] | None = None

    def before_window(self, model: nn.Module, rows: Mapping[str, np.ndarray]) -> None:
        self._pool = rows if num_rows(rows) else None

    def replay_count(self, n_new: int) -> int | None:
        return None  # negatives that repeat their click's item are dropped once drawn

    def replay_rows(self, n_new: int) -> dict[str, np.ndarray]:
        k = int(round(n_new * self.config.mix_ratio))
        if k <= 0 or len(self.buffer) == 0 or self._pool is None:
            return {}
        per = 1 + self.config.negatives
        clicks = self.buffer.sample(max(1, k // per))
        n = num_rows(clicks)
        idx = self._rng.integers(0, num_rows(self._pool), size=n * self.config.negatives)
        negatives = {key: np.repeat(v, self.config.negatives, axis=0) for key, v in clicks.items()}
        for key in CANDIDATE_KEYS:
            negatives[key] = self._pool[key][idx]
        negatives["label"] = np.zeros_like(negatives["label"])
        keep = negatives["item"] != np.repeat(clicks["item"], self.config.negatives)
        return concat_inputs([clicks, slice_inputs(negatives, keep)])

    def after_window(self, model: nn.Module, rows: Mapping[str, np.ndarray]) -> None:
        self._pool = None
        if num_rows(rows):
            clicked = np.asarray(rows["label"]) > 0.5
            if clicked.any():
                self.buffer.add(slice_inputs(rows, clicked))

    def state_dict(self) -> StateDict:
        return {**super().state_dict(), "meta/negatives_rng": rng_state_array(self._rng)}

    def load_state_dict(self, state: Mapping[str, np.ndarray | Tensor]) -> None:
        rng = state.get("meta/negatives_rng")
        super().load_state_dict({k: v for k, v in state.items() if k != "meta/negatives_rng"})
        if rng is not None:
            restore_rng_state(self._rng, rng)
