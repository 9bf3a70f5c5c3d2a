"""Bytes for state that other processes read: numpy arrays as ``.npz`` and a numpy random
generator's state as a byte array, all loadable without pickle.

>>> arrays = {"a": np.arange(3), "b": np.ones((2, 2), dtype=np.float32)}
>>> back = arrays_from_npz(npz_bytes(arrays))
>>> sorted(back), back["a"].tolist()
(['a', 'b'], [0, 1, 2])
>>> rng = np.random.default_rng(7)
>>> saved = rng_state_array(rng)
>>> first = rng.random()
>>> restore_rng_state(rng, saved)
>>> rng.random() == first
True
"""

from __future__ import annotations

import ast
import io
from collections.abc import Mapping
from typing import Any

import numpy as np


def npz_bytes(arrays: Mapping[str, Any], compressed: bool = False) -> bytes:
    """Numpy arrays as one ``.npz`` (``compressed`` for sparse sketches and tables); object
    arrays are refused when loaded, so keep to numeric, bool and fixed-width text dtypes."""
    buf = io.BytesIO()
    save = np.savez_compressed if compressed else np.savez
    save(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def arrays_from_npz(data: bytes) -> dict[str, np.ndarray]:
    """Inverse of `npz_bytes` (``allow_pickle=False``: object arrays raise ``ValueError``)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def rng_state_array(rng: np.random.Generator) -> np.ndarray:
    """The generator's bit-generator state as a ``uint8`` array (its ``repr``, UTF-8), so that
    it travels in an ``.npz`` beside the arrays it belongs to."""
    return np.frombuffer(repr(rng.bit_generator.state).encode("utf-8"), dtype=np.uint8).copy()


def restore_rng_state(rng: np.random.Generator, saved: Any) -> None:  # noqa: ANN401 - array-like
    """Put `rng_state_array` output back into ``rng``; parsed with ``ast.literal_eval``, never
    ``eval``. Raises ``ValueError`` for anything but a state dict."""
    raw = saved.detach().cpu().numpy() if hasattr(saved, "detach") else np.asarray(saved)
    value = ast.literal_eval(raw.astype(np.uint8).tobytes().decode("utf-8"))
    if not isinstance(value, dict):
        raise ValueError("not a random generator state")
    rng.bit_generator.state = value


__all__ = ["arrays_from_npz", "npz_bytes", "restore_rng_state", "rng_state_array"]
