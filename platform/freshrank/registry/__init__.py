"""Registry: versioned checkpoints, manifests with checksums, champion pointer, promotions."""

from freshrank.registry.checkpoint import (
    ServingModel,
    TrainingState,
    load_latest_or_init,
    load_serving_model,
    metrics_are_finite,
    promote_if_finite,
    save_checkpoint,
)
from freshrank.registry.store import (
    CorruptVersion,
    Registry,
    VersionInfo,
    atomic_write_bytes,
    sha256_file,
)

__all__ = [
    "CorruptVersion",
    "Registry",
    "ServingModel",
    "TrainingState",
    "VersionInfo",
    "atomic_write_bytes",
    "load_latest_or_init",
    "load_serving_model",
    "metrics_are_finite",
    "promote_if_finite",
    "save_checkpoint",
    "sha256_file",
]
