"""Strategies measured on DIGINETICA that did not beat LwF (bench/RESULTS.md, "DIGINETICA: what
we tried"), kept here so that their arms stay reproducible, outside the library's surface.

* :class:`DarkReplay` (``dark-replay``): replay towards recorded soft targets (DER++).
* :class:`WeightAverage` (``average``): leave each window with the EMA of its steps' weights,
  optionally interpolated from its start.
* :class:`Anchor` (``anchor``): L2 to the window's start weights on the shared head.
* :class:`ShrinkPerturb` (``shrink``): shrink and perturb before each window.
* :class:`PairDistill` (``pair-distill``): teacher-labelled (context, item) pairs.
* :class:`ExemplarDistill` (``exemplar-distill``): exemplar replay whose LwF term distils only
  on the replayed exemplars, not on the new rows (issue 16).

Nothing is registered at import: :func:`register` adds the six kinds (:class:`ExperimentalKind`)
to a strategy registry (the library's default one unless given), after which
``parse_strategy("dark-replay")``, ``build_strategy(...)`` and the backtest's arm names know
them; ``bench/bench_backtest.py`` calls it before it parses arm names. Registering twice is a
no-op.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from freshrank.core.serialization import restore_rng_state, rng_state_array
from freshrank.features.encode import num_rows
from freshrank.learn.strategies import (
    ExemplarReplay,
    ExemplarReplayConfig,
    Replay,
    ReplayConfig,
    StateDict,
    Strategy,
    StrategyConfig,
    StrategyEntry,
    StrategyRegistry,
    default_registry,
)
from freshrank.learn.strategies.base import (
    check_float,
    check_int,
    config_error,
    derive_seed,
    frozen_copy,
    to_numpy,
    unwrap,
    zero_penalty,
)
from freshrank.learn.strategies.lwf import bernoulli_kl
from freshrank.model.device import to_tensors
from freshrank.model.scoring import score_logits

__all__ = [
    "Anchor",
    "AnchorConfig",
    "AverageConfig",
    "DarkReplay",
    "DarkReplayConfig",
    "ExemplarDistill",
    "ExemplarDistillConfig",
    "ExperimentalKind",
    "PairDistill",
    "PairDistillConfig",
    "ShrinkConfig",
    "ShrinkPerturb",
    "WeightAverage",
    "entries",
    "register",
]


class ExperimentalKind(StrEnum):
    """The kinds this module registers beside the library's ``StrategyKind``."""

    DARK_REPLAY = "dark_replay"
    AVERAGE = "average"
    ANCHOR = "anchor"
    SHRINK = "shrink"
    PAIR_DISTILL = "pair_distill"
    EXEMPLAR_DISTILL = "exemplar_distill"


# ------------------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class DarkReplayConfig(ReplayConfig):
    """Dark experience replay (Buzzega et al. 2020, DER++): replay rows with the model's own
    click probability as the target, recorded when the row's window had just been learned.

    A replayed row's BCE target is ``hard_weight * label + (1 - hard_weight) * p`` with ``p``
    the recorded probability, so replay distils what the model knew about those rows (at
    temperature 1) instead of refitting their 0/1 labels; ``hard_weight=1`` is plain replay.
    Recording costs one forward pass (no backward) over each window's rows. With the
    click-balanced buffer a row is filed as a click when its target is > 0.5. Takes the replay
    knobs (capacity, mix ratio, positive fraction, seed).

    >>> DarkReplayConfig(hard_weight=2)
    Traceback (most recent call last):
    ...
    ValueError: DarkReplayConfig: hard_weight must be in [0.0, 1.0], got 2
    """

    kind: ClassVar[str] = ExperimentalKind.DARK_REPLAY
    hard_weight: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_float(type(self).__name__, "hard_weight", self.hard_weight, 0.0, 1.0)


