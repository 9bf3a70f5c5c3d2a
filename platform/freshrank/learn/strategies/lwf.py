"""Learning without forgetting for a click model: distil the model as it was before the window."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from freshrank.features.encode import num_rows
from freshrank.learn.strategies.base import (
    StateDict,
    Strategy,
    StrategyConfig,
    StrategyKind,
    check_float,
    config_error,
    frozen_copy,
    to_numpy,
    zero_penalty,
)

__all__ = ["LwF", "LwFConfig", "bernoulli_kl"]


@dataclass(frozen=True)
class LwFConfig(StrategyConfig):
    """Learning without forgetting for a click model: distil the previous model's click
    probabilities. The penalty is ``alpha * T**2 * mean KL(Bern(σ(t/T)) || Bern(σ(s/T)))`` over
    the batch, with ``t`` the teacher's logits (the model as it was before the window) and ``s``
    the student's.

    >>> LwFConfig(temperature=0)
    Traceback (most recent call last):
    ...
    ValueError: LwFConfig: temperature must be > 0 (1.0 distils probabilities as they are), got 0
    """

    kind: ClassVar[str] = StrategyKind.LWF
    knobs: ClassVar[Mapping[str, str]] = {
        "lwf_alpha": "alpha",
        "lwf_temperature": "temperature",
    }
    alpha: float = 1.0
    temperature: float = 2.0

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_float(name, "alpha", self.alpha, 0.0)
        if not (
            isinstance(self.temperature, int | float)
            and math.isfinite(self.temperature)
            and self.temperature > 0
        ):
            config_error(
                name,
                f"temperature must be > 0 (1.0 distils probabilities as they are), "
                f"got {self.temperature!r}",
            )


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


class LwF(Strategy):
    """Binary LwF: keep the click probabilities of the model as it was when the window began.

    The teacher is a frozen copy taken in :meth:`before_window` once the model has learned at
    least one window (distilling a randomly initialised model would only slow learning). The
    teacher is the checkpointed weights of the previous window, so the state holds only whether
    a window has been learned; a restarted trainer takes the same teacher from its restored model.
    """

    kind = StrategyKind.LWF

    def __init__(self, config: LwFConfig, rank: int = 0) -> None:
        self.config = config
        self._teacher: nn.Module | None = None
        self._windows = 0

    def before_window(self, model: nn.Module, rows: Mapping[str, np.ndarray]) -> None:
        if self._windows == 0 or num_rows(rows) == 0:
            return
        self._teacher = frozen_copy(model)

    def penalty(self, batch: Mapping[str, Tensor], outputs: Tensor, model: nn.Module) -> Tensor:
        if self._teacher is None or outputs.numel() == 0 or self.config.alpha == 0:
            return zero_penalty(outputs)
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
        self._windows = int(to_numpy(state.get("meta/windows", np.array(0))))
        self._teacher = None
