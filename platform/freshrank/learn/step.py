"""The training step and the per-window loop, shared by the Ray trainer and the backtest.

One step, readable in one screen::

    forward -> task loss (BCE) + strategy penalties -> backward -> optimizer step
    -> strategy.on_step -> report

and one window::

    strategy.before_window -> for each batch of new rows: mix in strategy.replay_rows,
    train_step -> strategy.after_window

Distributed training passes ``steps`` (the same on every rank, so DDP's collectives line up),
``reduce_sum`` (an all-reduce of a float: a step's global batch size), optionally
``reduce_sizes`` (the same over an array: every step's size in one collective per window, when
the strategy can say how many rows it replays) and ``world``; a single process passes none.
Evaluation (:func:`score_rows`) comes before training in both, which makes it prequential.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from freshrank.features.encode import concat_inputs, num_rows, slice_inputs
from freshrank.learn.row_sparse import RowSparseOptimizer
from freshrank.learn.strategies import Strategy
from freshrank.model.device import to_tensors
from freshrank.model.scoring import DEFAULT_CHUNK_ROWS, score_logits


@dataclass(frozen=True)
class StepResult:
    """What one step did: rows in the batch, their summed BCE and the strategy penalty."""

    rows: int
    task_loss_sum: float
    penalty: float


@dataclass(frozen=True)
class WindowResult:
    """What training on one window did (this process's share)."""

    steps: int
    new_rows: int
    replay_rows: int
    task_loss_sum: float
    penalty_sum: float
    compute_s: float = 0.0
    """Seconds in forward, backward and the optimizer step (DDP's all-reduce included)."""

    @property
    def rows(self) -> int:
        """Rows that went through forward and backward (new + replayed)."""
        return self.new_rows + self.replay_rows

    @property
    def mean_loss(self) -> float:
        """Mean BCE per trained row (NaN when nothing was trained)."""
        return self.task_loss_sum / self.rows if self.rows else float("nan")


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | RowSparseOptimizer,
    batch: Mapping[str, Tensor],
    strategy: Strategy,
    loss_scale: float | None = None,
) -> StepResult:
    """One optimizer step on ``batch`` (tensors on the model's device, ``label`` included).

    The loss is ``sum BCE * loss_scale + strategy.penalty(batch, outputs, model)``. The default
    ``loss_scale`` is ``1 / rows`` (the mean); under DDP pass ``world / rows_on_all_ranks``, so
    that DDP's gradient averaging yields the mean over every rank's rows. After the optimizer
    step the strategy's ``on_step`` sees the (unwrapped) model.
    """
    outputs = model(batch)
    labels = batch["label"]
    loss_sum = F.binary_cross_entropy_with_logits(outputs, labels, reduction="sum")
    n = int(labels.shape[0])
    scale = loss_scale if loss_scale is not None else 1.0 / max(n, 1)
    penalty = strategy.penalty(batch, outputs, model)
    loss = loss_sum * scale + penalty
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    strategy.on_step(getattr(model, "module", model))
    return StepResult(n, float(loss_sum.detach()), float(penalty.detach()))


def train_window(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | RowSparseOptimizer,
    rows: Mapping[str, np.ndarray],
    strategy: Strategy,
    *,
    batch_size: int,
    rng: np.random.Generator,
    device: torch.device,
    steps: int | None = None,
    reduce_sum: Callable[[float], float] | None = None,
    reduce_sizes: Callable[[np.ndarray], np.ndarray] | None = None,
    world: int = 1,
    epochs: int = 1,
) -> WindowResult:
    """Train on one window of encoded rows with a strategy (hooks called in order).

    ``steps`` defaults to ``ceil(rows / batch_size) * epochs``; under DDP give the maximum over
    ranks so every rank steps equally (a rank out of rows steps on empty batches). Rows are
    shuffled with ``rng``; ``rows`` itself is not modified.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = num_rows(rows)
    per_epoch = math.ceil(n / batch_size)
    total = per_epoch * epochs if steps is None else int(steps)
    core = getattr(model, "module", model)
    strategy.before_window(core, rows)
    model.train()
    new_rows = replay_rows = 0
    loss_sum = penalty_sum = compute_s = 0.0
    order = rng.permutation(n)
    global_sizes = _global_batch_sizes(n, batch_size, per_epoch, total, strategy, reduce_sizes)
    for step in range(total):
        k = step % per_epoch if per_epoch else 0
        if per_epoch and k == 0 and step:
            order = rng.permutation(n)
        new = slice_inputs(rows, order[k * batch_size : (k + 1) * batch_size])
        n_new = num_rows(new)
        old = strategy.replay_rows(n_new) if n_new else {}
        batch = concat_inputs([new, old]) if old else new
        n_batch = num_rows(batch)
        if global_sizes is not None:
            n_global = float(global_sizes[step])
        elif reduce_sum is not None:
            n_global = reduce_sum(float(n_batch))
        else:
            n_global = float(n_batch)
        tensors = to_tensors(batch, device)
        c0 = time.perf_counter()
        result = train_step(model, optimizer, tensors, strategy, world / max(n_global, 1.0))
        compute_s += time.perf_counter() - c0
        new_rows += n_new
        replay_rows += n_batch - n_new
        loss_sum += result.task_loss_sum
        penalty_sum += result.penalty
    strategy.after_window(core, rows)
    return WindowResult(total, new_rows, replay_rows, loss_sum, penalty_sum, compute_s)


def _global_batch_sizes(
    n: int,
    batch_size: int,
    per_epoch: int,
    total: int,
    strategy: Strategy,
    reduce_sizes: Callable[[np.ndarray], np.ndarray] | None,
) -> np.ndarray | None:
    """Every step's batch size summed over the ranks, in one collective for the window, when
    the strategy can say how many rows it will replay (``Strategy.replay_count``); None when it
    cannot (the sizes are then summed step by step) or outside distributed training."""
    if reduce_sizes is None:
        return None
    local = np.zeros(total, dtype=np.float64)
    for step in range(total):
        k = step % per_epoch if per_epoch else 0
        n_new = max(0, min(batch_size, n - k * batch_size)) if per_epoch else 0
        replayed = strategy.replay_count(n_new) if n_new else 0
        if replayed is None:
            local = None
            break
        local[step] = n_new + replayed
    # Every rank must make the same collectives: whether the sizes are known depends on the
    # strategy's kind alone, which every rank shares.
    return reduce_sizes(local) if local is not None else None


def score_rows(
    model: nn.Module,
    rows: Mapping[str, np.ndarray],
    device: torch.device,
    batch_size: int = DEFAULT_CHUNK_ROWS,
    use_position: bool = True,
) -> np.ndarray:
    """Logits for every row, in eval mode without gradients (float64 numpy, shape (B,)).

    ``use_position=True`` scores clicks as logged (what the training loss sees);
    ``False`` scores relevance alone (what serving ranks by). The loop is
    :func:`freshrank.model.scoring.score_logits`, ``batch_size`` rows at a time.
    """
    return score_logits(model, rows, device, chunk_rows=batch_size, use_position=use_position)