@dataclass(frozen=True)
class AverageConfig(StrategyConfig):
    """Weight averaging: the model a window leaves behind is an exponential moving average of
    the weights after each of that window's steps (Polyak averaging; Soutif-Cormerais et al.
    2023 on averaged weights in continual learning). The average starts at the first step's
    weights (so its weights sum to one) and the window's start weights are not in it.

    ``decay`` is the EMA's weight on the past per step (0: the last step's weights, i.e.
    fine-tuning); ``0.98`` has a half-life of about 34 steps. ``keep`` then interpolates
    between the weights the window started from and that average (Lookahead / WiSE-FT style):
    ``start + keep * (average - start)``; 1 keeps the average as it is.

    >>> AverageConfig(decay=1.0)
    Traceback (most recent call last):
    ...
    ValueError: AverageConfig: decay must be in [0, 1) (0: no averaging), got 1.0
    """

    kind: ClassVar[str] = ExperimentalKind.AVERAGE
    backtest_only: ClassVar[bool] = True
    decay: float = 0.95
    keep: float = 1.0

    def __post_init__(self) -> None:
        check_float(type(self).__name__, "keep", self.keep, 0.0, 1.0)
        if not (
            isinstance(self.decay, int | float)
            and math.isfinite(self.decay)
            and 0.0 <= self.decay < 1.0
        ):
            config_error(
                type(self).__name__,
                f"decay must be in [0, 1) (0: no averaging), got {self.decay!r}",
            )


@dataclass(frozen=True)
class AnchorConfig(StrategyConfig):
    """An L2 pull towards the weights a window started from, on the parameters whose names
    start with one of ``prefixes`` (default: the model's shared head, i.e. the dense and over
    MLPs, so that the embeddings of items a window does not touch keep their meaning).

    The penalty is ``lam / 2 * sum (theta - theta_start) ** 2`` over those parameters.

    >>> AnchorConfig(prefixes=())
    Traceback (most recent call last):
    ...
    ValueError: AnchorConfig: prefixes must name at least one parameter prefix, e.g. 'over.'
    """

    kind: ClassVar[str] = ExperimentalKind.ANCHOR
    lam: float = 10.0
    prefixes: tuple[str, ...] = ("over.", "dense.")

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_float(name, "lam", self.lam, 0.0)
        prefixes = tuple(self.prefixes)
        object.__setattr__(self, "prefixes", prefixes)
        if not prefixes or not all(isinstance(x, str) and x for x in prefixes):
            config_error(name, "prefixes must name at least one parameter prefix, e.g. 'over.'")


@dataclass(frozen=True)
class ShrinkConfig(StrategyConfig):
    """Shrink and perturb (Ash & Adams 2020, "On warm-starting neural network training"):
    before every window after the first, ``theta <- shrink * theta + noise * N(0, 1)`` on the
    parameters whose names start with one of ``prefixes`` (empty: every parameter).

    >>> ShrinkConfig(shrink=0)
    Traceback (most recent call last):
    ...
    ValueError: ShrinkConfig: shrink must be in [0.01, 1.0], got 0
    """

    kind: ClassVar[str] = ExperimentalKind.SHRINK
    backtest_only: ClassVar[bool] = True
    shrink: float = 0.9
    noise: float = 0.0
    prefixes: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_float(name, "shrink", self.shrink, 0.01, 1.0)
        check_float(name, "noise", self.noise, 0.0)
        object.__setattr__(self, "prefixes", tuple(self.prefixes))
        check_int(name, "seed", self.seed, 0)


@dataclass(frozen=True)
class PairDistillConfig(StrategyConfig):
    """Distil the previous model on extra (context, item) pairs built from the window: each
    step mixes in ``mix_ratio`` rows per new row whose request context (user, device, query,
    position) comes from one random row of the window and whose item (item, category, brand,
    dense) from another, labelled with the previous model's click probability, so the loss on
    them is a binary distillation at temperature 1. Starts after the first window.

    >>> PairDistillConfig(mix_ratio=-1)
    Traceback (most recent call last):
    ...
    ValueError: PairDistillConfig: mix_ratio must be a finite number >= 0.0, got -1
    """

    kind: ClassVar[str] = ExperimentalKind.PAIR_DISTILL
    mix_ratio: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_float(name, "mix_ratio", self.mix_ratio, 0.0)
        check_int(name, "seed", self.seed, 0)


# ---------------------------------------------------------------------------------- strategies


