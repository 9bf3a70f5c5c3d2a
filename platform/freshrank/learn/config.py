"""Typed configuration of the incremental trainer."""

from __future__ import annotations

from dataclasses import dataclass, field

from freshrank.model.config import RankerConfig


@dataclass(frozen=True)
class TrainConfig:
    """How the long-lived trainer reads windows, updates the model and checkpoints.

    >>> TrainConfig(landing="l", registry="r", num_workers=0)
    Traceback (most recent call last):
    ...
    ValueError: num_workers must be >= 1, got 0
    """

    landing: str
    """Landing zone directory with the event shards."""
    registry: str
    """Registry directory where versions and the champion pointer live."""
    num_workers: int = 2
    use_gpu: bool = False
    batch_size: int = 512
    """New rows per worker per step; replay rows come on top (``replay_ratio`` of them)."""
    learning_rate: float = 3e-3
    replay_capacity: int = 50_000
    """Rows each worker keeps in its reservoir replay buffer (0 disables replay)."""
    replay_ratio: float = 0.5
    """Replay rows mixed into each step, as a fraction of its new rows."""
    max_shards_per_window: int = 16
    """Most shards in one window: a backlog is caught up in bigger windows (fewer fixed costs)."""
    poll_interval_s: float = 0.2
    gap_timeout_s: float = 10.0
    idle_timeout_s: float | None = None
    """Stop when no shard arrived for this long (None: wait for ever or until the producer ends)."""
    stop_when_producer_done: bool = True
    """Stop once the producer marked the landing zone done and every shard is trained."""
    max_windows: int | None = None
    max_failures: int = 2
    """Worker failures Ray Train recovers from (each restart resumes from the last version)."""
    seed: int = 0
    storage_path: str | None = None
    """Ray Train run storage (absolute path or URI); default ``<registry>/_ray_train``."""
    model: RankerConfig = field(default_factory=RankerConfig)

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {self.num_workers}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.replay_capacity < 0:
            raise ValueError(f"replay_capacity must be >= 0, got {self.replay_capacity}")
        if self.replay_ratio < 0:
            raise ValueError(f"replay_ratio must be >= 0, got {self.replay_ratio}")
        if self.max_shards_per_window < 1:
            raise ValueError(
                f"max_shards_per_window must be >= 1, got {self.max_shards_per_window}"
            )
        if self.max_windows is not None and self.max_windows < 1:
            raise ValueError(f"max_windows must be >= 1 or None, got {self.max_windows}")
