"""Versioned checkpoints with a manifest, checksums and a champion pointer.

Layout under the registry root::

    versions/v000001/            one directory per version, published by an atomic rename
        model.pt                 weights (torch state_dict, loaded with weights_only=True)
        optimizer.pt             optimizer state (same)
        replay.npz               replay buffer (numpy only, loaded with allow_pickle=False)
        manifest.json            version, parent, model config, cursor, watermark, metrics,
                                 sha256 and size of every file above
        manifest.json.sha256     sha256 of manifest.json itself (a tampered or truncated
                                 manifest is refused too)
    CHAMPION                     {"version": N, ...}, replaced atomically
    PINNED                       {"version": N, ...} when an operator pinned a version; serving
                                 replicas serve it instead of the champion while it exists
    promotions.jsonl             one line per event: promoted / rejected / rolled_back / error /
                                 pinned / unpinned / pruned, each with when, from, to and why
    .lock                        advisory lock: pointer changes and pruning are serialised

A reader never sees a half-written version: files are written into a temporary directory
which is renamed into place only once the manifest is in it; pruning renames a version out of
``versions/`` before deleting it. A version whose files do not match their checksums, whose
manifest does not match its own checksum, or that lacks a required file is refused
(``CorruptVersion``), never loaded.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

MANIFEST = "manifest.json"
MANIFEST_DIGEST = "manifest.json.sha256"
_VERSION_RE = re.compile(r"^v(\d{6,})$")
_RESERVED_NAMES = frozenset({MANIFEST, MANIFEST_DIGEST})
_STALE_TMP_S = 3600.0

EVENT_KINDS: tuple[str, ...] = (
    "promoted",
    "rejected",
    "rolled_back",
    "error",
    "pinned",
    "unpinned",
    "pruned",
)
"""Kinds of lines in ``promotions.jsonl``."""


class CorruptVersion(RuntimeError):
    """A version's files do not match its manifest (checksum, size or missing file)."""


class ChampionChanged(RuntimeError):
    """The champion moved between a decision and the pointer write (see ``expected``)."""


class NoRollbackTarget(LookupError):
    """No earlier champion is left to roll back to (none logged, or all pruned or corrupt)."""


