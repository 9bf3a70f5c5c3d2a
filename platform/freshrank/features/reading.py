"""Reading a window of event shards with Ray Data: one task reads each shard's selected rows
(``events.selection.RowSelection``, decided by the shard feed) and encodes them.

Kept apart from the trainer so that the Ray Data tasks running :func:`read_pieces` import
only pyarrow, numpy and the encoder (not torch or Ray Train): a data worker process that
starts mid-stream is ready in under a second instead of several.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from freshrank.events.schema import conform, drop_invalid_rows, empty_events
from freshrank.events.selection import RowSelection
from freshrank.features.encode import FeatureConfig, concat_inputs, encode

REQUEST_KEY = "_request_id"
"""Column :func:`encode_batch` adds next to the encoded inputs; popped by :func:`read_shards`."""


def read_shards(
    paths: list[str],
    features: FeatureConfig,
    filesystem: Any = None,
    selections: Sequence[RowSelection] | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Read and encode shards through Ray Data, as one task (one block).

    One task per call: a window's shards are small and few, and every extra task may start a
    new worker process, which costs more than reading the files one after the other.

    ``selections`` (one per path; default: every row) say which rows of each file to take, as
    the shard feed planned them. Returns the encoded rows and, aligned with them, each row's
    ``request_id`` (for the per-request metrics; the model never sees it). Rows missing a
    required field are dropped, as everywhere else.
    """
    sels = _selections(paths, selections)
    if not paths:
        return _empty(features)
    import ray.data

    ds = ray.data.from_items(
        [{"piece": i} for i in range(len(paths))], override_num_blocks=1
    ).map_batches(
        _read_task,
        batch_size=None,
        batch_format="numpy",
        fn_kwargs={
            "paths": list(paths),
            "selections": sels,
            "features": features,
            "filesystem": filesystem,
        },
    )
    parts = [b for b in ds.iter_batches(batch_size=None, batch_format="numpy") if len(b["label"])]
    if not parts:
        return _empty(features)
    requests = np.concatenate([np.asarray(p.pop(REQUEST_KEY), dtype=str) for p in parts])
    return concat_inputs(parts), requests


def read_pieces(
    paths: Sequence[str],
    selections: Sequence[RowSelection],
    features: FeatureConfig,
    filesystem: Any = None,
) -> dict[str, np.ndarray]:
    """Read each file's selected rows with pyarrow and encode them (what the Ray Data task
    runs; callable without Ray). The result has :data:`REQUEST_KEY` next to the inputs."""
    parts = []
    for path, selection in zip(paths, selections, strict=True):
        table = conform(pq.read_table(path, filesystem=filesystem))
        parts.append(encode_batch(selection.apply(table), features))
    if not parts:
        return encode_batch(empty_events(), features)
    return concat_inputs(parts)


def encode_batch(batch: Any, features: FeatureConfig) -> dict[str, np.ndarray]:
    """A pyarrow table of events -> encoded inputs + request ids (rows missing a required
    field dropped)."""
    table, _dropped = drop_invalid_rows(batch)
    out = encode(table, features)
    out[REQUEST_KEY] = table.column("request_id").to_numpy(zero_copy_only=False).astype(str)
    return out


def _read_task(
    batch: dict[str, np.ndarray],
    paths: list[str],
    selections: list[RowSelection],
    features: FeatureConfig,
    filesystem: Any,
) -> dict[str, np.ndarray]:
    picked = [int(i) for i in batch["piece"]]
    return read_pieces(
        [paths[i] for i in picked], [selections[i] for i in picked], features, filesystem
    )


def _selections(
    paths: Sequence[str], selections: Sequence[RowSelection] | None
) -> list[RowSelection]:
    if selections is None:
        return [RowSelection()] * len(paths)
    if len(selections) != len(paths):
        raise ValueError(f"{len(selections)} row selections for {len(paths)} shard paths")
    return list(selections)


def _empty(features: FeatureConfig) -> tuple[dict[str, np.ndarray], np.ndarray]:
    return encode(empty_events(), features), np.zeros(0, dtype=str)