class DarkReplay(Replay):
    """Replay whose rows carry recorded soft targets (see :class:`DarkReplayConfig`).

    :meth:`after_window` scores the window's rows with the model that has just learned them
    (eval mode, no gradient) and offers the rows to the buffer with ``label`` replaced by the
    mixed target; sampling and state are :class:`Replay`'s.
    """

    kind = ExperimentalKind.DARK_REPLAY

    def __init__(self, config: DarkReplayConfig, rank: int = 0) -> None:
        super().__init__(config, rank)
        self.config: DarkReplayConfig = config
        self.rows_scored = 0
        """Rows put through a forward pass (no backward) to record targets (a statistic)."""

    def forward_only_rows(self) -> int:
        return self.rows_scored

    def after_window(self, model: nn.Module, rows: Mapping[str, np.ndarray]) -> None:
        n = num_rows(rows)
        if n == 0:
            return
        probs = 1.0 / (1.0 + np.exp(-score_logits(unwrap(model), rows)))
        self.rows_scored += n
        hard = np.asarray(rows["label"], dtype=np.float32)
        w = self.config.hard_weight
        target = w * hard + (1.0 - w) * probs.astype(np.float32)
        self.buffer.add({**rows, "label": target.astype(hard.dtype, copy=False)})


class WeightAverage(Strategy):
    """Leave each window with the EMA of its steps' weights (see :class:`AverageConfig`).

    :meth:`on_step` folds the weights after every optimizer step into the average;
    :meth:`after_window` writes the average (or its interpolation from the window's start)
    into the model. Between windows nothing is held, so the state is empty. Buffers
    (non-parameters) are left as the last step made them.
    """

    kind = ExperimentalKind.AVERAGE

    def __init__(self, config: AverageConfig, rank: int = 0) -> None:
        self.config = config
        self._ema: dict[str, Tensor] | None = None
        self._start: dict[str, Tensor] | None = None

    def before_window(self, model: nn.Module, rows: Mapping[str, np.ndarray]) -> None:
        self._ema, self._start = None, None
        if self.config.keep < 1.0 and num_rows(rows):
            self._start = {k: p.detach().clone() for k, p in unwrap(model).named_parameters()}

    def on_step(self, model: nn.Module) -> None:
        d = self.config.decay
        core = unwrap(model)
        with torch.no_grad():
            if self._ema is None:
                self._ema = {k: p.detach().clone() for k, p in core.named_parameters()}
                return
            for k, p in core.named_parameters():
                self._ema[k].lerp_(p.detach(), 1.0 - d)

    def after_window(self, model: nn.Module, rows: Mapping[str, np.ndarray]) -> None:
        if num_rows(rows) == 0 or self._ema is None:
            self._ema = self._start = None
            return
        with torch.no_grad():
            for k, p in unwrap(model).named_parameters():
                if self._start is not None:
                    p.copy_(self._start[k].lerp(self._ema[k], self.config.keep))
                else:
                    p.copy_(self._ema[k])
        self._ema = self._start = None


class Anchor(Strategy):
    """L2 towards the window's start weights on some parameters (see :class:`AnchorConfig`).

    The anchor is taken in :meth:`before_window` from the model that is about to train (the
    weights a restarted trainer restores from its checkpoint), once a window has been learned:
    the first window trains freely. The state holds only the number of windows learned.
    """

    kind = ExperimentalKind.ANCHOR

    def __init__(self, config: AnchorConfig, rank: int = 0) -> None:
        self.config = config
        self._anchor: dict[str, Tensor] = {}
        self._windows = 0

    def before_window(self, model: nn.Module, rows: Mapping[str, np.ndarray]) -> None:
        if self._windows == 0 or num_rows(rows) == 0:  # never anchor to the initialisation
            return
        self._anchor = {
            k: p.detach().clone()
            for k, p in unwrap(model).named_parameters()
            if k.startswith(self.config.prefixes)
        }

    def penalty(self, batch: Mapping[str, Tensor], outputs: Tensor, model: nn.Module) -> Tensor:
        if not self._anchor or self.config.lam == 0:
            return zero_penalty(outputs)
        total = zero_penalty(outputs)
        for k, p in unwrap(model).named_parameters():
            a = self._anchor.get(k)
            if a is not None:
                total = total + ((p - a) ** 2).sum()
        return 0.5 * self.config.lam * total

    def after_window(self, model: nn.Module, rows: Mapping[str, np.ndarray]) -> None:
        if num_rows(rows):
            self._anchor = {}
            self._windows += 1

    def state_dict(self) -> StateDict:
        return {"meta/windows": np.array(self._windows, dtype=np.int64)}

    def load_state_dict(self, state: Mapping[str, np.ndarray | Tensor]) -> None:
        self._windows = int(to_numpy(state.get("meta/windows", np.array(0))))
        self._anchor = {}


