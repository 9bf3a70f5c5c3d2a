"""Reading a window of event shards with Ray Data: ``read_parquet -> map_batches(encode)``.

Kept apart from the trainer so that the Ray Data tasks running :func:`encode_batch` import
only pyarrow, numpy and the encoder (not torch or Ray Train): a data worker process that
starts mid-stream is ready in under a second instead of several.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from freshrank.events.schema import drop_invalid_rows, empty_events
from freshrank.features.encode import FeatureConfig, concat_inputs, encode

REQUEST_KEY = "_request_id"
"""Column :func:`encode_batch` adds next to the encoded inputs; popped by :func:`read_shards`."""


def read_shards(
    paths: list[str], features: FeatureConfig, filesystem: Any = None
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Read and encode shards through Ray Data, as one read task (one block).

    One task per call: a window's shards are small and few, and every extra task may start a
    new worker process, which costs more than reading the files one after the other.

    Returns the encoded rows and, aligned with them, each row's ``request_id`` (for the
    per-request metrics; the model never sees it). Rows missing a required field are dropped,
    as everywhere else.
    """
    if not paths:
        return encode(empty_events(), features), np.zeros(0, dtype=str)
    import ray.data

    ds = ray.data.read_parquet(paths, filesystem=filesystem, override_num_blocks=1).map_batches(
        encode_batch, batch_format="pyarrow", fn_kwargs={"features": features}
    )
    parts = [b for b in ds.iter_batches(batch_size=None, batch_format="numpy") if len(b["label"])]
    if not parts:
        return encode(empty_events(), features), np.zeros(0, dtype=str)
    requests = np.concatenate([np.asarray(p.pop(REQUEST_KEY), dtype=str) for p in parts])
    return concat_inputs(parts), requests


def encode_batch(batch: Any, features: FeatureConfig) -> dict[str, np.ndarray]:
    """One Ray Data batch (a pyarrow table of events) -> encoded inputs + request ids."""
    table, _dropped = drop_invalid_rows(batch)
    out = encode(table, features)
    out[REQUEST_KEY] = table.column("request_id").to_numpy(zero_copy_only=False).astype(str)
    return out
