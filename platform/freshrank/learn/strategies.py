"""Continual-learning strategies as small objects; the training step sums what they return.

A strategy sees the model and the rows of a window through a few hooks (the Avalanche plugin
shape) and never reaches into the trainer:

=========================================  ==================================================
hook                                       called
=========================================  ==================================================
``before_window(model, rows)``             once per window, before its first step
``replay_rows(n_new) -> rows or {}``       every step, for old rows to mix in with ``n_new``
``penalty(batch, outputs, model) -> T``    every step; added to the task loss (a 0-dim tensor)
``after_window(model, rows)``              once per window, after its last step
``state_dict()`` / ``load_state_dict()``   checkpoint: numpy arrays and torch tensors only
=========================================  ==================================================

``rows`` is an encoded window (the numpy dict of ``features.encode``); ``batch`` the same as
tensors on the model's device; ``outputs`` the click logits ``model(batch)`` (B,). ``model`` may
be wrapped in ``DistributedDataParallel``; strategies read its ``.module``. A window with no rows
leaves every strategy exactly as it was. Penalties are means over rows (or batch-independent), so
they add unscaled to a mean task loss; under DDP every rank adds its own and DDP averages.

Implementations: :class:`FineTune` (nothing), :class:`Replay` (a reservoir or click-balanced
buffer), :class:`EWC` (diagonal Fisher, separate or online), :class:`LwF` (binary distillation
from the model as it was before the window) and :class:`Combined` (e.g. replay + LwF). Build one
from its typed config with :func:`build_strategy`.

:class:`ExemplarReplay` replays past clicks against candidates of the current window (the
pairwise form of ADER's exemplar replay); on DIGINETICA it is the one strategy that matches
joint retraining (bench/RESULTS.md). Variants measured there that did not beat LwF (see
"DIGINETICA: what we tried"): :class:`DarkReplay` (replay towards recorded soft targets, DER++),
:class:`WeightAverage` (EMA of the window's weights, optionally interpolated from its start),
:class:`Anchor` (L2 to the window's start on the shared head), :class:`ShrinkPerturb` (shrink
and perturb before each window) and :class:`PairDistill` (teacher-labelled context/item pairs).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from freshrank.core.serialization import restore_rng_state, rng_state_array
from freshrank.features.encode import CANDIDATE_KEYS, concat_inputs, num_rows, slice_inputs
from freshrank.learn.buffers import ClickBalancedBuffer, ReplayBuffer
from freshrank.learn.replay import ReservoirBuffer
from freshrank.model.device import to_tensors

StateDict = dict[str, np.ndarray | Tensor]
"""What ``Strategy.state_dict`` returns: numpy arrays (save with ``np.savez``) and tensors
(save with ``torch.save``, load with ``weights_only=True``); see :func:`partition_state`."""


# ------------------------------------------------------------------------------------- configs


class StrategyKind(Enum):
    """Which anti-forgetting strategy a config builds."""

    FINETUNE = "finetune"
    REPLAY = "replay"
    EWC = "ewc"
    LWF = "lwf"
    COMBINED = "combined"
    AVERAGE = "average"
    DARK_REPLAY = "dark_replay"
    ANCHOR = "anchor"
    SHRINK = "shrink"
    PAIR_DISTILL = "pair_distill"
    EXEMPLAR_REPLAY = "exemplar_replay"


class BufferKind(Enum):
    """Which replay buffer a :class:`ReplayConfig` builds."""

    RESERVOIR = "reservoir"
    CLICK_BALANCED = "click_balanced"


class EWCMode(Enum):
    """How EWC accumulates importance over windows.

    ``SEPARATE``: one quadratic penalty per past window, anchored at that window's weights
    (kept in closed form, so memory does not grow with the number of windows).
    ``ONLINE``: one running Fisher ``decay * F + F_new`` anchored at the latest weights
    (Schwarz et al. 2018, "Progress & Compress").
    """

    SEPARATE = "separate"
    ONLINE = "online"


def _fail(cls: str, msg: str) -> None:
    raise ValueError(f"{cls}: {msg}")


def _check_int(cls: str, name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        _fail(cls, f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < low:
        _fail(cls, f"{name} must be >= {low}, got {value}")


def _check_float(cls: str, name: str, value: float, low: float, high: float = math.inf) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and low <= value <= high):
        bound = f"in [{low}, {high}]" if math.isfinite(high) else f"a finite number >= {low}"
        _fail(cls, f"{name} must be {bound}, got {value!r}")


@dataclass(frozen=True)
class FineTuneConfig:
    """Plain fine-tuning: train on the new rows only, nothing against forgetting."""

    kind: ClassVar[StrategyKind] = StrategyKind.FINETUNE


@dataclass(frozen=True)
class ReplayConfig:
    """Experience replay from a buffer of past rows.

    >>> ReplayConfig(mix_ratio=-1)
    Traceback (most recent call last):
    ...
    ValueError: ReplayConfig: mix_ratio must be >= 0 (0.5: one old row per two new), got -1
    """

    kind: ClassVar[StrategyKind] = StrategyKind.REPLAY
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
        _check_int(name, "capacity", self.capacity, 1)
        if not (isinstance(self.mix_ratio, int | float) and math.isfinite(self.mix_ratio)) or (
            self.mix_ratio < 0
        ):
            _fail(
                name,
                f"mix_ratio must be >= 0 (0.5: one old row per two new), got {self.mix_ratio!r}",
            )
        if not isinstance(self.buffer, BufferKind):
            _fail(
                name,
                f"buffer must be a BufferKind (e.g. BufferKind.RESERVOIR), got {self.buffer!r}",
            )
        _check_float(name, "positive_fraction", self.positive_fraction, 0.0, 1.0)
        _check_int(name, "seed", self.seed, 0)


@dataclass(frozen=True)
class EWCConfig:
    """Elastic weight consolidation with a diagonal (empirical) Fisher.

    The penalty is ``lam / 2 * sum_i F_i (theta_i - theta*_i) ** 2``. The Fisher is estimated
    after each window on ``fisher_rows`` of its rows, in batches of ``fisher_batch_size``, as
    ``fisher_batch_size * mean over batches of grad(mean BCE) ** 2`` (the per-row Fisher when
    the mean gradient is small), so ``lam`` has per-row units.

    >>> EWCConfig(mode="online")
    Traceback (most recent call last):
    ...
    ValueError: EWCConfig: mode must be an EWCMode such as EWCMode.ONLINE, got 'online'
    """

    kind: ClassVar[StrategyKind] = StrategyKind.EWC
    lam: float = 1.0
    mode: EWCMode = EWCMode.ONLINE
    decay: float = 0.9
    """Online mode: weight of the old Fisher when a window's Fisher is added (gamma)."""
    fisher_rows: int = 2048
    fisher_batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        name = type(self).__name__
        _check_float(name, "lam", self.lam, 0.0)
        if not isinstance(self.mode, EWCMode):
            _fail(name, f"mode must be an EWCMode such as EWCMode.ONLINE, got {self.mode!r}")
        _check_float(name, "decay", self.decay, 0.0, 1.0)
        _check_int(name, "fisher_rows", self.fisher_rows, 1)
        _check_int(name, "fisher_batch_size", self.fisher_batch_size, 1)
        _check_int(name, "seed", self.seed, 0)


