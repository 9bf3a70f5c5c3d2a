"""Stable hashing of string ids into embedding buckets.

Python's built-in ``hash()`` is salted per process, so two workers (or a trainer and a serving
replica) would disagree; these functions use BLAKE2b and give the same bucket everywhere.
Bucket 0 is reserved for "missing" (null or empty), so a valid id lands in ``[1, buckets)``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def stable_hash64(value: str, salt: str = "") -> int:
    """A 64-bit hash of ``value`` that is the same in every process and on every machine.

    >>> stable_hash64("item-42", "item") == stable_hash64("item-42", "item")
    True
    >>> stable_hash64("item-42", "item") == stable_hash64("item-42", "user")
    False
    >>> stable_hash64("abc")
    6455300059550759896
    """
    digest = hashlib.blake2b(
        value.encode("utf-8"), digest_size=8, person=salt.encode("utf-8")[:16]
    ).digest()
    return int.from_bytes(digest, "little")


def bucket_of(value: str | None, salt: str, buckets: int) -> int:
    """The embedding row of one id: 0 for missing, else in ``[1, buckets)``.

    >>> bucket_of(None, "user", 1000)
    0
    >>> 1 <= bucket_of("u1", "user", 1000) < 1000
    True
    """
    if value is None or value == "":
        return 0
    return 1 + stable_hash64(value, salt) % (buckets - 1)


def hash_buckets(
    values: pa.Array | pa.ChunkedArray | Sequence[str | None], salt: str, buckets: int
) -> np.ndarray:
    """Vectorised :func:`bucket_of` over a string column; returns int64 of the same length.

    Each distinct value is hashed once (dictionary encoding), so a column with few distinct ids
    costs little more than a ``take``.

    >>> hash_buckets(["a", None, "a", ""], "x", 100).tolist() == [
    ...     bucket_of("a", "x", 100), 0, bucket_of("a", "x", 100), 0]
    True
    """
    if buckets < 2:
        raise ValueError(f"buckets must be >= 2 (bucket 0 means missing), got {buckets}")
    arr = (
        values if isinstance(values, pa.Array | pa.ChunkedArray) else pa.array(values, pa.string())
    )
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    if len(arr) == 0:
        return np.zeros(0, dtype=np.int64)
    if not pa.types.is_string(arr.type) and not pa.types.is_large_string(arr.type):
        arr = pc.cast(arr, pa.string())
    encoded = pc.dictionary_encode(arr)
    dictionary = encoded.dictionary.to_pylist()
    table = np.fromiter(
        (bucket_of(v, salt, buckets) for v in dictionary), dtype=np.int64, count=len(dictionary)
    )
    indices = encoded.indices
    if indices.null_count:
        idx = np.asarray(pc.fill_null(indices, 0).to_numpy(), dtype=np.int64)
        out = table[idx] if len(table) else np.zeros(len(idx), dtype=np.int64)
        out[np.asarray(indices.is_null().to_numpy(zero_copy_only=False), dtype=bool)] = 0
        return out
    return table[np.asarray(indices.to_numpy(), dtype=np.int64)]