_UNSET: Any = object()


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
        self._lock_state = threading.local()

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
            if "/" in name or name.startswith(".") or name in _RESERVED_NAMES:
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
                text = json.dumps(full, indent=2, sort_keys=True).encode()
                (tmp / MANIFEST).write_bytes(text)
                (tmp / MANIFEST_DIGEST).write_text(hashlib.sha256(text).hexdigest())
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

    def set_champion(
        self,
        version: int,
        reason: str = "",
        *,
        expected: int | None = _UNSET,
        kind: str = "promoted",
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Point the champion at ``version`` (atomically) and log it.

        The version is verified first (a corrupt or missing version raises and the pointer
        stays). When ``expected`` is given and the champion is no longer that version (another
        writer moved it since the caller looked), raises ``ChampionChanged``. ``kind`` is the
        log entry (``promoted``; ``rolled_back`` from :meth:`rollback`).
        """
        with self._locked():
            self.verify(version)
            previous = self.champion_version()
            if expected is not _UNSET and previous != expected:
                raise ChampionChanged(
                    f"champion is v{previous}, expected v{expected}: not promoting v{version}"
                )
            record = {"version": int(version), "promoted_at": time.time(), "reason": reason}
            atomic_write_bytes(self.root / "CHAMPION", json.dumps(record).encode())
            fields = {"to_version": int(version), "from_version": previous, "reason": reason}
            self.log_event(kind, **fields, **(details or {}))

    def rollback(self, to_version: int | None = None, reason: str = "") -> int:
        """Make an earlier version champion again and log ``rolled_back``; returns it.

        ``to_version`` defaults to :meth:`rollback_target`: the latest champion before the
        current one that has not itself been rolled back from (and still verifies).
        Raises ``NoRollbackTarget`` when there is none, ``CorruptVersion`` / ``KeyError`` when
        the named version cannot be served.
        """
        with self._locked():
            target = self.rollback_target() if to_version is None else int(to_version)
            if target is None:
                raise NoRollbackTarget(f"no earlier champion to roll back to in {self.root}")
            self.set_champion(target, reason=reason or "rollback", kind="rolled_back")
            return target

    def rollback_target(self) -> int | None:
        """The version :meth:`rollback` goes to by default, or None.

        Walks the log: every version that was champion, newest first, skipping the current
        one, versions rolled back from (unless promoted again later) and versions that no
        longer exist or fail verification.
        """
        current = self.champion_version()
        history: list[int] = []
        rolled_away: set[int] = set()
        for event in self.promotions():
            kind, to = event.get("kind"), event.get("to_version")
            if kind == "rolled_back" and event.get("from_version") is not None:
                rolled_away.add(int(event["from_version"]))
            if kind in ("promoted", "rolled_back") and to is not None:
                if kind == "promoted":
                    rolled_away.discard(int(to))
                history.append(int(to))
        seen: set[int] = set()
        for version in reversed(history):
            if version == current or version in rolled_away or version in seen:
                continue
            seen.add(version)
            try:
                self.verify(version)
            except (CorruptVersion, KeyError):
                continue
            return version
        return None

    def pin(self, version: int, reason: str = "") -> None:
        """Pin serving to ``version`` (writes ``PINNED``; replicas honour it while it exists).

        The version is verified first. The champion pointer is not touched.
        """
        with self._locked():
            self.verify(version)
            previous = self.pinned_version()
            record = {"version": int(version), "pinned_at": time.time(), "reason": reason}
            atomic_write_bytes(self.root / "PINNED", json.dumps(record).encode())
            self.log_event("pinned", to_version=int(version), from_version=previous, reason=reason)

    def unpin(self, reason: str = "") -> int | None:
        """Remove the pin (serving follows the champion again); returns the version it named."""
        with self._locked():
            previous = self.pinned_version()
            (self.root / "PINNED").unlink(missing_ok=True)
            if previous is not None:
                self.log_event(
                    "unpinned",
                    to_version=self.champion_version(),
                    from_version=previous,
                    reason=reason,
                )
            return previous

    def prune(self, keep_last: int) -> list[int]:
        """Delete all versions but the newest ``keep_last``, the champion, the pinned version
        and the default rollback target; returns the deleted version numbers.

        A version is first renamed out of ``versions/`` (so readers never list a half-deleted
        one), then removed. Temporary directories of crashed publishes older than an hour go
        too.
        """
        if not isinstance(keep_last, int) or keep_last < 1:
            raise ValueError(f"keep_last must be an int >= 1, got {keep_last!r}")
        removed: list[int] = []
        with self._locked():
            versions = self.list_versions()
            keep = set(versions[-keep_last:])
            keep |= {self.champion_version(), self.pinned_version(), self.rollback_target()}
            for version in versions:
                if version in keep:
                    continue
                source = self.versions_dir / f"v{version:06d}"
                trash = self.versions_dir / f".trash-{uuid.uuid4().hex}"
                os.rename(source, trash)
                shutil.rmtree(trash, ignore_errors=True)
                removed.append(version)
            now = time.time()
            for p in self.versions_dir.glob(".t*-*") if self.versions_dir.is_dir() else ():
                with contextlib.suppress(OSError):
                    if p.name.startswith(".trash-") or now - p.stat().st_mtime > _STALE_TMP_S:
                        shutil.rmtree(p, ignore_errors=True)
            if removed:
                self.log_event("pruned", versions=removed, keep_last=keep_last, reason="retention")
        return removed

    def log_event(self, kind: str, **fields: Any) -> None:
        """Append one line to ``promotions.jsonl``: ``at`` (unix time), ``kind`` and ``fields``
        (by convention ``from_version``, ``to_version``, ``reason``)."""
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown promotion log kind {kind!r}; known: {EVENT_KINDS}")
        self.root.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"at": time.time(), "kind": kind, **fields}, sort_keys=True)
        with open(self.root / "promotions.jsonl", "a", encoding="utf-8") as f:
            f.write(line + "\n")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the registry's advisory lock (re-entrant within one thread of this object)."""
        depth = getattr(self._lock_state, "depth", 0)
        if depth:
            self._lock_state.depth = depth + 1
            try:
                yield
            finally:
                self._lock_state.depth -= 1
            return
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            self._lock_state.depth = 1
            try:
                yield
            finally:
                self._lock_state.depth = 0
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

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
        return _read_pointer(self.root / "CHAMPION")

    def pinned_version(self) -> int | None:
        """The version pinned with :meth:`pin`, or None."""
        return _read_pointer(self.root / "PINNED")

    def serving_target(self) -> int | None:
        """What serving replicas should serve: the pinned version if any, else the champion."""
        pinned = self.pinned_version()
        return pinned if pinned is not None else self.champion_version()

    def get(self, version: int) -> VersionInfo:
        """A version's manifest (not verified; see :meth:`verify`)."""
        path = self.versions_dir / f"v{version:06d}"
        try:
            manifest = json.loads((path / MANIFEST).read_bytes())
        except FileNotFoundError:
            raise KeyError(f"no version {version} in registry {self.root}") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptVersion(f"version {version}: {MANIFEST} is not valid JSON") from exc
        if not isinstance(manifest, dict):
            raise CorruptVersion(f"version {version}: {MANIFEST} is not a JSON object")
        return VersionInfo(version, path, manifest)

    def promotions(self) -> list[dict[str, Any]]:
        """Every line of the promotion log, oldest first."""
        path = self.root / "promotions.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def verify(self, version: int, required: Iterable[str] = ()) -> VersionInfo:
        """Check ``version`` against its manifest and the manifest against its own checksum.

        Raises ``CorruptVersion`` when the manifest is missing its checksum, does not match it,
        is not JSON or names another version; when a file is missing, has another size or fails
        its sha256; or when a ``required`` file is not in the manifest. ``KeyError`` when the
        version does not exist.
        """
        path = self.versions_dir / f"v{version:06d}"
        try:
            raw = (path / MANIFEST).read_bytes()
        except FileNotFoundError:
            raise KeyError(f"no version {version} in registry {self.root}") from None
        try:
            recorded = (path / MANIFEST_DIGEST).read_bytes()
        except FileNotFoundError:
            raise CorruptVersion(f"version {version}: {MANIFEST_DIGEST} is missing") from None
        if hashlib.sha256(raw).hexdigest().encode() != recorded:
            raise CorruptVersion(f"version {version}: {MANIFEST} fails its sha256 check")
        info = self.get(version)
        if info.manifest.get("version") != version:
            raise CorruptVersion(
                f"version {version}: manifest names version {info.manifest.get('version')}"
            )
        files = info.manifest.get("files")
        if not isinstance(files, dict):
            raise CorruptVersion(f"version {version}: manifest lists no files")
        for name in required:
            if name not in files:
                raise CorruptVersion(f"version {version}: manifest lacks required file {name}")
        for name, entry in files.items():
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


def _read_pointer(path: Path) -> int | None:
    try:
        return int(json.loads(path.read_text())["version"])
    except FileNotFoundError:
        return None


def _fsync_dir_files(directory: Path) -> None:
    for p in directory.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())
