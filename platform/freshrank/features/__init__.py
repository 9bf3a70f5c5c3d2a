"""Features: stable hashing, collisionless id tables, and the one encoder shared by training
and serving."""

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
from freshrank.features.hashing import (
    MISSING_KEY,
    bucket_of,
    hash_buckets,
    hash_keys,
    key_of,
    stable_hash64,
)
from freshrank.features.idtable import (
    IdTable,
    IdTableConfig,
    IdTableError,
    TableStats,
    TableUpdate,
)

__all__ = [
    "ID_FEATURES",
    "INPUT_KEYS",
    "MISSING_KEY",
    "FeatureConfig",
    "IdTable",
    "IdTableConfig",
    "IdTableError",
    "TableStats",
    "TableUpdate",
    "bucket_of",
    "candidates_table",
    "concat_inputs",
    "encode",
    "hash_buckets",
    "hash_keys",
    "key_of",
    "num_rows",
    "slice_inputs",
    "stable_hash64",
]
