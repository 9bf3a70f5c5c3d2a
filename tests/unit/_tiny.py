"""The tiny model unit tests train in milliseconds: small tables, 4-wide embeddings."""

from freshrank.features.encode import FeatureConfig
from freshrank.model.config import RankerConfig

FEATURES = FeatureConfig(
    user_buckets=64,
    item_buckets=128,
    category_buckets=16,
    brand_buckets=16,
    device_buckets=4,
    query_buckets=64,
    max_position=8,
)
MODEL = RankerConfig(features=FEATURES, embedding_dim=4, dense_hidden=(4,), over_hidden=(8,))