@dataclass(frozen=True)
class LwFConfig:
    """Learning without forgetting for a click model: distil the previous model's click
    probabilities. The penalty is ``alpha * T**2 * mean KL(Bern(σ(t/T)) || Bern(σ(s/T)))`` over
    the batch, with ``t`` the teacher's logits (the model as it was before the window) and ``s``
    the student's.

    >>> LwFConfig(temperature=0)
    Traceback (most recent call last):
    ...
    ValueError: LwFConfig: temperature must be > 0 (1.0 distils probabilities as they are), got 0
    """

    kind: ClassVar[StrategyKind] = StrategyKind.LWF
    alpha: float = 1.0
    temperature: float = 2.0

    def __post_init__(self) -> None:
        name = type(self).__name__
        _check_float(name, "alpha", self.alpha, 0.0)
        if not (
            isinstance(self.temperature, int | float)
            and math.isfinite(self.temperature)
            and self.temperature > 0
        ):
            _fail(
                name,
                f"temperature must be > 0 (1.0 distils probabilities as they are), "
                f"got {self.temperature!r}",
            )


@dataclass(frozen=True)
class DarkReplayConfig(ReplayConfig):
    """Dark experience replay (Buzzega et al. 2020, DER++): replay rows with the model's own
    click probability as the target, recorded when the row's window had just been learned.

    A replayed row's BCE target is ``hard_weight * label + (1 - hard_weight) * p`` with ``p``
    the recorded probability, so replay distils what the model knew about those rows (at
    temperature 1) instead of refitting their 0/1 labels; ``hard_weight=1`` is plain replay.
    Recording costs one forward pass (no backward) over each window's rows. With the
    click-balanced buffer a row is filed as a click when its target is > 0.5.

    >>> DarkReplayConfig(hard_weight=2)
    Traceback (most recent call last):
    ...
    ValueError: DarkReplayConfig: hard_weight must be in [0.0, 1.0], got 2
    """

    kind: ClassVar[StrategyKind] = StrategyKind.DARK_REPLAY  # type: ignore[misc]
    hard_weight: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_float(type(self).__name__, "hard_weight", self.hard_weight, 0.0, 1.0)


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

    kind: ClassVar[StrategyKind] = StrategyKind.EXEMPLAR_REPLAY  # type: ignore[misc]
    negatives: int = 3
    """Current candidates paired with each replayed click (3: best of 1-7 on DIGINETICA)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        _check_int(name, "negatives", self.negatives, 1)
        if self.buffer is not BufferKind.RESERVOIR:
            _fail(name, f"the buffer holds clicks only, so it is a reservoir; got {self.buffer}")


@dataclass(frozen=True)
class AnchorConfig:
    """An L2 pull towards the weights a window started from, on the parameters whose names
    start with one of ``prefixes`` (default: the model's shared head, i.e. the dense and over
    MLPs, so that the embeddings of items a window does not touch keep their meaning).

    The penalty is ``lam / 2 * sum (theta - theta_start) ** 2`` over those parameters.

    >>> AnchorConfig(prefixes=())
    Traceback (most recent call last):
    ...
    ValueError: AnchorConfig: prefixes must name at least one parameter prefix, e.g. 'over.'
    """

    kind: ClassVar[StrategyKind] = StrategyKind.ANCHOR
    lam: float = 10.0
    prefixes: tuple[str, ...] = ("over.", "dense.")

    def __post_init__(self) -> None:
        name = type(self).__name__
        _check_float(name, "lam", self.lam, 0.0)
        prefixes = tuple(self.prefixes)
        object.__setattr__(self, "prefixes", prefixes)
        if not prefixes or not all(isinstance(x, str) and x for x in prefixes):
            _fail(name, "prefixes must name at least one parameter prefix, e.g. 'over.'")


@dataclass(frozen=True)
class ShrinkConfig:
    """Shrink and perturb (Ash & Adams 2020, "On warm-starting neural network training"):
    before every window after the first, ``theta <- shrink * theta + noise * N(0, 1)`` on the
    parameters whose names start with one of ``prefixes`` (empty: every parameter).

    >>> ShrinkConfig(shrink=0)
    Traceback (most recent call last):
    ...
    ValueError: ShrinkConfig: shrink must be in [0.01, 1.0], got 0
    """

    kind: ClassVar[StrategyKind] = StrategyKind.SHRINK
    shrink: float = 0.9
    noise: float = 0.0
    prefixes: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        name = type(self).__name__
        _check_float(name, "shrink", self.shrink, 0.01, 1.0)
        _check_float(name, "noise", self.noise, 0.0)
        object.__setattr__(self, "prefixes", tuple(self.prefixes))
        _check_int(name, "seed", self.seed, 0)


@dataclass(frozen=True)
class PairDistillConfig:
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

    kind: ClassVar[StrategyKind] = StrategyKind.PAIR_DISTILL
    mix_ratio: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        name = type(self).__name__
        _check_float(name, "mix_ratio", self.mix_ratio, 0.0)
        _check_int(name, "seed", self.seed, 0)


@dataclass(frozen=True)
class AverageConfig:
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

    kind: ClassVar[StrategyKind] = StrategyKind.AVERAGE
    decay: float = 0.95
    keep: float = 1.0

    def __post_init__(self) -> None:
        _check_float(type(self).__name__, "keep", self.keep, 0.0, 1.0)
        if not (
            isinstance(self.decay, int | float)
            and math.isfinite(self.decay)
            and 0.0 <= self.decay < 1.0
        ):
            _fail(
                type(self).__name__,
                f"decay must be in [0, 1) (0: no averaging), got {self.decay!r}",
            )


@dataclass(frozen=True)
class CombinedConfig:
    """Several strategies at once, e.g. replay + LwF; at most one of them may replay.

    >>> CombinedConfig(parts=(ReplayConfig(), ReplayConfig()))
    Traceback (most recent call last):
    ...
    ValueError: CombinedConfig: at most one part may be a ReplayConfig, got 2
    """

    kind: ClassVar[StrategyKind] = StrategyKind.COMBINED
    parts: tuple[
        FineTuneConfig
        | ReplayConfig
        | EWCConfig
        | LwFConfig
        | AverageConfig
        | AnchorConfig
        | ShrinkConfig,
        ...,
    ] = field(default_factory=lambda: (ReplayConfig(), LwFConfig()))

    def __post_init__(self) -> None:
        name = type(self).__name__
        parts = tuple(self.parts)
        object.__setattr__(self, "parts", parts)
        if not parts:
            _fail(name, "parts must hold at least one strategy config")
        for part in parts:
            if isinstance(part, CombinedConfig):
                _fail(name, "parts cannot nest a CombinedConfig; list its parts directly")
            if not isinstance(
                part,
                FineTuneConfig
                | ReplayConfig
                | EWCConfig
                | LwFConfig
                | AverageConfig
                | AnchorConfig
                | ShrinkConfig
                | PairDistillConfig,
            ):
                _fail(name, f"parts must be strategy configs, got {part!r}")
        n_replay = sum(isinstance(p, ReplayConfig) for p in parts)
        if n_replay > 1:
            _fail(name, f"at most one part may be a ReplayConfig, got {n_replay}")


StrategyConfig = (
    FineTuneConfig
    | ReplayConfig
    | EWCConfig
    | LwFConfig
    | AverageConfig
    | AnchorConfig
    | ShrinkConfig
    | PairDistillConfig
    | CombinedConfig
)
"""Any strategy config; :func:`build_strategy` turns one into a :class:`Strategy`."""


def parse_strategy(text: str) -> StrategyConfig:
    """A default config from a short name: ``finetune``, ``replay``, ``replay-balanced``,
    ``ewc``, ``ewc-separate``, ``lwf``, or parts joined with ``+`` (``replay+lwf``).

    >>> parse_strategy("replay+lwf") == CombinedConfig((ReplayConfig(), LwFConfig()))
    True
    >>> parse_strategy("sgd")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown strategy 'sgd'; choose from finetune, replay, ...
    """
    names: dict[str, StrategyConfig] = {
        "finetune": FineTuneConfig(),
        "replay": ReplayConfig(),
        "replay-balanced": ReplayConfig(buffer=BufferKind.CLICK_BALANCED),
        "ewc": EWCConfig(),
        "ewc-separate": EWCConfig(mode=EWCMode.SEPARATE),
        "lwf": LwFConfig(),
        "average": AverageConfig(),
        "dark-replay": DarkReplayConfig(),
        "exemplar-replay": ExemplarReplayConfig(),
        "anchor": AnchorConfig(),
        "shrink": ShrinkConfig(),
        "pair-distill": PairDistillConfig(),
    }
    parts = [p.strip().lower() for p in text.split("+")]
    for p in parts:
        if p not in names:
            raise ValueError(
                f"unknown strategy {p!r}; choose from {', '.join(names)}, or join them with '+'"
            )
    if len(parts) == 1:
        return names[parts[0]]
    return CombinedConfig(tuple(names[p] for p in parts))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- strategies


def _core(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or the model itself)."""
    return getattr(model, "module", model)


