"""Features: stable hashing and the one encoder shared by training and serving."""

from freshrank.features.encode import (
    ID_FEATURES,
    INPUT_KEYS,
    FeatureConfig,
    candidates_table,
    concat_inputs,
    encode,
    num_rows,
    slice_inputs,
)
from freshrank.features.hashing import bucket_of, hash_buckets, stable_hash64

__all__ = [
    "ID_FEATURES",
    "INPUT_KEYS",
    "FeatureConfig",
    "bucket_of",
    "candidates_table",
    "concat_inputs",
    "encode",
    "hash_buckets",
    "num_rows",
    "slice_inputs",
    "stable_hash64",
]
