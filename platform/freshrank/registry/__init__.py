"""Registry: versioned checkpoints, manifests with checksums, champion pointer, promotion gate,
rollback, pinning, retention and the promotion log."""

from freshrank.registry.checkpoint import (
    ServingModel,
    TrainingState,
    load_latest_or_init,
    load_serving_model,
    metrics_are_finite,
    promote_if_finite,
    save_checkpoint,
)
from freshrank.registry.promotion import (
    DEFAULT_TOLERANCES,
    Direction,
    GateConfig,
    GateDecision,
    MetricTolerance,
    Promoter,
    PromotionOutcome,
    PromotionResult,
    evaluate_gate,
    score_rows,
)
from freshrank.registry.store import (
    EVENT_KINDS,
    ChampionChanged,
    CorruptVersion,
    NoRollbackTarget,
    Registry,
    VersionInfo,
)

__all__ = [
    "DEFAULT_TOLERANCES",
    "EVENT_KINDS",
    "ChampionChanged",
    "CorruptVersion",
    "Direction",
    "GateConfig",
    "GateDecision",
    "MetricTolerance",
    "NoRollbackTarget",
    "PromotionOutcome",
    "PromotionResult",
    "Promoter",
    "Registry",
    "ServingModel",
    "TrainingState",
    "VersionInfo",
    "evaluate_gate",
    "load_latest_or_init",
    "load_serving_model",
    "metrics_are_finite",
    "promote_if_finite",
    "save_checkpoint",
    "score_rows",
]
