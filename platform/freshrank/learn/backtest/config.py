"""What a backtest replays, through which arms, with which model and training settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from freshrank.learn.backtest.arms import Arm, default_arms
from freshrank.learn.backtest.data import DataSource, DigineticaData, ParquetData, SimulatorData
from freshrank.model.config import RankerConfig

__all__ = ["BacktestConfig"]


@dataclass(frozen=True)
class BacktestConfig:
    """What to replay, through which arms, with which model and training settings.

    >>> BacktestConfig(name="x", batch_size=0)
    Traceback (most recent call last):
    ...
    ValueError: BacktestConfig: batch_size must be >= 1, got 0
    """

    name: str = "simulator"
    data: DataSource = field(default_factory=SimulatorData)
    arms: tuple[Arm, ...] = field(default_factory=default_arms)
    model: RankerConfig = field(default_factory=RankerConfig)
    batch_size: int = 512
    learning_rate: float = 3e-3
    row_sparse: bool = False
    """Train with the row-sparse optimizer (``learn.row_sparse``: SparseAdam for the tables,
    fused Adam for the rest), as ``TrainConfig.row_sparse`` does live."""
    table_learning_rate: float | None = None
    """With ``row_sparse``: the tables' step size (None: ``learning_rate``)."""
    epochs: int = 1
    """Passes over each update's rows (every schedule)."""
    k: int = 20
    """Cut-off of Recall@K and MRR@K."""
    forgetting_requests: int | None = 300
    """Requests per held-out slice for the accuracy matrix (None: skip forgetting)."""
    seed: int = 0
    threads: int | None = 1
    """torch intra-op threads while the backtest runs (None: leave torch's setting). One thread
    is fastest for this small model on a shared machine: measured here, two threads on two busy
    cores were 10x slower than one."""

    def __post_init__(self) -> None:
        def fail(msg: str) -> None:
            raise ValueError(f"BacktestConfig: {msg}")

        if not self.name or "/" in self.name:
            fail(f"name must be a non-empty file name, got {self.name!r}")
        if not isinstance(self.data, SimulatorData | DigineticaData | ParquetData):
            fail(f"data must be SimulatorData, DigineticaData or ParquetData, got {self.data!r}")
        object.__setattr__(self, "arms", tuple(self.arms))
        if not self.arms:
            fail("arms must hold at least one Arm (see default_arms())")
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            fail(f"arm names must be unique, got {names}")
        if self.batch_size < 1:
            fail(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.learning_rate > 0:
            fail(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.table_learning_rate is not None and not (
            self.row_sparse and self.table_learning_rate > 0
        ):
            fail(f"table_learning_rate needs row_sparse and > 0, got {self.table_learning_rate}")
        if self.epochs < 1:
            fail(f"epochs must be >= 1, got {self.epochs}")
        if self.k < 1:
            fail(f"k must be >= 1, got {self.k}")
        if self.forgetting_requests is not None and self.forgetting_requests < 1:
            fail(f"forgetting_requests must be >= 1 or None, got {self.forgetting_requests}")
        if self.threads is not None and self.threads < 1:
            fail(f"threads must be >= 1 or None (leave torch's setting), got {self.threads}")
