"""What every strategy shares: the config base class, the :class:`Strategy` hooks, the library's
kinds, and the small tools a strategy is written with (also used by the strategies in bench/).

A strategy sees the model and the rows of a window through a few hooks (the Avalanche plugin
shape) and never reaches into the trainer:

=========================================  ==================================================
hook                                       called
=========================================  ==================================================
``before_window(model, rows)``             once per window, before its first step
``replay_rows(n_new) -> rows or {}``       every step, for old rows to mix in with ``n_new``
``penalty(batch, outputs, model) -> T``    every step; added to the task loss (a 0-dim tensor)
``on_step(model)``                         every step, right after the optimizer step
``after_window(model, rows)``              once per window, after its last step
``state_dict()`` / ``load_state_dict()``   checkpoint: numpy arrays and torch tensors only
=========================================  ==================================================

and two counters for the events budget of a backtest: :meth:`Strategy.extra_trained_rows`
(rows put through forward and backward outside the steps, e.g. EWC's Fisher) and
:meth:`Strategy.forward_only_rows` (rows scored without a backward pass, e.g. recorded targets).

``rows`` is an encoded window (the numpy dict of ``features.encode``); ``batch`` the same as
tensors on the model's device; ``outputs`` the click logits ``model(batch)`` (B,). ``model`` may
be wrapped in ``DistributedDataParallel`` in ``penalty``; strategies read its ``.module``
(:func:`unwrap`); the window hooks and ``on_step`` get the unwrapped model. A window with no
rows leaves every strategy exactly as it was. Penalties are means over rows (or
batch-independent), so they add unscaled to a mean task loss; under DDP every rank adds its own
and DDP averages.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "StateDict",
    "Strategy",
    "StrategyConfig",
    "StrategyKind",
    "check_float",
    "check_int",
    "config_error",
    "derive_seed",
    "frozen_copy",
    "to_numpy",
    "to_tensor",
    "unwrap",
    "zero_penalty",
]

StateDict = dict[str, np.ndarray | Tensor]
"""What ``Strategy.state_dict`` returns: numpy arrays (save with ``np.savez``) and tensors
(save with ``torch.save``, load with ``weights_only=True``); see ``partition_state``."""


class StrategyKind(StrEnum):
    """The library's strategy kinds. A kind is a string (this Enum's values are strings), so
    code outside the library (bench/) can register kinds of its own beside these."""

    FINETUNE = "finetune"
    REPLAY = "replay"
    EXEMPLAR_REPLAY = "exemplar_replay"
    EWC = "ewc"
    LWF = "lwf"
    COMBINED = "combined"


@dataclass(frozen=True)
class StrategyConfig:
    """Base of every strategy config: frozen, validated in ``__post_init__``, and declaring as
    class attributes what the registry and :func:`apply_knobs` need to know about it."""

    kind: ClassVar[str]
    """The registry key of the strategy this config builds."""
    knobs: ClassVar[Mapping[str, str]] = {}
    """``StrategyKnobs`` field -> this config's field: the knobs this config takes."""
    chosen_by_name: ClassVar[tuple[str, ...]] = ()
    """Fields the short name fixes (``replay-balanced``'s buffer): a tuned override of this
    config type keeps the parsed config's values of them."""
    backtest_only: ClassVar[bool] = False
    """True when the strategy changes the weights outside the optimizer step (a DDP worker
    without rows in a window would skip that, leaving the workers' weights different), so the
    distributed trainer refuses it."""


