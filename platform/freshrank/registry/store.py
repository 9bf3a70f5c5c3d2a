"""Versioned checkpoints with a manifest, checksums and a champion pointer.

A registry lives on any filesystem `freshrank.core.storage` resolves (a local path, ``file://``,
``s3://bucket/prefix``, ``gs://bucket/prefix``); the names under its root are
`freshrank.registry.layout`'s.

What is atomic where:

* Publishing a version: locally its files are written into a temporary directory that is
  renamed into place whole. On an object store the files are PUT first, then ``manifest.json``,
  then ``manifest.json.sha256`` **last**: a version exists (is listed) once both are there, so a
  crashed publish leaves an unlisted prefix that :meth:`Registry.prune` sweeps after an hour.
* A version whose files do not match their checksums, whose manifest does not match its own
  checksum, or that lacks a required file is refused (``CorruptVersion``), never loaded: on
  every filesystem the bytes that are loaded are the bytes that were checked.
* ``CHAMPION``, ``PINNED``, ``TRAINER``: an atomic replace locally (temp file + rename) and one
  whole-object PUT on an object store; readers see the old record or the new one. Locally the
  champion's compare-and-set runs under an ``fcntl`` lock; object stores have no lock, so there
  the last writer wins (within one process the registry still serialises its own writers). That
  is safe because a registry has one writer of record, the trainer holding the lease, and
  operators' ``freshrank registry promote/rollback/pin`` are rare, explicit and logged.
* Pruning: locally a version is renamed out of ``versions/`` before it is deleted; on an object
  store its marker goes first, so it stops being listed before its files go.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from freshrank.core.serialization import arrays_from_npz
from freshrank.core.storage import StorageBacked, StorageOptions
from freshrank.registry.layout import (
    CHAMPION,
    LOCK,
    MANIFEST,
    MANIFEST_DIGEST,
    PINNED,
    TRAINER,
    VERSIONS_DIR,
    version_dir,
)
from freshrank.registry.promotion_log import PromotionLog, champion_history
from freshrank.registry.records import UnreadablePointer, count_unreadable, parse_pointer

_log = logging.getLogger(__name__)
_VERSION_RE = re.compile(r"^v(\d{6,})$")
_RESERVED_NAMES = frozenset({MANIFEST, MANIFEST_DIGEST})
_STALE_TMP_S = 3600.0
_PROCESS_LOCKS: dict[str, threading.Lock] = {}
_PROCESS_LOCKS_GUARD = threading.Lock()

EVENT_KINDS: tuple[str, ...] = (
    "promoted",
    "rejected",
    "rolled_back",
    "error",
    "pinned",
    "unpinned",
    "pruned",
)
"""Kinds of promotion log events."""


class CorruptVersion(RuntimeError):
    """A version's files do not match its manifest (checksum, size or missing file)."""


class ChampionChanged(RuntimeError):
    """The champion moved between a decision and the pointer write (see ``expected``)."""


class NoRollbackTarget(LookupError):
    """No earlier champion is left to roll back to (none logged, or all pruned or corrupt)."""


_UNSET: Any = object()


@dataclass(frozen=True)
class VersionInfo:
    """A published version: its number, directory and manifest.

    ``path`` is the version's directory: a ``Path`` on a local filesystem, a URI string
    (``s3://bucket/registry/versions/v000003``) on an object store.
    """

    version: int
    path: Path | str
    manifest: dict[str, Any]


def torch_bytes(obj: Mapping[str, Any]) -> bytes:
    """Serialise a state dict (tensors and plain containers) with ``torch.save``."""
    buf = io.BytesIO()
    torch.save(dict(obj), buf)
    return buf.getvalue()


