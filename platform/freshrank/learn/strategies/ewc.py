"""Elastic weight consolidation with a diagonal (empirical) Fisher, separate or online."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from freshrank.core.serialization import restore_rng_state, rng_state_array
from freshrank.features.encode import num_rows, slice_inputs
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
    to_tensor,
    unwrap,
    zero_penalty,
)
from freshrank.model.device import to_tensors

__all__ = ["EWC", "EWCConfig", "EWCMode"]


class EWCMode(Enum):
    """How EWC accumulates importance over windows.

    ``SEPARATE``: one quadratic penalty per past window, anchored at that window's weights
    (kept in closed form, so memory does not grow with the number of windows).
    ``ONLINE``: one running Fisher ``decay * F + F_new`` anchored at the latest weights
    (Schwarz et al. 2018, "Progress & Compress").
    """

    SEPARATE = "separate"
    ONLINE = "online"


@dataclass(frozen=True)
class EWCConfig(StrategyConfig):
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

    kind: ClassVar[str] = StrategyKind.EWC
    knobs: ClassVar[Mapping[str, str]] = {
        "ewc_lambda": "lam",
        "ewc_decay": "decay",
        "ewc_fisher_rows": "fisher_rows",
        "ewc_fisher_batch_size": "fisher_batch_size",
        "ewc_seed": "seed",
    }
    chosen_by_name: ClassVar[tuple[str, ...]] = ("mode",)
    lam: float = 1.0
    mode: EWCMode = EWCMode.ONLINE
    decay: float = 0.9
    """Online mode: weight of the old Fisher when a window's Fisher is added (gamma)."""
    fisher_rows: int = 2048
    fisher_batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_float(name, "lam", self.lam, 0.0)
        if not isinstance(self.mode, EWCMode):
            config_error(name, f"mode must be an EWCMode such as EWCMode.ONLINE, got {self.mode!r}")
        check_float(name, "decay", self.decay, 0.0, 1.0)
        check_int(name, "fisher_rows", self.fisher_rows, 1)
        check_int(name, "fisher_batch_size", self.fisher_batch_size, 1)
        check_int(name, "seed", self.seed, 0)


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
        self._rng = np.random.default_rng(derive_seed(config.seed, rank))
        self._importance: dict[str, Tensor] = {}
        self._anchor: dict[str, Tensor] = {}
        self._residual = 0.0  # separate mode: the constant of the closed form
        self._windows = 0
        self.fisher_rows_processed = 0
        """Rows put through forward/backward to estimate Fisher (a statistic, not state)."""

    def extra_trained_rows(self) -> int:
        return self.fisher_rows_processed

    def penalty(self, batch: Mapping[str, Tensor], outputs: Tensor, model: nn.Module) -> Tensor:
        if not self._importance or self.config.lam == 0:
            return zero_penalty(outputs)
        total = zero_penalty(outputs)
        for name, param in unwrap(model).named_parameters():
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
        core = unwrap(model)
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
                    if g.is_sparse:  # a table under row-sparse training: rows summed first
                        g = g.coalesce().to_dense()
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
            k[len("importance/") :]: to_tensor(v)
            for k, v in state.items()
            if k.startswith("importance/")
        }
        self._anchor = {
            k[len("anchor/") :]: to_tensor(v) for k, v in state.items() if k.startswith("anchor/")
        }
        if set(self._importance) != set(self._anchor):
            raise ValueError("EWC state: importance and anchor name different parameters")
        self._residual = float(to_numpy(state.get("meta/residual", np.array(0.0))))
        self._windows = int(to_numpy(state.get("meta/windows", np.array(0))))
        if "meta/rng" in state:
            restore_rng_state(self._rng, state["meta/rng"])
