"""Learning: the shard feed, replay buffers, strategies and the incremental Ray trainer."""

from freshrank.learn.config import TrainConfig
from freshrank.learn.feed import ShardFeed, ShardPlan, Window
from freshrank.learn.replay import ReservoirBuffer
from freshrank.learn.train import TrainSummary, run_training

__all__ = [
    "ReservoirBuffer",
    "ShardFeed",
    "ShardPlan",
    "TrainConfig",
    "TrainSummary",
    "Window",
    "run_training",
]
