"""Scoring encoded rows with a model: chunked, in eval mode, without gradients.

The one loop every caller shares (the trainer's prequential evaluation, the promotion gate,
strategies that record a model's own predictions): rows go through the model ``chunk_rows`` at
a time, so a large window never builds one huge batch, and come back as float64 numpy logits.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from freshrank.model.device import to_tensors

__all__ = ["DEFAULT_CHUNK_ROWS", "score_logits"]

DEFAULT_CHUNK_ROWS = 65_536
"""Rows per forward pass when scoring (bounds the memory one pass takes)."""


def score_logits(
    model: nn.Module,
    rows: Mapping[str, np.ndarray],
    device: torch.device | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    use_position: bool = True,
) -> np.ndarray:
    """Logits of ``model`` for every row of ``rows`` (encoded inputs), float64 numpy, shape (B,).

    The model (or the module a DDP wrapper holds) runs in eval mode under ``torch.no_grad()``
    and is put back into the mode it was in. ``device`` defaults to the model's own.
    ``use_position=True`` scores clicks as logged (what the training loss sees); ``False``
    scores relevance alone (what serving ranks by).
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    n = int(len(rows["label"])) if rows else 0
    if n == 0:
        return np.zeros(0)
    core = getattr(model, "module", model)
    if device is None:
        first = next(core.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    was_training = core.training
    core.eval()
    out = []
    try:
        with torch.no_grad():
            for start in range(0, n, chunk_rows):
                part = {k: v[start : start + chunk_rows] for k, v in rows.items()}
                logits = core(to_tensors(part, device), use_position=use_position)
                out.append(logits.detach().cpu().numpy())
    finally:
        core.train(was_training)
    return np.concatenate(out).astype(np.float64)