def _frozen_copy(model: nn.Module) -> nn.Module:
    """A teacher: a copy of the (unwrapped) model in eval mode that gradients never reach."""
    teacher = copy.deepcopy(_core(model))
    teacher.requires_grad_(False)
    teacher.eval()
    return teacher


def _zero(outputs: Tensor) -> Tensor:
    return outputs.new_zeros(())


class Strategy:
    """Base strategy: every hook does nothing (which is fine-tuning)."""

    kind: ClassVar[StrategyKind] = StrategyKind.FINETUNE

    def before_window(self, model: nn.Module, rows: Mapping[str, np.ndarray]) -> None:
        """Called once before a window's first training step."""

    def replay_rows(self, n_new: int) -> dict[str, np.ndarray]:
        """Old rows to mix into a step with ``n_new`` new rows (``{}`` for none)."""
        return {}

    def penalty(self, batch: Mapping[str, Tensor], outputs: Tensor, model: nn.Module) -> Tensor:
        """A 0-dim tensor >= 0 added to the step's task loss."""
        return _zero(outputs)

    def after_window(self, model: nn.Module, rows: Mapping[str, np.ndarray]) -> None:
        """Called once after a window's last training step."""

    def state_dict(self) -> StateDict:
        """What a checkpoint must keep to continue identically."""
        return {}

    def load_state_dict(self, state: Mapping[str, np.ndarray | Tensor]) -> None:
        """Restore from :meth:`state_dict` output (arrays may come back as numpy or tensors)."""


