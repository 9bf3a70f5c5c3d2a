"""Learning: the shard feed, replay buffers, evaluation and the incremental Ray trainer."""

from freshrank.learn.config import TrainConfig
from freshrank.learn.evaluation import log_loss, roc_auc
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
    "log_loss",
    "roc_auc",
    "run_training",
]
