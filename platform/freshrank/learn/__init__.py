"""Learning: the shard feed, replay buffers, strategies, the optimizer and the incremental Ray
trainer; backtests in ``freshrank.learn.backtest``."""

from freshrank.learn.config import TrainConfig
from freshrank.learn.dedup import SeenEvents
from freshrank.learn.feed import ShardFeed, ShardPlan, Window
from freshrank.learn.optim import make_optimizer
from freshrank.learn.replay import ReservoirBuffer
from freshrank.learn.row_sparse import RowSparseOptimizer
from freshrank.learn.train import TrainSummary, run_training

__all__ = [
    "ReservoirBuffer",
    "RowSparseOptimizer",
    "SeenEvents",
    "ShardFeed",
    "ShardPlan",
    "TrainConfig",
    "TrainSummary",
    "Window",
    "make_optimizer",
    "run_training",
]