class FineTune(Strategy):
    """No anti-forgetting: the hooks of :class:`Strategy`."""

    def __init__(self, config: FineTuneConfig | None = None) -> None:
        self.config = config or FineTuneConfig()


class Replay(Strategy):
    """Mix ``mix_ratio`` old rows per new row into every step; remember each window after it."""

    kind = StrategyKind.REPLAY

    def __init__(self, config: ReplayConfig, rank: int = 0) -> None:
        self.config = config
        seed = _derive_seed(config.seed, rank)
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

    def after_window(self, model: nn.Module, rows: Mapping[str, np.ndarray]) -> None:
        if num_rows(rows):
            self.buffer.add(rows)

    def state_dict(self) -> StateDict:
        return dict(self.buffer.state_dict())

    def load_state_dict(self, state: Mapping[str, np.ndarray | Tensor]) -> None:
        self.buffer.load_state_dict({k: _to_numpy(v) for k, v in state.items()})


class DarkReplay(Replay):
    """Replay whose rows carry recorded soft targets (see :class:`DarkReplayConfig`).

    :meth:`after_window` scores the window's rows with the model that has just learned them
    (eval mode, no gradient) and offers the rows to the buffer with ``label`` replaced by the
    mixed target; sampling and state are :class:`Replay`'s.
    """

    kind = StrategyKind.DARK_REPLAY

    def __init__(self, config: DarkReplayConfig, rank: int = 0) -> None:
        super().__init__(config, rank)
        self.config: DarkReplayConfig = config
        self.rows_scored = 0
        """Rows put through a forward pass (no backward) to record targets (a statistic)."""

    def after_window(self, model: nn.Module, rows: Mapping[str, np.ndarray]) -> None:
        n = num_rows(rows)
        if n == 0:
            return
        core = _core(model)
        device = next(core.parameters()).device
        was_training = core.training
        core.eval()
        probs = []
        with torch.no_grad():
            for start in range(0, n, 65_536):
                part = to_tensors(slice_inputs(rows, slice(start, start + 65_536)), device)
                probs.append(torch.sigmoid(core(part)).cpu().numpy())
        core.train(was_training)
        self.rows_scored += n
        hard = np.asarray(rows["label"], dtype=np.float32)
        w = self.config.hard_weight
        target = w * hard + (1.0 - w) * np.concatenate(probs).astype(np.float32)
        self.buffer.add({**rows, "label": target.astype(hard.dtype, copy=False)})


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
        self._rng = np.random.default_rng(_derive_seed(config.seed + 1, rank))
        self._pool: Mapping[str, np.ndarray] | None = None

    def before_window(self, model: nn.Module, rows: Mapping[str, np.ndarray]) -> None:
        self._pool = rows if num_rows(rows) else None

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


