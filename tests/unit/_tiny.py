"""The tiny model unit tests train in milliseconds: small tables, 4-wide embeddings."""

import numpy as np
import pytest
import torch

from freshrank.events.simulator import Simulator, SimulatorConfig
from freshrank.features.encode import FeatureConfig, encode
from freshrank.model.config import RankerConfig
from freshrank.model.ranker import Ranker
from freshrank.registry import save_checkpoint

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


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _rows(seed: int = 0, requests: int = 40) -> dict[str, np.ndarray]:
    sim = Simulator(SimulatorConfig(seed=seed, n_users=30, n_items=30, n_categories=3, list_size=5))
    return encode(sim.generate(requests), FEATURES)


def _model(seed: int = 0) -> Ranker:
    torch.manual_seed(seed)
    return Ranker(MODEL)


def _val(t: torch.Tensor) -> float:
    return float(t.detach())


def _publish(reg, seed: int, embedding_dim: int = 2) -> int:
    """Publish a small real version through `save_checkpoint` (weights of a default-feature
    ranker, one row table, a minimal manifest); returns its number."""
    config = RankerConfig(embedding_dim=embedding_dim)
    torch.manual_seed(seed)
    return save_checkpoint(
        reg,
        config,
        Ranker(config).state_dict(),
        None,
        {"rank0/rows/item": np.arange(3)},
        {"cursor": seed, "watermark": 1.0, "metrics": {"loss": 0.5}, "events_trained": 1},
    ).version
