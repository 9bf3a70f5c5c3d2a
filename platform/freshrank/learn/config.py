"""Typed configuration of the incremental trainer."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, get_args

from freshrank.learn.strategies import (
    CombinedConfig,
    StrategyConfig,
    StrategyKnobs,
    apply_knobs,
    parse_strategy,
)
from freshrank.model.config import RankerConfig
from freshrank.registry.promotion import PromotionMode

PROMOTION_MODES: tuple[str, ...] = tuple(m.value for m in PromotionMode)
"""How the trainer promotes the versions it writes (see ``TrainConfig.promotion``)."""

PlacementStrategy = Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]
"""Ray placement-group strategies for the trainer's workers (``TrainConfig.placement_strategy``)."""

PLACEMENT_STRATEGIES: tuple[str, ...] = get_args(PlacementStrategy)


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
    placement_strategy: PlacementStrategy = "PACK"
    """How Ray places the workers' bundles: PACK (as few nodes as possible), SPREAD (as many as
    possible), STRICT_PACK (one node or none), STRICT_SPREAD (one worker per node, or none)."""
    resources_per_worker: Mapping[str, float] | None = None
    """Ray resources each worker reserves, e.g. {"CPU": 1, "train_slot": 1} (None: one CPU, or
    one GPU with use_gpu). It replaces the default: name CPU to keep one."""
    batch_size: int = 512
    """New rows per worker per step; replay rows come on top (``replay_ratio`` of them)."""
    row_sparse: bool = False
    """Row-sparse training (``learn.row_sparse``): the tables get sparse gradients, SparseAdam
    (lazy Adam) steps only the rows a batch touched, and workers exchange those rows instead of
    DDP's all-reduce of every table. Off by default until its quality figures are measured
    beside dense Adam's (bench/RESULTS.md, issue 15)."""
    table_learning_rate: float | None = None
    """With ``row_sparse``: SparseAdam's step size for the tables (None: ``learning_rate``).
    Lazy Adam moves a row only when a batch touches it; see bench/RESULTS.md, issue 15."""
    learning_rate: float = 0.02
    """Adam's step size. 0.02 is what the DIGINETICA backtests were tuned at (0.01-0.04 tried);
    at the earlier 3e-3 a model trained from scratch on the simulator spent its first 7 windows
    of ~4,000 events scoring worse than its first version (AUC 0.55 against 0.62), and the
    promotion gate held every shard of those windows back (freshness p99 17 s); at 0.02 no two
    versions in a row are rejected and the model is better sooner (AUC 0.74 after 5 windows
    instead of 14; ``bench/bench_coldstart.py``)."""
    strategy: str = "lwf"
    """Continual-learning strategy: finetune, replay, replay-balanced, exemplar-replay, ewc,
    ewc-separate, lwf (or any other registered name), or parts joined with '+' (e.g.
    exemplar-replay+lwf); replay parts take replay_capacity/replay_ratio/seed, exemplar parts
    exemplar_negatives, LwF parts lwf_alpha. The default, lwf with weight 0.5, is what honest
    selection found to hold on both logs we have (bench/RESULTS.md, issue 16): chosen on
    DIGINETICA's periods 1-8, it beats fine-tuning on the unseen periods 9-16 (70% / 77% of the
    fine-tune -> joint gap on Recall@20 / MRR@20, at 10% of joint's events) and is never worse
    than fine-tuning on the simulator, planted shift included. The two logs disagree on
    exemplar-replay+lwf: best on DIGINETICA (79-106% of the gap on 9-16) but worse than
    fine-tuning on the simulator, whose users click among several good items. Run
    `freshrank backtest --select` on your own log to choose; it prints the options to use
    here."""
    replay_capacity: int = 50_000
    """Rows each worker keeps in its replay buffer (clicks only for exemplar-replay)."""
    replay_ratio: float = 0.5
    """Replay rows mixed into each step, as a fraction of its new rows."""
    exemplar_negatives: int = 3
    """Current candidates paired with each replayed click (exemplar-replay parts only)."""
    lwf_alpha: float = 0.5
    """Weight of LwF's distillation term (LwF parts only; 0.5 alone and 0.25 with
    exemplar-replay were the selections' choices, see bench/RESULTS.md, issue 16)."""
    promotion: str = "gate"
    """gate: promote a version only if it is not worse than the champion on the next window's
    rows (scored before either trained on them); finite: promote every version whose window
    metrics are finite; manual: never promote (use `freshrank registry promote`)."""
    gate_min_rows: int = 200
    """Fewest fresh rows the gate compares on; a smaller next window leaves the version
    unjudged (the following version supersedes it)."""
    keep_versions: int | None = 50
    """Versions the registry keeps besides the champion, the pinned version and the rollback
    target (older ones are pruned after each checkpoint); None keeps every version."""
    drift: bool = True
    """Sketch every window, judge feature/score/CTR drift against the training reference and
    store the reference with each version (drift.npz) for the Serve replicas."""
    max_shards_per_window: int = 16
    """Most shards in one window: a backlog is caught up in bigger windows (fewer fixed costs)."""
    max_rows_per_window: int | None = 100_000
    """Most rows to train in one window (None: no bound): a window stops taking shards once it
    holds this many, and a larger shard is split by row range across windows (the cursor then
    points inside it, so nothing is lost or trained twice across a restart)."""
    max_future_skew_s: float | None = 300.0
    """Rows whose event time is later than the trainer's clock plus this are dropped and
    counted as out of time (``rows_out_of_time``), so a wrong clock never moves the watermark
    past now (None: no bound; the watermark is still never later than the checkpoint time)."""
    max_past_age_s: float | None = None
    """Rows older than this (seconds before the trainer's clock) are dropped and counted as out
    of time; None accepts any age (a backfill of old events trains as usual)."""
    dedup_horizon_events: int = 200_000
    """Event ids the trainer remembers (the most recently trained) to drop a re-landed event
    as a duplicate (``rows_duplicate``); kept with every version (8 bytes an id), so a restart
    keeps them. 0 turns de-duplication by event id off."""
    heartbeat_interval_s: float = 5.0
    """How often the trainer refreshes ``TRAINER``; readers call it stale after 3 intervals
    without a beat and dead after 12 (``freshrank status``)."""
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
        if self.placement_strategy not in PLACEMENT_STRATEGIES:
            raise ValueError(
                f"placement_strategy must be one of {', '.join(PLACEMENT_STRATEGIES)}, "
                f"got {self.placement_strategy!r}"
            )
        if self.resources_per_worker is not None:
            object.__setattr__(self, "resources_per_worker", self._checked_resources())
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.table_learning_rate is not None and not self.table_learning_rate > 0:
            raise ValueError(
                f"table_learning_rate must be > 0 or None, got {self.table_learning_rate}"
            )
        if self.table_learning_rate is not None and not self.row_sparse:
            raise ValueError(
                "table_learning_rate is the row-sparse optimizer's: set row_sparse=True "
                "(--row-sparse) or leave it unset"
            )
        if self.replay_capacity < 0:
            raise ValueError(f"replay_capacity must be >= 0, got {self.replay_capacity}")
        if self.replay_ratio < 0:
            raise ValueError(f"replay_ratio must be >= 0, got {self.replay_ratio}")
        if self.exemplar_negatives < 1:
            raise ValueError(f"exemplar_negatives must be >= 1, got {self.exemplar_negatives}")
        if self.max_shards_per_window < 1:
            raise ValueError(
                f"max_shards_per_window must be >= 1, got {self.max_shards_per_window}"
            )
        if self.max_rows_per_window is not None and self.max_rows_per_window < 1:
            raise ValueError(
                f"max_rows_per_window must be >= 1 or None, got {self.max_rows_per_window}"
            )
        for name in ("max_future_skew_s", "max_past_age_s"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ValueError(f"{name} must be >= 0 seconds or None, got {value}")
        if self.dedup_horizon_events < 0:
            raise ValueError(
                f"dedup_horizon_events must be >= 0 (0 turns it off), "
                f"got {self.dedup_horizon_events}"
            )
        if not self.heartbeat_interval_s > 0:
            raise ValueError(
                f"heartbeat_interval_s must be > 0 seconds, got {self.heartbeat_interval_s}"
            )
        if self.promotion not in PROMOTION_MODES:
            raise ValueError(
                f"promotion must be one of {', '.join(PROMOTION_MODES)}, got {self.promotion!r}"
            )
        if self.keep_versions is not None and self.keep_versions < 1:
            raise ValueError(f"keep_versions must be >= 1 or None, got {self.keep_versions}")
        if self.gate_min_rows < 1:
            raise ValueError(f"gate_min_rows must be >= 1, got {self.gate_min_rows}")
        parsed = self.strategy_config()  # raises ValueError naming the known strategies
        parts = parsed.parts if isinstance(parsed, CombinedConfig) else (parsed,)
        for part in parts:
            if part.backtest_only:
                raise ValueError(
                    f"strategy {str(part.kind)!r} is for backtests only: it changes the weights "
                    "outside the optimizer step, which a DDP worker without rows in a window "
                    "would skip, leaving the workers' weights different"
                )
        if self.max_windows is not None and self.max_windows < 1:
            raise ValueError(f"max_windows must be >= 1 or None, got {self.max_windows}")

    def _checked_resources(self) -> dict[str, float]:
        """``resources_per_worker`` as a plain dict of floats, or ValueError naming the field."""
        resources = self.resources_per_worker
        if not isinstance(resources, Mapping) or not resources:
            raise ValueError(
                "resources_per_worker must be a non-empty mapping of resource name to amount "
                f"or None, got {resources!r}"
            )
        checked: dict[str, float] = {}
        for name, amount in resources.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"resources_per_worker names must be strings, got {name!r}")
            if isinstance(amount, bool) or not isinstance(amount, int | float):
                raise ValueError(f"resources_per_worker[{name!r}] must be a number, got {amount!r}")
            if not (math.isfinite(amount) and amount >= 0):
                raise ValueError(
                    f"resources_per_worker[{name!r}] must be finite and >= 0, got {amount}"
                )
            checked[name] = float(amount)
        if checked.get("GPU", 0) > 0 and not self.use_gpu:
            raise ValueError("resources_per_worker asks for a GPU but use_gpu is False")
        return checked

    def strategy_config(self) -> StrategyConfig:
        """The typed strategy config: ``strategy`` parsed, replay parts sized by this config.

        >>> TrainConfig("l", "r", strategy="replay+lwf", replay_capacity=10).strategy_config()
        ... # doctest: +ELLIPSIS
        CombinedConfig(parts=(ReplayConfig(capacity=10, mix_ratio=0.5, ...), LwFConfig(...)))
        """
        knobs = StrategyKnobs(
            replay_capacity=self.replay_capacity,
            replay_ratio=self.replay_ratio,
            replay_seed=self.seed,
            exemplar_negatives=self.exemplar_negatives,
            lwf_alpha=self.lwf_alpha,
        )
        return apply_knobs(parse_strategy(self.strategy), knobs)