class Registry(StorageBacked):
    """The versions of one model line, and which of them is champion.

    ``root`` is a local path or a URI (``s3://bucket/registry``, ``gs://...``); ``options`` says
    how to reach an S3-compatible endpoint the URI cannot name. See the module docstring for
    what each operation guarantees where.
    """

    _what = "the registry"

    def __init__(self, root: str | os.PathLike, options: StorageOptions | None = None) -> None:
        super().__init__(root, options)
        self._lock_state = threading.local()
        self._events = PromotionLog(self._storage, self._locked)
        self.pointer_problems: dict[str, str] = {}
        """Pointer files (``CHAMPION``, ``PINNED``) last found unreadable, and why."""

    @property
    def skipped_log_lines(self) -> int:
        """Lines of the promotion log the last :meth:`promotions` skipped (not JSON events)."""
        return self._events.skipped

    @property
    def versions_dir(self) -> Path:
        """Where version directories live (local registries)."""
        return self.root / VERSIONS_DIR

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
        number that exists raises ``FileExistsError``. Locally the version appears whole (one
        directory rename); on an object store its manifest checksum is written last and marks
        it published (see the module docstring).
        """
        for name in files:
            if "/" in name or name.startswith(".") or name in _RESERVED_NAMES or not name:
                raise ValueError(f"bad checkpoint file name {name!r}")
        entries = {
            name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            for name, data in files.items()
        }
        while True:
            number = version if version is not None else self._next_version()
            full = dict(manifest)
            full.update(version=number, created_at=time.time(), files=entries)
            text = json.dumps(full, indent=2, sort_keys=True).encode()
            digest = hashlib.sha256(text).hexdigest().encode()
            payload = {**files, MANIFEST: text, MANIFEST_DIGEST: digest}  # the digest goes last
            try:
                self._storage.publish_dir(
                    payload, self._version_name(number), marker=MANIFEST_DIGEST
                )
            except FileExistsError:
                if version is None:
                    continue  # another writer took it: try the next number
                raise FileExistsError(f"version {number} already exists in {self.uri}") from None
            return VersionInfo(number, self._version_path(number), full)

    def _next_version(self) -> int:
        """1 + the largest version number with a directory, published or not (a crashed
        publish's leftovers on an object store are never written into)."""
        taken = [
            int(m.group(1))
            for entry in self._storage.list(VERSIONS_DIR)
            if entry.is_dir and (m := _VERSION_RE.match(entry.name))
        ]
        return max(taken, default=0) + 1

    def set_champion(
        self,
        version: int,
        reason: str = "",
        *,
        expected: int | None = _UNSET,
        kind: str = "promoted",
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Point the champion at ``version`` and log it.

        The version is verified first (a corrupt or missing version raises and the pointer
        stays). When ``expected`` is given and the champion is no longer that version (another
        writer moved it since the caller looked), raises ``ChampionChanged``. ``kind`` is the
        log entry (``promoted``; ``rolled_back`` from :meth:`rollback`). Locally the check and
        the write are one step under the registry's lock; on object stores they are one step
        only within this process (see the module docstring).
        """
        with self._locked():
            self.verify(version)
            previous = self.champion_version()
            if expected is not _UNSET and previous != expected:
                raise ChampionChanged(
                    f"champion is v{previous}, expected v{expected}: not promoting v{version}"
                )
            record = {"version": int(version), "promoted_at": time.time(), "reason": reason}
            self._storage.write_atomic(CHAMPION, json.dumps(record).encode())
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
                raise NoRollbackTarget(f"no earlier champion to roll back to in {self.uri}")
            self.set_champion(target, reason=reason or "rollback", kind="rolled_back")
            return target

    def rollback_target(self) -> int | None:
        """The version :meth:`rollback` goes to by default, or None.

        Walks the log: every version that was champion, newest first, skipping the current
        one, versions rolled back from (unless promoted again later) and versions that no
        longer exist or fail verification.
        """
        current = self.champion_version()
        for version in champion_history(self.promotions()):
            if version == current:
                continue
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
            self._storage.write_atomic(PINNED, json.dumps(record).encode())
            self.log_event("pinned", to_version=int(version), from_version=previous, reason=reason)

    def unpin(self, reason: str = "") -> int | None:
        """Remove the pin (serving follows the champion again); returns the version it named."""
        with self._locked():
            previous = self.pinned_version()
            self._storage.delete(PINNED)
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

        A version stops being listed before any of its files go: locally it is first renamed
        out of ``versions/``; on an object store its marker (``manifest.json.sha256``) is
        deleted first. Leftovers of crashed publishes older than an hour go too (local temp
        directories; unmarked version prefixes on an object store).
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
                self._storage.delete_dir(self._version_name(version), marker=MANIFEST_DIGEST)
                removed.append(version)
            self._storage.sweep(VERSIONS_DIR, marker=MANIFEST_DIGEST, min_age_s=_STALE_TMP_S)
            for entry in self._storage.list(VERSIONS_DIR):  # trash of earlier releases' prune
                if entry.is_dir and entry.name.startswith(".trash-"):
                    self._storage.delete_dir(f"{VERSIONS_DIR}/{entry.name}", marker=None)
            if removed:
                self.log_event("pruned", versions=removed, keep_last=keep_last, reason="retention")
        return removed

    def log_event(self, kind: str, **fields: Any) -> None:
        """Log one event: ``at`` (unix time), ``kind`` and ``fields`` (by convention
        ``from_version``, ``to_version``, ``reason``).

        Locally one line appended to ``promotions.jsonl`` with one write under the registry's
        lock, after cutting off the torn tail of an earlier append that failed half way
        (`freshrank.registry.promotion_log`); a failed append raises ``OSError`` and leaves the
        log readable. On an object store, which cannot append, one object
        ``promotions/<unix ns>-<random>.json`` (never overwritten: the name is unique).
        """
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown promotion log kind {kind!r}; known: {EVENT_KINDS}")
        now_ns = time.time_ns()
        line = json.dumps({"at": now_ns / 1e9, "kind": kind, **fields}, sort_keys=True)
        self._events.append(now_ns, line)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the registry's lock (re-entrant within one thread of this object).

        Locally an advisory ``fcntl`` lock on ``.lock`` (all processes on the machine, and
        those sharing the filesystem where it supports ``flock``); on object stores a lock of
        this process only (see the module docstring).
        """
        depth = getattr(self._lock_state, "depth", 0)
        if depth:
            self._lock_state.depth = depth + 1
            try:
                yield
            finally:
                self._lock_state.depth -= 1
            return
        with self._file_lock() if self.is_local else _process_lock(self.uri):
            self._lock_state.depth = 1
            try:
                yield
            finally:
                self._lock_state.depth = 0

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        os.makedirs(self._storage.root, exist_ok=True)
        with open(self._storage.path(LOCK), "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def write_trainer_status(self, status: Mapping[str, Any]) -> None:
        """Record what the trainer is doing (``TRAINER``: state, version, cursor, time)."""
        record = {**status, "at": time.time(), "pid": os.getpid()}
        self._storage.write_atomic(TRAINER, json.dumps(record).encode())

    def trainer_status(self) -> dict[str, Any] | None:
        """The trainer's last recorded status, or None when no trainer has run here."""
        try:
            return json.loads(self._storage.read(TRAINER))
        except FileNotFoundError:
            return None

    # ----- reading ---------------------------------------------------------------------------
    def list_versions(self) -> list[int]:
        """Published version numbers, ascending: those with a manifest and its checksum (on an
        object store, a publish that has not finished, or crashed, is not listed)."""
        names = self._storage.published(VERSIONS_DIR, marker=MANIFEST_DIGEST, require=(MANIFEST,))
        return sorted(int(m.group(1)) for n in names if (m := _VERSION_RE.match(n)))

    def latest_version(self) -> int | None:
        """The newest published version, or None when there is none."""
        versions = self.list_versions()
        return versions[-1] if versions else None

    def champion_version(self) -> int | None:
        """The version the champion pointer names, or None before the first promotion.

        A ``CHAMPION`` that cannot be read as a pointer (garbage, a torn object, an I/O error)
        counts as no champion readable: None, with a warning, the problem in
        :attr:`pointer_problems` and ``freshrank_registry_unreadable_total{record="champion"}``.
        Whoever writes the next champion replaces it. ``read_pointer`` raises instead.
        """
        return self._tolerant_pointer(CHAMPION)

    def champion_record(self) -> dict[str, Any] | None:
        """The champion pointer as :meth:`set_champion` wrote it (``version``, ``promoted_at``,
        ``reason``), or None before the first promotion."""
        try:
            raw = self._storage.read(CHAMPION)
            parse_pointer(CHAMPION, raw)
        except (OSError, UnreadablePointer):
            return None  # missing, or unreadable (champion_version() says why)
        return json.loads(raw)

    def pinned_version(self) -> int | None:
        """The version pinned with :meth:`pin`, or None (also for an unreadable ``PINNED``,
        with a warning and a count, as :meth:`champion_version`)."""
        return self._tolerant_pointer(PINNED)

    def read_pointer(self, name: str) -> int | None:
        """The version the pointer file ``name`` (``CHAMPION``, ``PINNED``) names, or None when
        it does not exist; ``UnreadablePointer`` when it exists but is not a pointer record."""
        try:
            raw = self._storage.read(name)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise UnreadablePointer(f"{self.uri}/{name} cannot be read: {exc}") from exc
        return parse_pointer(f"{self.uri}/{name}", raw)

    def _tolerant_pointer(self, name: str) -> int | None:
        try:
            version = self.read_pointer(name)
        except UnreadablePointer as exc:
            problem = str(exc)
            if self.pointer_problems.get(name) != problem:
                _log.warning("%s; treated as no %s", problem, name)
            self.pointer_problems[name] = problem
            count_unreadable(name.lower())
            return None
        self.pointer_problems.pop(name, None)
        return version

    def serving_target(self) -> int | None:
        """What serving replicas should serve: the pinned version if any, else the champion."""
        pinned = self.pinned_version()
        return pinned if pinned is not None else self.champion_version()

    def get(self, version: int) -> VersionInfo:
        """A version's manifest (not verified; see :meth:`verify`)."""
        try:
            raw = self._storage.read(f"{self._version_name(version)}/{MANIFEST}")
        except FileNotFoundError:
            raise KeyError(f"no version {version} in registry {self.uri}") from None
        return VersionInfo(version, self._version_path(version), _parse_manifest(version, raw))

    def promotions(self) -> list[dict[str, Any]]:
        """Every logged event, oldest first.

        Reads ``promotions.jsonl`` (local registries; a line still being appended is left for
        the next call) and the one-object-per-event ``promotions/`` of object stores, merged by
        time. Event objects are immutable, so each is fetched once per ``Registry`` object.
        A line or object that is not a JSON event is skipped (counted in
        :attr:`skipped_log_lines`, ``freshrank_registry_unreadable_total{record="promotion_log"}``
        and logged), never raised: the other events are still read.
        """
        return self._events.read()

    def verify(self, version: int, required: Iterable[str] = ()) -> VersionInfo:
        """Check ``version`` against its manifest and the manifest against its own checksum.

        Raises ``CorruptVersion`` when the manifest is missing its checksum, does not match it,
        is not JSON or names another version; when a file is missing, has another size or fails
        its sha256; or when a ``required`` file is not in the manifest. ``KeyError`` when the
        version does not exist. The same on every filesystem (files are hashed as streamed).
        """
        base = self._version_name(version)
        try:
            raw = self._storage.read(f"{base}/{MANIFEST}")
        except FileNotFoundError:
            raise KeyError(f"no version {version} in registry {self.uri}") from None
        try:
            recorded = self._storage.read(f"{base}/{MANIFEST_DIGEST}")
        except FileNotFoundError:
            raise CorruptVersion(f"version {version}: {MANIFEST_DIGEST} is missing") from None
        if hashlib.sha256(raw).hexdigest().encode() != recorded:
            raise CorruptVersion(f"version {version}: {MANIFEST} fails its sha256 check")
        manifest = _parse_manifest(version, raw)  # the bytes just checked, not a second read
        if manifest.get("version") != version:
            raise CorruptVersion(
                f"version {version}: manifest names version {manifest.get('version')}"
            )
        files = manifest.get("files")
        if not isinstance(files, dict):
            raise CorruptVersion(f"version {version}: manifest lists no files")
        for name in required:
            if name not in files:
                raise CorruptVersion(f"version {version}: manifest lacks required file {name}")
        for name, entry in files.items():
            expected_size, expected_sha = _file_entry(version, name, entry)
            try:
                size = self._storage.size(f"{base}/{name}")
            except FileNotFoundError:
                raise CorruptVersion(f"version {version}: file {name} is missing") from None
            if size != expected_size:
                raise CorruptVersion(
                    f"version {version}: {name} has {size} bytes, manifest says {expected_size}"
                )
            try:
                actual = self._storage.sha256(f"{base}/{name}")
            except FileNotFoundError:
                raise CorruptVersion(f"version {version}: file {name} is missing") from None
            if actual != expected_sha:
                raise CorruptVersion(f"version {version}: {name} fails its sha256 check")
        return VersionInfo(version, self._version_path(version), manifest)

    def load_torch(self, info: VersionInfo, name: str) -> dict[str, Any]:
        """Load a torch file of a verified version without unpickling code.

        The bytes loaded are checked against the manifest's sha256 first (``CorruptVersion``
        when they changed since :meth:`verify`).
        """
        data = self._checked_bytes(info, name)
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)

    def load_npz(self, info: VersionInfo, name: str) -> dict[str, np.ndarray]:
        """Load an npz file of a verified version (object arrays refused; bytes checked
        against the manifest's sha256 first)."""
        return arrays_from_npz(self._checked_bytes(info, name))

    # ----- helpers ---------------------------------------------------------------------------
    def _version_name(self, version: int) -> str:
        return version_dir(version)

    def _version_path(self, version: int) -> Path | str:
        name = self._version_name(version)
        return self._local_root / name if self._local_root is not None else f"{self.uri}/{name}"

    def _checked_bytes(self, info: VersionInfo, name: str) -> bytes:
        files = info.manifest.get("files")
        if not isinstance(files, dict) or name not in files:
            raise CorruptVersion(f"version {info.version}: manifest lists no file {name}")
        _, expected_sha = _file_entry(info.version, name, files[name])
        try:
            data = self._storage.read(f"{self._version_name(info.version)}/{name}")
        except FileNotFoundError:
            raise CorruptVersion(f"version {info.version}: file {name} is missing") from None
        if hashlib.sha256(data).hexdigest() != expected_sha:
            raise CorruptVersion(f"version {info.version}: {name} fails its sha256 check")
        return data


def _parse_manifest(version: int, raw: bytes) -> dict[str, Any]:
    try:
        manifest = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptVersion(f"version {version}: {MANIFEST} is not valid JSON") from exc
    if not isinstance(manifest, dict):
        raise CorruptVersion(f"version {version}: {MANIFEST} is not a JSON object")
    return manifest


def _file_entry(version: int, name: str, entry: Any) -> tuple[int, str]:
    """``(bytes, sha256)`` of a manifest file entry; ``CorruptVersion`` when malformed."""
    if (
        not isinstance(name, str)
        or not name
        or "/" in name
        or name.startswith(".")
        or name in _RESERVED_NAMES
        or not isinstance(entry, dict)
        or not isinstance(entry.get("bytes"), int)
        or not isinstance(entry.get("sha256"), str)
    ):
        raise CorruptVersion(f"version {version}: malformed manifest entry for {name!r}")
    return entry["bytes"], entry["sha256"]


def _process_lock(key: str) -> threading.Lock:
    """One lock per registry location in this process (object stores have no shared lock)."""
    with _PROCESS_LOCKS_GUARD:
        return _PROCESS_LOCKS.setdefault(key, threading.Lock())