class ShrinkPerturb(Strategy):
    """Shrink (and perturb) the weights before every window but the first (see
    :class:`ShrinkConfig`). The state is the number of windows learned and the noise RNG."""

    kind = ExperimentalKind.SHRINK

    def __init__(self, config: ShrinkConfig, rank: int = 0) -> None:
        self.config = config
        self._windows = 0
        self._gen = torch.Generator().manual_seed(config.seed)  # the same on every rank

    def before_window(self, model: nn.Module, rows: Mapping[str, np.ndarray]) -> None:
        if self._windows == 0 or num_rows(rows) == 0:
            return
        cfg = self.config
        with torch.no_grad():
            for k, p in unwrap(model).named_parameters():
                if cfg.prefixes and not k.startswith(cfg.prefixes):
                    continue
                p.mul_(cfg.shrink)
                if cfg.noise > 0:
                    noise = torch.randn(p.shape, generator=self._gen, dtype=p.dtype)
                    p.add_(noise.to(p.device), alpha=cfg.noise)

    def after_window(self, model: nn.Module, rows: Mapping[str, np.ndarray]) -> None:
        if num_rows(rows):
            self._windows += 1

    def state_dict(self) -> StateDict:
        return {
            "meta/windows": np.array(self._windows, dtype=np.int64),
            "meta/rng": self._gen.get_state().numpy(),
        }

    def load_state_dict(self, state: Mapping[str, np.ndarray | Tensor]) -> None:
        self._windows = int(to_numpy(state.get("meta/windows", np.array(0))))
        if "meta/rng" in state:
            self._gen.set_state(torch.from_numpy(np.array(to_numpy(state["meta/rng"]))))


_ITEM_KEYS = ("item", "category", "brand", "dense")
"""Encoded inputs that describe the candidate item; the others describe the request."""


class PairDistill(Strategy):
    """Extra teacher-labelled (context, item) pairs (see :class:`PairDistillConfig`)."""

    kind = ExperimentalKind.PAIR_DISTILL

    def __init__(self, config: PairDistillConfig, rank: int = 0) -> None:
        self.config = config
        self._rng = np.random.default_rng(derive_seed(config.seed, rank))
        self._teacher: nn.Module | None = None
        self._rows: Mapping[str, np.ndarray] = {}
        self._windows = 0
        self.rows_scored = 0
        """Rows the teacher scored (forward only) to label the pairs (a statistic)."""

    def forward_only_rows(self) -> int:
        return self.rows_scored

    def before_window(self, model: nn.Module, rows: Mapping[str, np.ndarray]) -> None:
        if self._windows == 0 or num_rows(rows) == 0:
            return
        self._teacher, self._rows = frozen_copy(model), rows

    def replay_rows(self, n_new: int) -> dict[str, np.ndarray]:
        k = int(round(n_new * self.config.mix_ratio))
        n = num_rows(self._rows)
        if self._teacher is None or k <= 0 or n == 0:
            return {}
        context = self._rng.integers(0, n, size=k)
        item = self._rng.integers(0, n, size=k)
        out = {
            key: np.asarray(v)[item if key in _ITEM_KEYS else context]
            for key, v in self._rows.items()
        }
        device = next(self._teacher.parameters()).device
        with torch.no_grad():
            logits = self._teacher(to_tensors(out, device))
        out["label"] = torch.sigmoid(logits).cpu().numpy().astype(np.float32)
        self.rows_scored += k
        return out

    def after_window(self, model: nn.Module, rows: Mapping[str, np.ndarray]) -> None:
        if num_rows(rows):
            self._windows += 1
            self._teacher, self._rows = None, {}

    def state_dict(self) -> StateDict:
        return {
            "meta/windows": np.array(self._windows, dtype=np.int64),
            "meta/rng": rng_state_array(self._rng),
        }

    def load_state_dict(self, state: Mapping[str, np.ndarray | Tensor]) -> None:
        self._windows = int(to_numpy(state.get("meta/windows", np.array(0))))
        self._teacher, self._rows = None, {}
        if "meta/rng" in state:
            restore_rng_state(self._rng, state["meta/rng"])