class EWC(Strategy):
    """Diagonal-Fisher EWC (Kirkpatrick et al. 2017), separate or online (see :class:`EWCMode`).

    Separate mode keeps ``sum_k F_k (theta - theta_k) ** 2`` in closed form: with
    ``A = sum_k F_k`` and ``m = sum_k F_k theta_k / A`` it equals ``A (theta - m) ** 2`` plus a
    constant, so one importance and one anchor per weight suffice however many windows pass.
    Weights a window never touched (e.g. embedding rows of unseen ids) get zero importance.
    """

    kind = StrategyKind.EWC

    def __init__(self, config: EWCConfig, rank: int = 0) -> None:
        self.config = config
        self._rng = np.random.default_rng(_derive_seed(config.seed, rank))
        self._importance: dict[str, Tensor] = {}
        self._anchor: dict[str, Tensor] = {}
        self._residual = 0.0  # separate mode: the constant of the closed form
        self._windows = 0
        self.fisher_rows_processed = 0
        """Rows put through forward/backward to estimate Fisher (a statistic, not state)."""

    def penalty(self, batch: Mapping[str, Tensor], outputs: Tensor, model: nn.Module) -> Tensor:
        if not self._importance or self.config.lam == 0:
            return _zero(outputs)
        total = _zero(outputs)
        for name, param in _core(model).named_parameters():
            imp = self._importance.get(name)
            if imp is None:
                continue
            if imp.device != param.device:  # e.g. loaded on CPU, trained on GPU: move once
                imp = self._importance[name] = imp.to(param.device)
                self._anchor[name] = self._anchor[name].to(param.device)
            total = total + (imp * (param - self._anchor[name]) ** 2).sum()
        return 0.5 * self.config.lam * (total + self._residual)

    def after_window(self, model: nn.Module, rows: Mapping[str, np.ndarray]) -> None:
        n = num_rows(rows)
        if n == 0:
            return
        core = _core(model)
        fisher = self._fisher(core, rows)
        params = {k: p.detach().clone() for k, p in core.named_parameters() if k in fisher}
        if not self._importance:
            self._importance, self._anchor = fisher, params
        elif self.config.mode is EWCMode.ONLINE:
            for k, f in fisher.items():
                self._importance[k] = self.config.decay * self._importance[k].to(f.device) + f
            self._anchor = params
        else:
            residual = 0.0
            for k, f in fisher.items():
                a, m, theta = (
                    self._importance[k].to(f.device),
                    self._anchor[k].to(f.device),
                    params[k],
                )
                total = a + f
                safe = torch.where(total > 0, total, torch.ones_like(total))
                residual += float((a * f * (m - theta) ** 2 / safe).sum())
                self._anchor[k] = torch.where(total > 0, (a * m + f * theta) / safe, theta)
                self._importance[k] = total
            self._residual += residual
        self._windows += 1

    def _fisher(self, core: nn.Module, rows: Mapping[str, np.ndarray]) -> dict[str, Tensor]:
        cfg = self.config
        n = num_rows(rows)
        take = self._rng.permutation(n)[: min(n, cfg.fisher_rows)]
        named = [(k, p) for k, p in core.named_parameters() if p.requires_grad]
        device = named[0][1].device
        fisher = {k: torch.zeros_like(p, memory_format=torch.preserve_format) for k, p in named}
        batches = 0
        for start in range(0, len(take), cfg.fisher_batch_size):
            idx = take[start : start + cfg.fisher_batch_size]
            batch = to_tensors(slice_inputs(rows, idx), device)
            logits = core(batch)
            loss = F.binary_cross_entropy_with_logits(logits, batch["label"])
            # autograd.grad leaves every .grad untouched (and never triggers DDP's reducer).
            grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
            for (k, _), g in zip(named, grads, strict=True):
                if g is not None:
                    fisher[k] += len(idx) * g.detach() ** 2
            batches += 1
            self.fisher_rows_processed += len(idx)
        return {k: f / max(batches, 1) for k, f in fisher.items()}

    def state_dict(self) -> StateDict:
        state: StateDict = {
            f"importance/{k}": v.detach().cpu() for k, v in self._importance.items()
        }
        state.update({f"anchor/{k}": v.detach().cpu() for k, v in self._anchor.items()})
        state["meta/residual"] = np.array(self._residual, dtype=np.float64)
        state["meta/windows"] = np.array(self._windows, dtype=np.int64)
        state["meta/rng"] = rng_state_array(self._rng)
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray | Tensor]) -> None:
        self._importance = {
            k[len("importance/") :]: _to_tensor(v)
            for k, v in state.items()
            if k.startswith("importance/")
        }
        self._anchor = {
            k[len("anchor/") :]: _to_tensor(v) for k, v in state.items() if k.startswith("anchor/")
        }
        if set(self._importance) != set(self._anchor):
            raise ValueError("EWC state: importance and anchor name different parameters")
        self._residual = float(_to_numpy(state.get("meta/residual", np.array(0.0))))
        self._windows = int(_to_numpy(state.get("meta/windows", np.array(0))))
        if "meta/rng" in state:
            restore_rng_state(self._rng, state["meta/rng"])