class Strategy:
    """Base strategy: every hook does nothing (which is fine-tuning).

    Subclasses set ``kind`` and take ``(config, rank)``; :meth:`from_config` is how the
    registry builds one (a composite overrides it to build its parts).
    """

    kind: ClassVar[str] = StrategyKind.FINETUNE

    @classmethod
    def from_config(
        cls,
        config: StrategyConfig,
        rank: int,
        build: Callable[[StrategyConfig, int], Strategy],
    ) -> Strategy:
        """The strategy for ``config`` on worker ``rank``; ``build`` builds any sub-config."""
        return cls(config, rank)  # type: ignore[call-arg]

    def before_window(self, model: nn.Module, rows: Mapping[str, np.ndarray]) -> None:
        """Called once before a window's first training step."""

    def replay_rows(self, n_new: int) -> dict[str, np.ndarray]:
        """Old rows to mix into a step with ``n_new`` new rows (``{}`` for none)."""
        return {}

    def replay_count(self, n_new: int) -> int | None:
        """How many rows :meth:`replay_rows` will return for ``n_new`` within this window
        (None when that is only known once drawn). Distributed training uses it to learn every
        step's global batch size in one collective per window instead of one per step; it must
        not draw anything. The base (no replay) says 0 unless a subclass replays."""
        return 0 if type(self).replay_rows is Strategy.replay_rows else None

    def penalty(self, batch: Mapping[str, Tensor], outputs: Tensor, model: nn.Module) -> Tensor:
        """A 0-dim tensor >= 0 added to the step's task loss."""
        return zero_penalty(outputs)

    def on_step(self, model: nn.Module) -> None:
        """Called once after every optimizer step with the (unwrapped) model it updated."""

    def after_window(self, model: nn.Module, rows: Mapping[str, np.ndarray]) -> None:
        """Called once after a window's last training step."""

    def state_dict(self) -> StateDict:
        """What a checkpoint must keep to continue identically."""
        return {}

    def load_state_dict(self, state: Mapping[str, np.ndarray | Tensor]) -> None:
        """Restore from :meth:`state_dict` output (arrays may come back as numpy or tensors)."""

    def extra_trained_rows(self) -> int:
        """Rows put through forward and backward outside the training steps so far (EWC's
        Fisher estimate): they count in a backtest's events budget."""
        return 0

    def forward_only_rows(self) -> int:
        """Rows put through a forward pass only, no backward, so far (recorded targets, teacher
        labels): reported beside a backtest's events budget, not in it."""
        return 0


# ------------------------------------------------------------------- tools for strategies


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or the model itself)."""
    return getattr(model, "module", model)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A teacher: a copy of the (unwrapped) model in eval mode that gradients never reach."""
    teacher = copy.deepcopy(unwrap(model))
    teacher.requires_grad_(False)
    teacher.eval()
    return teacher


def zero_penalty(outputs: Tensor) -> Tensor:
    """A 0-dim zero on the device and dtype of ``outputs`` (the penalty of a no-op)."""
    return outputs.new_zeros(())


def derive_seed(seed: int, rank: int) -> int:
    """A seed of its own for every worker ``rank`` from one configured ``seed``.

    >>> derive_seed(0, 0) == derive_seed(0, 0) != derive_seed(0, 1)
    True
    """
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def to_numpy(value: np.ndarray | Tensor) -> np.ndarray:
    """A state value as numpy (tensors detached and moved to the CPU)."""
    return value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)


def to_tensor(value: np.ndarray | Tensor) -> Tensor:
    """A state value as a tensor of its own (a copy)."""
    return (
        value.detach().clone() if isinstance(value, Tensor) else torch.from_numpy(np.array(value))
    )


def config_error(cls: str, msg: str) -> None:
    """Raise ``ValueError("<cls>: <msg>")``: what a config's ``__post_init__`` says is wrong."""
    raise ValueError(f"{cls}: {msg}")


def check_int(cls: str, name: str, value: object, low: int) -> None:
    """Fail unless ``value`` is an int (not a bool) ``>= low``.

    >>> check_int("C", "n", 0, 1)
    Traceback (most recent call last):
    ...
    ValueError: C: n must be >= 1, got 0
    """
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        config_error(cls, f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < low:  # type: ignore[operator]
        config_error(cls, f"{name} must be >= {low}, got {value}")


def check_float(cls: str, name: str, value: float, low: float, high: float = math.inf) -> None:
    """Fail unless ``value`` is a finite number in ``[low, high]``.

    >>> check_float("C", "x", 2, 0.0, 1.0)
    Traceback (most recent call last):
    ...
    ValueError: C: x must be in [0.0, 1.0], got 2
    """
    if not (isinstance(value, int | float) and math.isfinite(value) and low <= value <= high):
        bound = f"in [{low}, {high}]" if math.isfinite(high) else f"a finite number >= {low}"
        config_error(cls, f"{name} must be {bound}, got {value!r}")
