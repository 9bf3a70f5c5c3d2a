"""Versioned checkpoints with a manifest, checksums and a champion pointer.

Layout under the registry root::

    versions/v000001/            one directory per version, published by an atomic rename
        model.pt                 weights (torch state_dict, loaded with weights_only=True)
        optimizer.pt             optimizer state (same)
        replay.npz               replay buffer (numpy only, loaded with allow_pickle=False)
        manifest.json            version, parent, model config, cursor, watermark, metrics,
                                 sha256 and size of every file above
    CHAMPION                     {"version": N, ...}, replaced atomically
    promotions.jsonl             one line per promotion / rejection

A reader never sees a half-written version: files are written into a temporary directory
which is renamed into place only once the manifest is in it. A version whose files do not
match their checksums is refused (``CorruptVersion``), never loaded.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

MANIFEST = "manifest.json"
_VERSION_RE = re.compile(r"^v(\d{6,})$")


class CorruptVersion(RuntimeError):
    """A version's files do not match its manifest (checksum, size or missing file)."""


@dataclass(frozen=True)
class VersionInfo:
    """A published version: its number, directory and manifest."""

    version: int
    path: Path
    manifest: dict[str, Any]


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def torch_bytes(obj: Mapping[str, Any]) -> bytes:
    """Serialise a state dict (tensors and plain containers) with ``torch.save``."""
    buf = io.BytesIO()
    torch.save(dict(obj), buf)
    return buf.getvalue()


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """Serialise numpy arrays as an uncompressed ``.npz`` (no object arrays)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()


class Registry:
    """The versions of one model line, and which of them is champion."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    @property
    def versions_dir(self) -> Path:
        """Where version directories live."""
        return self.root / "versions"

    # ----- writing ---------------------------------------------------------------------------
    def publish(
        self,
        files: Mapping[str, bytes],
        manifest: Mapping[str, Any],
        version: int | None = None,
    ) -> VersionInfo:
        """Publish a new version holding ``files`` (name -> bytes) and return it.

        ``manifest`` is completed with ``version``, ``created_at`` and ``files`` (sha256 and
        size of each). The version number is the next free one unless given; publishing a
        number that exists raises ``FileExistsError``.
        """
        for name in files:
            if "/" in name or name.startswith(".") or name == MANIFEST:
                raise ValueError(f"bad checkpoint file name {name!r}")
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.versions_dir / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            entries = {}
            for name, data in files.items():
                (tmp / name).write_bytes(data)
                entries[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            while True:
                number = version if version is not None else self._next_version()
                full = dict(manifest)
                full.update(version=number, created_at=time.time(), files=entries)
                (tmp / MANIFEST).write_text(json.dumps(full, indent=2, sort_keys=True))
                _fsync_dir_files(tmp)
                target = self.versions_dir / f"v{number:06d}"
                try:
                    os.rename(tmp, target)
                except OSError as exc:
                    if target.exists() and version is None:
                        continue  # another writer took it: try the next number
                    raise FileExistsError(
                        f"version {number} already exists in {self.root}"
                    ) from exc
                return VersionInfo(number, target, full)
        except BaseException:
            if tmp.exists():
                for p in tmp.iterdir():
                    p.unlink()
                tmp.rmdir()
            raise

    def _next_version(self) -> int:
        latest = self.latest_version()
        taken = [
            int(m.group(1)) for p in self.versions_dir.iterdir() if (m := _VERSION_RE.match(p.name))
        ]
        return max([latest or 0, *taken]) + 1

    def set_champion(self, version: int, reason: str = "") -> None:
        """Point the champion at ``version`` (atomically) and log the promotion."""
        info = self.get(version)  # refuses missing versions
        previous = self.champion_version()
        record = {"version": info.version, "promoted_at": time.time(), "reason": reason}
        atomic_write_bytes(self.root / "CHAMPION", json.dumps(record).encode())
        self.log_event("promoted", to_version=version, from_version=previous, reason=reason)

    def log_event(self, kind: str, **fields: Any) -> None:
        """Append one line to ``promotions.jsonl`` (promoted / rejected / rolled back)."""
        self.root.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"at": time.time(), "kind": kind, **fields}, sort_keys=True)
        with open(self.root / "promotions.jsonl", "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def write_trainer_status(self, status: Mapping[str, Any]) -> None:
        """Record what the trainer is doing (``TRAINER``: state, version, cursor, time)."""
        record = {**status, "at": time.time(), "pid": os.getpid()}
        atomic_write_bytes(self.root / "TRAINER", json.dumps(record).encode())

    def trainer_status(self) -> dict[str, Any] | None:
        """The trainer's last recorded status, or None when no trainer has run here."""
        try:
            return json.loads((self.root / "TRAINER").read_text())
        except FileNotFoundError:
            return None

    # ----- reading ---------------------------------------------------------------------------
    def list_versions(self) -> list[int]:
        """Published version numbers, ascending."""
        if not self.versions_dir.is_dir():
            return []
        out = []
        for p in self.versions_dir.iterdir():
            m = _VERSION_RE.match(p.name)
            if m and (p / MANIFEST).is_file():
                out.append(int(m.group(1)))
        return sorted(out)

    def latest_version(self) -> int | None:
        """The newest published version, or None when there is none."""
        versions = self.list_versions()
        return versions[-1] if versions else None

    def champion_version(self) -> int | None:
        """The version the champion pointer names, or None before the first promotion."""
        path = self.root / "CHAMPION"
        try:
            return int(json.loads(path.read_text())["version"])
        except FileNotFoundError:
            return None

    def get(self, version: int) -> VersionInfo:
        """A version's manifest (not verified; see :meth:`verify`)."""
        path = self.versions_dir / f"v{version:06d}"
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except FileNotFoundError:
            raise KeyError(f"no version {version} in registry {self.root}") from None
        return VersionInfo(version, path, manifest)

    def promotions(self) -> list[dict[str, Any]]:
        """Every line of the promotion log, oldest first."""
        path = self.root / "promotions.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def verify(self, version: int) -> VersionInfo:
        """Check every file of ``version`` against its manifest; raise ``CorruptVersion``."""
        info = self.get(version)
        for name, entry in info.manifest.get("files", {}).items():
            path = info.path / name
            if not path.is_file():
                raise CorruptVersion(f"version {version}: file {name} is missing")
            size = path.stat().st_size
            if size != entry["bytes"]:
                raise CorruptVersion(
                    f"version {version}: {name} has {size} bytes, manifest says {entry['bytes']}"
                )
            if sha256_file(path) != entry["sha256"]:
                raise CorruptVersion(f"version {version}: {name} fails its sha256 check")
        return info

    def load_torch(self, info: VersionInfo, name: str) -> dict[str, Any]:
        """Load a torch file of a verified version without unpickling code."""
        with open(info.path / name, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=True)

    def load_npz(self, info: VersionInfo, name: str) -> dict[str, np.ndarray]:
        """Load an npz file of a verified version (object arrays refused)."""
        with np.load(info.path / name, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}


def _fsync_dir_files(directory: Path) -> None:
    for p in directory.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())
