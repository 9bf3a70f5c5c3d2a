"""freshrank keeps an e-commerce search ranking model fresh on Ray.

The public surface lives in the subpackages: ``freshrank.events``, ``freshrank.features``,
``freshrank.model``, ``freshrank.learn``, ``freshrank.registry``, ``freshrank.serving``,
``freshrank.monitor``. The most used names are re-exported here.
"""

from freshrank.events import EVENT_SCHEMA
from freshrank.features import FeatureConfig, encode
from freshrank.learn import TrainConfig, run_training
from freshrank.model import Ranker, RankerConfig
from freshrank.registry import Registry

__version__ = "0.1.0"

__all__ = [
    "EVENT_SCHEMA",
    "FeatureConfig",
    "Ranker",
    "RankerConfig",
    "Registry",
    "TrainConfig",
    "encode",
    "run_training",
]
