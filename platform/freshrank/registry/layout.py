"""The on-disk layout of a registry: every name under its root, in one place. The store
(`freshrank.registry.store`), the checkpoint contents (`freshrank.registry.checkpoint`) and the
trainer's lease and stop flag (`freshrank.registry.control`) take their names from here.

A registry lives on any filesystem `freshrank.core.storage` resolves: a local path, ``file://``,
``s3://bucket/prefix`` (AWS or any S3-compatible store), ``gs://bucket/prefix``. Layout under
its root::

    versions/v000001/            one directory (prefix) per version
        model.pt                 weights (torch state_dict, loaded with weights_only=True)
        optimizer.pt             optimizer state (same)
        replay.npz               replay buffer (numpy only, loaded with allow_pickle=False)
        manifest.json            version, parent, model config, cursor, watermark, metrics,
                                 sha256 and size of every file above
        manifest.json.sha256     sha256 of manifest.json itself (a tampered or truncated
                                 manifest is refused too); written last: the publish marker
    CHAMPION                     {"version": N, ...}, replaced as a whole
    PINNED                       {"version": N, ...} when an operator pinned a version; serving
                                 replicas serve it instead of the champion while it exists
    TRAINER                      what the trainer is doing (state, version, cursor, time)
    promotions.jsonl             local: one line per event (promoted / rejected / rolled_back /
                                 error / pinned / unpinned / pruned), each with when, from, to
                                 and why
    promotions/<ns>-<id>.json    object stores: one object per event (there is no append)
    TRAINER_LEASE                the epoch of the trainer allowed to publish (fencing)
    STOP                         present while a stop of the trainer is requested
    .lock                        local: advisory lock serialising pointer changes and pruning

>>> version_dir(12)
'versions/v000012'
"""

from __future__ import annotations

VERSIONS_DIR = "versions"
MANIFEST = "manifest.json"
MANIFEST_DIGEST = "manifest.json.sha256"
"""Written last: the marker that a version was published whole."""
MODEL_FILE = "model.pt"
OPTIMIZER_FILE = "optimizer.pt"
REPLAY_FILE = "replay.npz"
"""The strategy state of every worker (replay rows, EWC importance, ...), numpy arrays only."""
DRIFT_FILE = "drift.npz"
"""The drift monitor's reference and history (compressed ``npz_bytes``), optional."""
CHAMPION = "CHAMPION"
PINNED = "PINNED"
TRAINER = "TRAINER"
TRAINER_LEASE = "TRAINER_LEASE"
STOP = "STOP"
PROMOTIONS_LOG = "promotions.jsonl"
PROMOTIONS_DIR = "promotions"
LOCK = ".lock"


def version_dir(version: int) -> str:
    """The directory (prefix) of one version, relative to the registry root."""
    return f"{VERSIONS_DIR}/v{int(version):06d}"


__all__ = [
    "CHAMPION",
    "DRIFT_FILE",
    "LOCK",
    "MANIFEST",
    "MANIFEST_DIGEST",
    "MODEL_FILE",
    "OPTIMIZER_FILE",
    "PINNED",
    "PROMOTIONS_DIR",
    "PROMOTIONS_LOG",
    "REPLAY_FILE",
    "STOP",
    "TRAINER",
    "TRAINER_LEASE",
    "VERSIONS_DIR",
    "version_dir",
]
