"""freshrank keeps an e-commerce search ranking model fresh on Ray.

The public surface lives in the subpackages: ``freshrank.events``, ``freshrank.features``,
``freshrank.model``, ``freshrank.learn``, ``freshrank.registry``, ``freshrank.serving``,
``freshrank.drift``, ``freshrank.evaluation``, ``freshrank.core`` (storage and telemetry),
``freshrank.ops``. The most used names are re-exported here, imported on first use: a
process that only needs ``freshrank.events`` (a Ray Data read task, the producer) does not pay
for importing torch and Ray Train.

>>> import freshrank
>>> freshrank.Registry.__module__
'freshrank.registry.store'
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "EVENT_SCHEMA": "freshrank.events",
    "FeatureConfig": "freshrank.features",
    "encode": "freshrank.features",
    "TrainConfig": "freshrank.learn",
    "run_training": "freshrank.learn",
    "Ranker": "freshrank.model",
    "RankerConfig": "freshrank.model",
    "Registry": "freshrank.registry",
}

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

if TYPE_CHECKING:
    from freshrank.events import EVENT_SCHEMA
    from freshrank.features import FeatureConfig, encode
    from freshrank.learn import TrainConfig, run_training
    from freshrank.model import Ranker, RankerConfig
    from freshrank.registry import Registry


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'freshrank' has no attribute {name!r}")