class LwF(Strategy):
    """Binary LwF: keep the click probabilities of the model as it was when the window began.

    The teacher is a frozen copy taken in :meth:`before_window` once the model has learned at
    least one window (distilling a randomly initialised model would only slow learning). The
    teacher is the checkpointed weights of the previous window, so the state holds only whether
    a window has been learned; a restarted trainer takes the same teacher from its restored model.
    """

    kind = StrategyKind.LWF

    def __init__(self, config: LwFConfig) -> None:
        self.config = config
        self._teacher: nn.Module | None = None
        self._windows = 0

    def before_window(self, model: nn.Module, rows: Mapping[str, np.ndarray]) -> None:
        if self._windows == 0 or num_rows(rows) == 0:
            return
        self._teacher = _frozen_copy(model)

    def penalty(self, batch: Mapping[str, Tensor], outputs: Tensor, model: nn.Module) -> Tensor:
        if self._teacher is None or outputs.numel() == 0 or self.config.alpha == 0:
            return _zero(outputs)
        t = self.config.temperature
        with torch.no_grad():
            teacher_logits = self._teacher(batch) / t
        student = outputs / t
        return self.config.alpha * t * t * bernoulli_kl(teacher_logits, student).mean()

    def after_window(self, model: nn.Module, rows: Mapping[str, np.ndarray]) -> None:
        if num_rows(rows):
            self._windows += 1

    def state_dict(self) -> StateDict:
        return {"meta/windows": np.array(self._windows, dtype=np.int64)}

    def load_state_dict(self, state: Mapping[str, np.ndarray | Tensor]) -> None:
        self._windows = int(_to_numpy(state.get("meta/windows", np.array(0))))
        self._teacher = None


class Anchor(Strategy):
    """L2 towards the window's start weights on some parameters (see :class:`AnchorConfig`).

    The anchor is taken in :meth:`before_window` from the model that is about to train (the
    weights a restarted trainer restores from its checkpoint), once a window has been learned:
    the first window trains freely. The state holds only the number of windows learned.
    """

    kind = StrategyKind.ANCHOR

    def __init__(self, config: AnchorConfig) -> None:
        self.config = config
        self._anchor: dict[str, Tensor] = {}
        self._windows = 0

    def before_window(self, model: nn.Module, rows: Mapping[str, np.ndarray]) -> None:
        if self._windows == 0 or num_rows(rows) == 0:  # never anchor to the initialisation
            return
        self._anchor = {
            k: p.detach().clone()
            for k, p in _core(model).named_parameters()
            if k.startswith(self.config.prefixes)
        }

    def penalty(self, batch: Mapping[str, Tensor], outputs: Tensor, model: nn.Module) -> Tensor:
        if not self._anchor or self.config.lam == 0:
            return _zero(outputs)
        total = _zero(outputs)
        for k, p in _core(model).named_parameters():
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
        self._windows = int(_to_numpy(state.get("meta/windows", np.array(0))))
        self._anchor = {}


