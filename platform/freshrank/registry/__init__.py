"""Registry: its on-disk layout, versioned checkpoints with checksummed manifests, the champion
pointer, the promotion policy and gate, rollback, pinning, retention, the promotion log and the
trainer's lease and stop flag."""

from freshrank.registry.checkpoint import (
    ServingModel,
    TrainingState,
    load_latest_or_init,
    load_serving_model,
    save_checkpoint,
)
from freshrank.registry.promotion import (
    DEFAULT_TOLERANCES,
    Direction,
    GateConfig,
    GateDecision,
    MetricTolerance,
    Promoter,
    PromotionMode,
    PromotionOutcome,
    PromotionPolicy,
    PromotionResult,
    evaluate_gate,
    metrics_are_finite,
    promote_if_finite,
    score_rows,
)
from freshrank.registry.store import (
    EVENT_KINDS,
    ChampionChanged,
    CorruptVersion,
    NoRollbackTarget,
    Registry,
    UnreadablePointer,
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
    "PromotionMode",
    "PromotionOutcome",
    "PromotionPolicy",
    "PromotionResult",
    "Promoter",
    "Registry",
    "ServingModel",
    "TrainingState",
    "UnreadablePointer",
    "VersionInfo",
    "evaluate_gate",
    "load_latest_or_init",
    "load_serving_model",
    "metrics_are_finite",
    "promote_if_finite",
    "save_checkpoint",
    "score_rows",
]
