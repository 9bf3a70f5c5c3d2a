"""Device placement, in one place: the CPU path is tested here; ``use_gpu`` picks CUDA/NCCL."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch


def pick_device(use_gpu: bool) -> torch.device:
    """The torch device for a worker: its CUDA device under Ray Train when ``use_gpu``.

    >>> pick_device(False)
    device(type='cpu')
    """
    if not use_gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("use_gpu=True but CUDA is not available on this worker")
    try:
        import ray.train.torch

        return ray.train.torch.get_device()
    except Exception:  # outside Ray Train
        return torch.device("cuda", torch.cuda.current_device())


def backend_for(use_gpu: bool) -> str:
    """The torch.distributed backend: NCCL across GPUs, gloo on CPU.

    >>> backend_for(False)
    'gloo'
    """
    return "nccl" if use_gpu else "gloo"


def to_tensors(inputs: Mapping[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    """Numpy encoded inputs to tensors on ``device`` (no copy on CPU where possible)."""
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in inputs.items()}
