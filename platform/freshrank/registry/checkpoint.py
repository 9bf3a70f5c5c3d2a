"""What a training checkpoint holds, and how trainer and server load it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from freshrank.core.serialization import npz_bytes
from freshrank.model.config import RankerConfig
from freshrank.model.ranker import Ranker
from freshrank.registry.layout import (
    DRIFT_FILE,
    MODEL_FILE,
    OPTIMIZER_FILE,
    REPLAY_FILE,
    version_dir,
)
from freshrank.registry.promotion_log import champion_history
from freshrank.registry.store import Registry, VersionInfo, torch_bytes


@dataclass(frozen=True)
class TrainingState:
    """Everything the trainer needs to continue where a version left off."""

    version: int
    model_config: RankerConfig
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any] | None
    replay_state: dict[str, np.ndarray]
    cursor: int
    watermark: float | None
    events_trained: int
    manifest: dict[str, Any] = field(repr=False)
    drift_state: dict[str, np.ndarray] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ServingModel:
    """A loaded, eval-mode model and what serving reports about it."""

    version: int
    model: Ranker
    watermark: float | None
    manifest: dict[str, Any] = field(repr=False)


def save_checkpoint(
    registry: Registry,
    model_config: RankerConfig,
    model_state: Mapping[str, torch.Tensor],
    optimizer_state: Mapping[str, Any] | None,
    replay_state: Mapping[str, np.ndarray],
    manifest: Mapping[str, Any],
    extra_files: Mapping[str, bytes] | None = None,
) -> VersionInfo:
    """Publish one checkpoint version. ``manifest`` must carry cursor, watermark and metrics;
    ``extra_files`` (e.g. ``DRIFT_FILE``) are published and checksummed with the rest."""
    for key in ("cursor", "watermark", "metrics", "events_trained"):
        if key not in manifest:
            raise ValueError(f"checkpoint manifest needs {key!r}")
    files = {MODEL_FILE: torch_bytes({k: v.detach().cpu() for k, v in model_state.items()})}
    if optimizer_state is not None:
        files[OPTIMIZER_FILE] = torch_bytes(optimizer_state)
    files[REPLAY_FILE] = npz_bytes(replay_state)
    for name, data in (extra_files or {}).items():
        if name in files:
            raise ValueError(f"extra file {name!r} would replace a checkpoint file")
        files[name] = data
    full = dict(manifest)
    full["model_config"] = model_config.to_dict()
    full.setdefault("parent", registry.latest_version())
    return registry.publish(files, full)


def load_latest_or_init(registry: Registry) -> TrainingState | None:
    """The newest verified version's training state, or None on a first run.

    A newest version that fails verification is skipped (with the next older one used), so a
    torn or corrupted write never stops the trainer.
    """
    for version in reversed(registry.list_versions()):
        try:
            info = registry.verify(version, required=(MODEL_FILE, REPLAY_FILE))
        except Exception:
            continue
        m = info.manifest
        opt = registry.load_torch(info, OPTIMIZER_FILE) if OPTIMIZER_FILE in m["files"] else None
        return TrainingState(
            version=version,
            model_config=RankerConfig.from_dict(m["model_config"]),
            model_state=registry.load_torch(info, MODEL_FILE),
            optimizer_state=opt,
            replay_state=registry.load_npz(info, REPLAY_FILE),
            cursor=int(m["cursor"]),
            watermark=m.get("watermark"),
            events_trained=int(m.get("events_trained", 0)),
            manifest=m,
            drift_state=registry.load_npz(info, DRIFT_FILE) if DRIFT_FILE in m["files"] else None,
        )
    return None


def load_serving_model(registry: Registry, version: int) -> ServingModel:
    """Verify and load ``version`` for serving (weights only; raises ``CorruptVersion``)."""
    info = registry.verify(version, required=(MODEL_FILE,))
    config = RankerConfig.from_dict(info.manifest["model_config"])
    model = Ranker(config)
    model.load_state_dict(registry.load_torch(info, MODEL_FILE))
    model.eval()
    return ServingModel(version, model, info.manifest.get("watermark"), info.manifest)


def serving_fallbacks(registry: Registry) -> list[int]:
    """The versions a replica falls back to when it cannot serve its target, in order: the
    champion, then every earlier champion newest first (versions rolled back from left out).
    Versions that were never champion (rejected by the gate, or not judged yet) are not
    among them. Not verified here: the replica's loader verifies each before serving it."""
    out: list[int] = []
    champion = registry.champion_version()
    if champion is not None:
        out.append(champion)
    for version in champion_history(registry.promotions()):
        if version not in out:
            out.append(version)
    return out


def version_fingerprint(registry: Registry, version: int) -> tuple[tuple[Any, ...], ...]:
    """What ``version``'s files look like now, without reading them: name, size and mtime of
    each (locally also inode and ctime, so a same-size rewrite or a replacement by rename is
    seen); ``()`` when the version does not exist. A replica retries a version that failed as
    soon as this changes."""
    entries = registry.storage.list(version_dir(version))
    if not registry.is_local:
        return tuple((e.name, e.size, e.mtime or 0.0) for e in entries)
    out = []
    for entry in entries:
        try:
            st = os.stat(entry.path)
        except FileNotFoundError:
            continue
        out.append((entry.name, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns))
    return tuple(out)