@dataclass(frozen=True)
class ExemplarDistillConfig(ExemplarReplayConfig):
    """Exemplar replay with distillation on the exemplars only: the replayed clicks and their
    current negatives are pulled towards the model as it was before the window (LwF's term,
    ``alpha * T**2 * mean KL``), while the new rows learn from their labels alone.

    ADER (Mi et al. 2020) distils on its exemplars; the library's exemplar-replay+lwf distils
    on every row of a step, new ones included, which holds back what the window brings.

    >>> ExemplarDistillConfig(alpha=-1)
    Traceback (most recent call last):
    ...
    ValueError: ExemplarDistillConfig: alpha must be a finite number >= 0.0, got -1
    """

    kind: ClassVar[str] = ExperimentalKind.EXEMPLAR_DISTILL
    knobs: ClassVar[Mapping[str, str]] = {**ExemplarReplayConfig.knobs, "lwf_alpha": "alpha"}
    alpha: float = 1.0
    temperature: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        check_float(name, "alpha", self.alpha, 0.0)
        check_float(name, "temperature", self.temperature, 1e-6)


class ExemplarDistill(ExemplarReplay):
    """See :class:`ExemplarDistillConfig`: the replayed rows are the last ones of a step's
    batch (``train_window`` puts the new rows first), so the penalty distils on those."""

    kind = ExperimentalKind.EXEMPLAR_DISTILL

    def __init__(self, config: ExemplarDistillConfig, rank: int = 0) -> None:
        super().__init__(config, rank)
        self.config: ExemplarDistillConfig = config
        self._teacher: nn.Module | None = None
        self._replayed = 0

    def before_window(self, model: nn.Module, rows: Mapping[str, np.ndarray]) -> None:
        super().before_window(model, rows)
        self._teacher = frozen_copy(model) if len(self.buffer) and num_rows(rows) else None

    def replay_rows(self, n_new: int) -> dict[str, np.ndarray]:
        rows = super().replay_rows(n_new)
        self._replayed = num_rows(rows) if rows else 0
        return rows

    def penalty(self, batch: Mapping[str, Tensor], outputs: Tensor, model: nn.Module) -> Tensor:
        n = min(self._replayed, outputs.shape[0])  # a batch not built by train_window: fewer
        if self._teacher is None or n == 0 or self.config.alpha == 0:
            return zero_penalty(outputs)
        t = self.config.temperature
        old = {k: v[-n:] for k, v in batch.items()}
        with torch.no_grad():
            teacher = self._teacher(old) / t
        kl = bernoulli_kl(teacher, outputs[-n:] / t)
        return self.config.alpha * t * t * kl.mean()

    def after_window(self, model: nn.Module, rows: Mapping[str, np.ndarray]) -> None:
        super().after_window(model, rows)
        self._teacher, self._replayed = None, 0


# ---------------------------------------------------------------------------------- registry


def entries() -> tuple[StrategyEntry, ...]:
    """The registry entries of the six kinds, with their short names."""
    return (
        StrategyEntry(
            ExperimentalKind.DARK_REPLAY, DarkReplayConfig, DarkReplay,
            {"dark-replay": DarkReplayConfig()},
        ),
        StrategyEntry(
            ExperimentalKind.AVERAGE, AverageConfig, WeightAverage, {"average": AverageConfig()}
        ),
        StrategyEntry(ExperimentalKind.ANCHOR, AnchorConfig, Anchor, {"anchor": AnchorConfig()}),
        StrategyEntry(
            ExperimentalKind.SHRINK, ShrinkConfig, ShrinkPerturb, {"shrink": ShrinkConfig()}
        ),
        StrategyEntry(
            ExperimentalKind.PAIR_DISTILL, PairDistillConfig, PairDistill,
            {"pair-distill": PairDistillConfig()},
        ),
        StrategyEntry(
            ExperimentalKind.EXEMPLAR_DISTILL, ExemplarDistillConfig, ExemplarDistill,
            {"exemplar-distill": ExemplarDistillConfig()},
        ),
    )  # fmt: skip


def register(registry: StrategyRegistry | None = None) -> StrategyRegistry:
    """Add the six kinds to ``registry`` (default: the library's default registry) and return
    it; registering again is a no-op.

    >>> from freshrank.learn.strategies import library_registry
    >>> type(register(library_registry()).parse("lwf+dark-replay").parts[1]).__name__
    'DarkReplayConfig'
    """
    target = registry if registry is not None else default_registry()
    for entry in entries():
        target.add(entry)
    return target