class ShrinkPerturb(Strategy):
    """Shrink (and perturb) the weights before every window but the first (see
    :class:`ShrinkConfig`). The state is the number of windows learned and the noise RNG."""

    kind = StrategyKind.SHRINK

    def __init__(self, config: ShrinkConfig, rank: int = 0) -> None:
        self.config = config
        self._windows = 0
        self._gen = torch.Generator().manual_seed(config.seed)  # the same on every rank

    def before_window(self, model: nn.Module, rows: Mapping[str, np.ndarray]) -> None:
        if self._windows == 0 or num_rows(rows) == 0:
            return
        cfg = self.config
        with torch.no_grad():
            for k, p in _core(model).named_parameters():
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
        self._windows = int(_to_numpy(state.get("meta/windows", np.array(0))))
        if "meta/rng" in state:
            self._gen.set_state(torch.from_numpy(np.array(_to_numpy(state["meta/rng"]))))


_ITEM_KEYS = ("item", "category", "brand", "dense")
"""Encoded inputs that describe the candidate item; the others describe the request."""


class PairDistill(Strategy):
    """Extra teacher-labelled (context, item) pairs (see :class:`PairDistillConfig`)."""

    kind = StrategyKind.PAIR_DISTILL

    def __init__(self, config: PairDistillConfig, rank: int = 0) -> None:
        self.config = config
        self._rng = np.random.default_rng(_derive_seed(config.seed, rank))
        self._teacher: nn.Module | None = None
        self._rows: Mapping[str, np.ndarray] = {}
        self._windows = 0
        self.rows_scored = 0
        """Rows the teacher scored (forward only) to label the pairs (a statistic)."""

    def before_window(self, model: nn.Module, rows: Mapping[str, np.ndarray]) -> None:
        if self._windows == 0 or num_rows(rows) == 0:
            return
        self._teacher, self._rows = _frozen_copy(model), rows

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
        self._windows = int(_to_numpy(state.get("meta/windows", np.array(0))))
        self._teacher, self._rows = None, {}
        if "meta/rng" in state:
            restore_rng_state(self._rng, state["meta/rng"])


class WeightAverage(Strategy):
    """Leave each window with the EMA of its steps' weights (see :class:`AverageConfig`).

    The average is updated in :meth:`penalty` (every step, before the optimizer moves the
    weights, so it sees the weights after the previous step) and once more in
    :meth:`after_window` with the last step's weights, which it then writes into the model.
    Between windows nothing is held, so the state is empty. Buffers (non-parameters) are left
    as the last step made them.
    """

    kind = StrategyKind.AVERAGE

    def __init__(self, config: AverageConfig) -> None:
        self.config = config
        self._ema: dict[str, Tensor] | None = None
        self._start: dict[str, Tensor] | None = None
        self._calls = 0

    def before_window(self, model: nn.Module, rows: Mapping[str, np.ndarray]) -> None:
        self._ema, self._calls, self._start = None, 0, None
        if self.config.keep < 1.0 and num_rows(rows):
            self._start = {k: p.detach().clone() for k, p in _core(model).named_parameters()}

    def penalty(self, batch: Mapping[str, Tensor], outputs: Tensor, model: nn.Module) -> Tensor:
        self._calls += 1
        if self._calls > 1:  # the first call sees the window's start weights: skip them
            self._accumulate(_core(model))
        return _zero(outputs)

    def _accumulate(self, core: nn.Module) -> None:
        d = self.config.decay
        with torch.no_grad():
            if self._ema is None:
                self._ema = {k: p.detach().clone() for k, p in core.named_parameters()}
                return
            for k, p in core.named_parameters():
                self._ema[k].lerp_(p.detach(), 1.0 - d)

    def after_window(self, model: nn.Module, rows: Mapping[str, np.ndarray]) -> None:
        if num_rows(rows) == 0 or self._calls == 0:
            self._ema = self._start = None
            return
        core = _core(model)
        self._accumulate(core)
        assert self._ema is not None
        with torch.no_grad():
            for k, p in core.named_parameters():
                if self._start is not None:
                    p.copy_(self._start[k].lerp(self._ema[k], self.config.keep))
                else:
                    p.copy_(self._ema[k])
        self._ema = self._start = None


def bernoulli_kl(p_logits: Tensor, q_logits: Tensor) -> Tensor:
    """Elementwise ``KL(Bern(sigmoid(p)) || Bern(sigmoid(q)))`` from logits, clamped at 0.

    >>> float(bernoulli_kl(torch.tensor([0.3]), torch.tensor([0.3])))
    0.0
    >>> round(float(bernoulli_kl(torch.tensor([0.0]), torch.tensor([2.0]))), 4)
    0.4338
    """
    p = torch.sigmoid(p_logits)
    kl = p * (F.logsigmoid(p_logits) - F.logsigmoid(q_logits)) + (1 - p) * (
        F.logsigmoid(-p_logits) - F.logsigmoid(-q_logits)
    )
    return kl.clamp_min(0.0)


class Combined(Strategy):
    """Run several strategies together: replay from the replaying one, penalties summed."""

    kind = StrategyKind.COMBINED

    def __init__(self, parts: Sequence[Strategy]) -> None:
        if sum(isinstance(p, Replay) for p in parts) > 1:
            raise ValueError("Combined: at most one part may replay")
        self.parts = tuple(parts)
        self._prefixes = tuple(f"{i}.{p.kind.value}/" for i, p in enumerate(self.parts))

    def before_window(self, model: nn.Module, rows: Mapping[str, np.ndarray]) -> None:
        for part in self.parts:
            part.before_window(model, rows)

    def replay_rows(self, n_new: int) -> dict[str, np.ndarray]:
        for part in self.parts:
            rows = part.replay_rows(n_new)
            if rows:
                return rows
        return {}

    def penalty(self, batch: Mapping[str, Tensor], outputs: Tensor, model: nn.Module) -> Tensor:
        total = _zero(outputs)
        for part in self.parts:
            total = total + part.penalty(batch, outputs, model)
        return total

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


def build_strategy(config: StrategyConfig, rank: int = 0) -> Strategy:
    """The strategy a config describes. ``rank`` derives a distinct random stream per worker.

    >>> build_strategy(parse_strategy("replay+lwf")).kind
    <StrategyKind.COMBINED: 'combined'>
    """
    if isinstance(config, CombinedConfig):
        return Combined([build_strategy(p, rank) for p in config.parts])
    if isinstance(config, DarkReplayConfig):
        return DarkReplay(config, rank)
    if isinstance(config, ExemplarReplayConfig):
        return ExemplarReplay(config, rank)
    if isinstance(config, ReplayConfig):
        return Replay(config, rank)
    if isinstance(config, EWCConfig):
        return EWC(config, rank)
    if isinstance(config, LwFConfig):
        return LwF(config)
    if isinstance(config, AverageConfig):
        return WeightAverage(config)
    if isinstance(config, AnchorConfig):
        return Anchor(config)
    if isinstance(config, ShrinkConfig):
        return ShrinkPerturb(config, rank)
    if isinstance(config, PairDistillConfig):
        return PairDistill(config, rank)
    if isinstance(config, FineTuneConfig):
        return FineTune(config)
    raise TypeError(f"not a strategy config: {config!r}")


# --------------------------------------------------------------------------- state utilities


def partition_state(state: Mapping[str, np.ndarray | Tensor]) -> tuple[dict, dict]:
    """Split a strategy state into ``(numpy arrays, tensors)``: save the first with ``np.savez``
    and the second with ``torch.save`` (loaded with ``weights_only=True``).

    >>> arrays, tensors = partition_state({"a": np.zeros(2), "b": torch.zeros(2)})
    >>> sorted(arrays), sorted(tensors)
    (['a'], ['b'])
    """
    arrays = {k: np.asarray(v) for k, v in state.items() if not isinstance(v, Tensor)}
    tensors = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    return arrays, tensors


def reshard_state(
    parts: Sequence[Mapping[str, np.ndarray | Tensor]], rank: int, world: int
) -> dict[str, np.ndarray | Tensor]:
    """One rank's strategy state from the states every rank saved (``parts[r]`` from rank r).

    Same world size: ``parts[rank]``. Otherwise the replay rows (keys with a ``rows/`` segment)
    of all parts are pooled and dealt round-robin to the new ranks, and every other key comes
    from rank 0 (EWC and LwF state are the same kind of thing on every rank).

    >>> old = [{"rows/x": np.array([0, 2]), "meta/w": np.array(1)},
    ...        {"rows/x": np.array([1, 3]), "meta/w": np.array(1)}]
    >>> reshard_state(old, 0, 1)["rows/x"].tolist()
    [0, 2, 1, 3]
    """
    if not parts:
        return {}
    if len(parts) == world and 0 <= rank < world:
        return dict(parts[rank])
    out: dict[str, np.ndarray | Tensor] = {}
    for key, value in parts[0].items():
        if "rows/" not in key:
            out[key] = value
    row_keys = sorted({k for p in parts for k in p if "rows/" in k})
    groups: dict[str, list[str]] = {}
    for key in row_keys:  # rows of one buffer share the prefix before "rows/"
        groups.setdefault(key[: key.index("rows/")], []).append(key)
    for keys in groups.values():
        held = [{k: _to_numpy(p[k]) for k in keys} for p in parts if all(k in p for k in keys)]
        if not held:
            continue
        pooled = concat_inputs(held)
        mine = slice_inputs(pooled, slice(rank, None, world))
        out.update(mine)
    return out


def _derive_seed(seed: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def _to_numpy(value: np.ndarray | Tensor) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)


def _to_tensor(value: np.ndarray | Tensor) -> Tensor:
    return (
        value.detach().clone() if isinstance(value, Tensor) else torch.from_numpy(np.array(value))
    )
