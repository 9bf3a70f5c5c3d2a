"""Storage beyond one machine: a root path or URI on any pyarrow filesystem, and the few
primitives the landing zone and the registry are built from.

A location is a local path (``/data/fr``, ``.freshrank/run``), a ``file://`` URI, ``s3://bucket/
prefix`` (AWS S3, or any S3-compatible store -- MinIO, Ceph, moto -- through
``StorageOptions.s3_endpoint`` or ``$AWS_ENDPOINT_URL_S3`` / ``$AWS_ENDPOINT_URL``),
``gs://bucket/prefix``, or anything else ``pyarrow.fs.FileSystem.from_uri`` knows (``hdfs://``,
``abfs://``). Credentials come from the usual places (environment, instance or workload
identity, ``~/.aws``), never from freshrank's configs.

"Atomic enough": what readers can rely on
-----------------------------------------

Object stores have no rename and no exclusive create, so each primitive says what it promises
on a local filesystem and on an object store; the landing zone and the registry are built so
that these promises suffice.

* ``write_atomic(name, data)`` -- local: temp file, fsync, ``rename`` over the name; object
  store: one PUT (multipart uploads appear on completion). Either way readers see the old bytes
  or the new ones, never a torn file; the last writer wins.
* ``write_new(name, data)`` / ``write_first_free(names, data)`` -- local: ``link`` of one fsynced
  temp file, which fails when the name exists even when writers race, so the first free name of
  ``names`` is taken exclusively. Object store: HEAD then one PUT of the whole object, **not
  exclusive**: pyarrow's ``S3FileSystem`` (26.x) exposes no conditional PUT (``If-None-Match:
  *``, which S3 itself accepts since 2024) and GCS's generation preconditions are not exposed
  either, so two writers racing for one name can both "win" and the later PUT replaces the
  earlier object. What remains: a reader never sees a partial object, and a name is never
  reused by a writer that saw it taken. Keep one writer per name space there (one producer per
  landing prefix; the trainer lease for a registry).
* ``publish_dir(files, target, marker)`` -- local: files and marker in a temp directory, then
  one ``rename``: the directory appears whole. Object store: the files first, the marker
  **last**; a directory exists once its marker does. Readers trust only marked directories
  (``published``); a crash leaves unmarked files that readers ignore, ``sweep`` removes once they
  are old, and a later publish of the same target overwrites.
* ``list(prefix)`` -- a directory listing (local temp files hidden) or a prefix listing, which
  is strongly consistent on S3 (since December 2020) and GCS: a completed write is listed.
* ``move(src, dst)`` -- local: ``rename``, atomic. Object store: server-side copy, then delete,
  **not atomic**: a crash in between leaves the object in both places, so callers treat "in
  both" as "moved" (the landing zone's quarantine does).
* ``delete_dir(name)`` -- local: ``rename`` out of sight (a ``.tmp-`` name), then delete: the
  directory disappears at once. Object store: the marker goes first, then the files, so readers
  stop trusting the directory before any of its files disappear.

Listing times are the store's modification times (S3: one-second resolution).

Nothing here touches the filesystem or the network when imported, and ``Storage`` creates
nothing until the first write.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import shutil
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from freshrank.core.local_files import (
    TMP_PREFIX,
    fsync_dir,
    local_temp_file,
    publish_local_dir,
    write_local_atomic,
)
from freshrank.core.locations import StorageOptions, is_uri, resolve

COMMIT_MARKER = "_COMMITTED"
"""Default marker file of :meth:`Storage.publish_dir`: written last, its presence publishes."""

_TRASH_PREFIX = f"{TMP_PREFIX}trash-"
"""Local directories being deleted (renamed out of sight first)."""


@dataclass(frozen=True)
class StoredFile:
    """One entry of :meth:`Storage.list`: its name under the listed prefix, full path in the
    filesystem, size in bytes (0 for directories), modification time (unix seconds, None for
    directories of object stores) and whether it is a directory (a common prefix)."""

    name: str
    path: str
    size: int
    mtime: float | None
    is_dir: bool


class Storage:
    """A root directory (local) or prefix (object store) and the primitives under it.

    Names passed to the methods are relative to the root, with ``/`` between parts (``"CHAMPION"``,
    ``"versions/v000003"``); ``..`` and absolute names are refused. See the module docstring for
    what each primitive guarantees where.
    """

    def __init__(
        self, location: str | os.PathLike[str], options: StorageOptions | None = None
    ) -> None:
        self.options = options or StorageOptions()
        self.fs, self.root = resolve(location, self.options)
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)

    @classmethod
    def _bound(cls, fs: pafs.FileSystem, root: str, options: StorageOptions) -> Storage:
        self = cls.__new__(cls)
        self.options, self.fs, self.root = options, fs, root
        self.is_local = isinstance(fs, pafs.LocalFileSystem)
        return self

    def __repr__(self) -> str:
        return f"Storage({self.uri!r})"

    @property
    def uri(self) -> str:
        """The root as a path (local) or URI (``s3://bucket/prefix``)."""
        if self.is_local:
            return self.root
        scheme = {"s3": "s3", "gcs": "gs"}.get(self.fs.type_name, self.fs.type_name)
        return f"{scheme}://{self.root}"

    def path(self, name: str = "") -> str:
        """The full filesystem path of ``name`` (for pyarrow readers: ``filesystem=self.fs``)."""
        if not name:
            return self.root
        if name.startswith("/") or "\\" in name:
            raise ValueError(f"storage names are relative, with '/' between parts: {name!r}")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise ValueError(f"storage names may not contain '..': {name!r}")
        return posixpath.join(self.root, *parts) if parts else self.root

    def child(self, name: str) -> Storage:
        """The storage rooted at ``name`` under this one (same filesystem and options)."""
        return Storage._bound(self.fs, self.path(name), self.options)

    # ----------------------------------------------------------------------------------- writing

    def write_atomic(self, name: str, data: bytes) -> None:
        """Replace ``name`` with ``data``; readers see the old bytes or the new, never part."""
        path = self.path(name)
        if self.is_local:
            write_local_atomic(path, data)
        else:
            with self.fs.open_output_stream(path) as out:
                out.write(data)

    def write_new(self, name: str, data: bytes) -> StoredFile:
        """Create ``name`` holding ``data``; ``FileExistsError`` when it exists.

        Exclusive on a local filesystem (``link``); check-then-put on object stores, so keep one
        writer per name space there (see the module docstring). Returns the new file's entry.
        """
        try:
            return self.write_first_free([name], data)
        except FileExistsError:
            raise FileExistsError(f"{self.uri}/{name} exists") from None

    def write_first_free(self, names: Iterable[str], data: bytes) -> StoredFile:
        """Create the first of ``names`` that does not exist yet, holding ``data``.

        ``names`` may be a generator: the next name is asked for only after the previous one
        turned out to be taken (e.g. "the next sequence number" recomputed from a listing).
        Locally the data is written and fsynced once, to a temp file, which is then ``link``-ed
        under each name in turn until one link succeeds: two writers never get the same name.
        On object stores each name is checked (HEAD) and the first free one gets one PUT, which
        is not exclusive (see the module docstring). Returns the entry of the file created
        (its name is relative to its directory, like :meth:`list`'s); ``FileExistsError`` when
        every name was taken.
        """
        if self.is_local:
            return self._local_write_first_free(names, data)
        for name in names:
            path = self.path(name)
            if self._info(path).type != pafs.FileType.NotFound:
                continue
            with self.fs.open_output_stream(path) as out:
                out.write(data)
            info = self._info(path)
            if info.type == pafs.FileType.File:
                return _stored_file(info)
            # moved away already (e.g. quarantined by a fast reader): describe what was written
            return StoredFile(posixpath.basename(path), path, len(data), time.time(), False)
        raise FileExistsError(f"every candidate name under {self.uri} is taken")

    def _local_write_first_free(self, names: Iterable[str], data: bytes) -> StoredFile:
        tmp: str | None = None
        try:
            for name in names:
                path = self.path(name)
                directory = os.path.dirname(path)
                if tmp is None:
                    tmp = local_temp_file(directory, data)
                os.makedirs(directory, exist_ok=True)
                try:
                    os.link(tmp, path)  # FileExistsError when the name is taken, even in a race
                except FileExistsError:
                    continue
                st = os.stat(tmp)  # same inode as the published file, which a reader may move
                fsync_dir(directory)
                return StoredFile(
                    os.path.basename(path), path, st.st_size, st.st_mtime_ns / 1e9, False
                )
            raise FileExistsError(f"every candidate name under {self.uri} is taken")
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)

    def publish_dir(
        self, files: Mapping[str, bytes], target: str, marker: str = COMMIT_MARKER
    ) -> None:
        """Publish ``files`` (name -> bytes) as directory ``target``, with ``marker`` last.

        ``marker`` may be one of ``files`` (e.g. a manifest, written last with its bytes) or a
        separate name (written last, empty). Raises ``FileExistsError`` when ``target`` is
        already published (locally: when it exists at all). File names are single path parts.
        """
        for name in (*files, marker):
            if not name or "/" in name or name in (".", "..") or name.startswith(TMP_PREFIX):
                raise ValueError(f"bad file name {name!r} for publish_dir")
        ordered = [(n, d) for n, d in files.items() if n != marker]
        ordered.append((marker, files.get(marker, b"")))
        final = self.path(target)
        if self.is_local:
            publish_local_dir(final, ordered)
            return
        if self._info(posixpath.join(final, marker)).type != pafs.FileType.NotFound:
            raise FileExistsError(f"{self.uri}/{target} is already published")
        for name, data in ordered:  # the marker is the last PUT
            with self.fs.open_output_stream(posixpath.join(final, name)) as out:
                out.write(data)

    def is_published(self, target: str, marker: str = COMMIT_MARKER) -> bool:
        """Whether ``target`` was published by :meth:`publish_dir` (its marker exists)."""
        return self.exists(posixpath.join(target, marker))

    def published(
        self, prefix: str = "", marker: str = COMMIT_MARKER, require: Iterable[str] = ()
    ) -> list[str]:
        """Names of the published directories directly under ``prefix``, sorted.

        A directory counts when it holds ``marker`` and every file named in ``require``.
        Locally: one listing and one ``stat`` per file asked about; object stores: one
        recursive prefix listing (no request per directory).
        """
        need = {marker, *require}
        if self.is_local:
            dirs = [e for e in self.list(prefix) if e.is_dir]
            paths = [posixpath.join(e.path, n) for e in dirs for n in sorted(need)]
            infos = iter(self.fs.get_file_info(paths)) if paths else iter(())
            out = []
            for entry in dirs:
                found = [next(infos).type == pafs.FileType.File for _ in need]
                if all(found):
                    out.append(entry.name)
            return out
        base = self.path(prefix)
        contents: dict[str, set[str]] = {}
        for info in self._tree(base):
            parts = info.path[len(base) + 1 :].split("/")
            if len(parts) == 2 and info.type == pafs.FileType.File:
                contents.setdefault(parts[0], set()).add(parts[1])
        return sorted(d for d, names in contents.items() if need <= names)

    def sweep(
        self, prefix: str = "", marker: str = COMMIT_MARKER, min_age_s: float = 3600.0
    ) -> int:
        """Remove what crashed writers left under ``prefix`` once it is ``min_age_s`` old.

        Locally: temp files and directories (``.tmp-*``, whatever their content). Object
        stores: directories without ``marker`` whose newest object is that old (a publish in
        flight is younger). Returns how many entries were removed.
        """
        now, removed = time.time(), 0
        if self.is_local:
            for entry in self.list(prefix, include_temp=True):
                if not entry.name.startswith(TMP_PREFIX):
                    continue
                trash = entry.name.startswith(_TRASH_PREFIX)
                if not trash and (entry.mtime is None or now - entry.mtime < min_age_s):
                    continue
                if entry.is_dir:
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                removed += 1
            return removed
        base = self.path(prefix)
        newest: dict[str, float] = {}
        marked: set[str] = set()
        for info in self._tree(base):
            parts = info.path[len(base) + 1 :].split("/")
            if len(parts) < 2 or info.type != pafs.FileType.File:
                continue
            if len(parts) == 2 and parts[1] == marker:
                marked.add(parts[0])
            mtime = (info.mtime_ns or 0) / 1e9
            newest[parts[0]] = max(newest.get(parts[0], 0.0), mtime)
        for name, mtime in sorted(newest.items()):
            if name not in marked and now - mtime >= min_age_s:
                self.delete_dir(posixpath.join(prefix, name) if prefix else name, marker=None)
                removed += 1
        return removed

    def source(self, names: Iterable[str]) -> tuple[list[str], pafs.FileSystem | None]:
        """What a pyarrow or Ray Data reader needs to read ``names`` (relative to the root).

        Returns ``(paths, filesystem)`` for ``ray.data.read_parquet(paths, filesystem=fs)`` or
        ``pyarrow.parquet.read_table(path, filesystem=fs)``: local files as absolute paths and
        ``None`` (the reader infers the local filesystem, as for any path), object stores as
        paths inside this filesystem (``bucket/prefix/name``, no scheme) and the filesystem,
        endpoint included (it pickles, so Ray workers get it too).
        """
        paths = [self.path(name) for name in names]
        return paths, (None if self.is_local else self.fs)

    # ----------------------------------------------------------------------------------- reading

    def list(self, prefix: str = "", include_temp: bool = False) -> list[StoredFile]:
        """Entries directly under ``prefix``, sorted by name; ``[]`` when there is none.

        Local temp files and directories (``.tmp-*``, writes in flight) are left out unless
        ``include_temp`` (for cleaning up after crashed writers).
        """
        base = self.path(prefix)
        selector = pafs.FileSelector(base, recursive=False, allow_not_found=True)
        for attempt in range(3):
            try:
                infos = self.fs.get_file_info(selector)
                break
            except (FileNotFoundError, NotADirectoryError):
                # the prefix is gone or a file, or (locally) an entry vanished mid-listing
                if attempt == 2 or self._info(base).type != pafs.FileType.Directory:
                    return []
        out = []
        for info in infos:
            name = info.base_name
            if not name or (name.startswith(TMP_PREFIX) and not include_temp):
                continue
            out.append(_stored_file(info))
        out.sort(key=lambda e: e.name)
        return out

    def stat(self, name: str) -> StoredFile:
        """Size and modification time of ``name``; ``FileNotFoundError`` when it does not exist."""
        info = self._info(self.path(name))
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"{self.uri}/{name} does not exist")
        return _stored_file(info)

    def read(self, name: str) -> bytes:
        """The bytes of ``name``; ``FileNotFoundError`` when it does not exist."""
        path = self.path(name)
        try:
            with self.fs.open_input_stream(path) as stream:
                return bytes(stream.read())
        except FileNotFoundError:
            raise
        except OSError as exc:  # some stores raise a plain OSError for a missing key
            if self._info(path).type == pafs.FileType.NotFound:
                raise FileNotFoundError(f"{self.uri}/{name} does not exist") from exc
            raise

    def open_input(self, name: str) -> Any:
        """A random-access pyarrow file for ``name`` (e.g. for ``pyarrow.parquet.read_table``)."""
        return self.fs.open_input_file(self.path(name))

    def exists(self, name: str) -> bool:
        """Whether ``name`` exists (a file, or a directory / non-empty prefix)."""
        return self._info(self.path(name)).type != pafs.FileType.NotFound

    def size(self, name: str) -> int:
        """Size of file ``name`` in bytes; ``FileNotFoundError`` when it does not exist."""
        info = self._info(self.path(name))
        if info.type != pafs.FileType.File:
            raise FileNotFoundError(f"{self.uri}/{name} is not a file")
        return int(info.size or 0)

    # ------------------------------------------------------------------------ moving, deleting

    def move(self, src: str, dst: str) -> None:
        """Move file ``src`` to ``dst`` (e.g. into a quarantine).

        ``FileNotFoundError`` when ``src`` is missing, ``FileExistsError`` when ``dst`` exists.
        Atomic locally (``rename``); copy then delete on object stores, so a crash can leave the
        file in both places (see the module docstring).
        """
        src_path, dst_path = self.path(src), self.path(dst)
        if self._info(dst_path).type != pafs.FileType.NotFound:
            raise FileExistsError(f"{self.uri}/{dst} exists")
        if self.is_local:
            os.makedirs(os.path.dirname(dst_path), exist_ok=True)
            os.rename(src_path, dst_path)  # raises FileNotFoundError when src is gone
            fsync_dir(os.path.dirname(dst_path))
            fsync_dir(os.path.dirname(src_path))
            return
        if self._info(src_path).type != pafs.FileType.File:
            raise FileNotFoundError(f"{self.uri}/{src} does not exist")
        try:
            self.fs.copy_file(src_path, dst_path)  # server-side copy
        except OSError as exc:  # another mover deleted it meanwhile: say so, like rename does
            if self._info(src_path).type == pafs.FileType.NotFound:
                raise FileNotFoundError(f"{self.uri}/{src} does not exist") from exc
            raise
        self.delete(src)  # a concurrent mover may have deleted it already: that is fine

    def delete(self, name: str, missing_ok: bool = True) -> None:
        """Delete file ``name`` (a missing one is fine unless ``missing_ok`` is False)."""
        path = self.path(name)
        try:
            self.fs.delete_file(path)
        except FileNotFoundError:
            if not missing_ok:
                raise
        except OSError:
            if self._info(path).type != pafs.FileType.NotFound or not missing_ok:
                raise

    def delete_dir(self, name: str, marker: str | None = COMMIT_MARKER) -> None:
        """Delete directory ``name`` and everything in it (missing is fine).

        Locally the directory is first renamed out of sight (a ``.tmp-`` name next to it), so
        it disappears at once; a crash before the delete leaves that for :meth:`sweep`. On
        object stores, with a ``marker``, the marker goes first, so readers stop trusting the
        directory before any of its files disappear.
        """
        path = self.path(name)
        if self.is_local:
            trash = os.path.join(os.path.dirname(path), f"{_TRASH_PREFIX}{uuid.uuid4().hex}")
            try:
                os.rename(path, trash)
            except FileNotFoundError:
                return
            fsync_dir(os.path.dirname(path))
            shutil.rmtree(trash, ignore_errors=True)
            return
        if self._info(path).type == pafs.FileType.NotFound:
            return
        if marker is not None:
            self.delete(posixpath.join(name, marker))
        self.fs.delete_dir(path)

    def sha256(self, name: str) -> str:
        """Hex SHA-256 of file ``name``, read in 1 MiB chunks; ``FileNotFoundError`` if missing."""
        h = hashlib.sha256()
        try:
            stream = self.fs.open_input_stream(self.path(name))
        except FileNotFoundError:
            raise
        except OSError as exc:
            if not self.exists(name):
                raise FileNotFoundError(f"{self.uri}/{name} does not exist") from exc
            raise
        with stream:
            while chunk := stream.read(1 << 20):
                h.update(chunk)
        return h.hexdigest()

    def _info(self, path: str) -> pafs.FileInfo:
        return self.fs.get_file_info(path)

    def _tree(self, base: str) -> list[pafs.FileInfo]:
        """Every entry under ``base``, recursively (``[]`` when there is none)."""
        selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        try:
            return list(self.fs.get_file_info(selector))
        except (FileNotFoundError, NotADirectoryError):
            return []


def _stored_file(info: pafs.FileInfo) -> StoredFile:
    is_dir = info.type == pafs.FileType.Directory
    mtime_ns = info.mtime_ns
    return StoredFile(
        name=info.base_name,
        path=info.path,
        size=0 if is_dir else int(info.size or 0),
        mtime=None if mtime_ns is None else mtime_ns / 1e9,
        is_dir=is_dir,
    )


class StorageBacked:
    """What the landing zone and the registry share: a :class:`Storage` at a root that is a
    local path or a URI, and the local directory behind it when there is one."""

    _what = "this location"
    """How error messages name the subclass (``"the landing zone"``)."""

    def __init__(self, root: str | os.PathLike[str], options: StorageOptions | None = None) -> None:
        self._storage = Storage(root, options)
        local = Path(self._storage.root) if is_uri(root) else Path(root)
        self._local_root: Path | None = local if self._storage.is_local else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"

    @property
    def storage(self) -> Storage:
        """The storage it lives on (filesystem, root path, primitives)."""
        return self._storage

    @property
    def uri(self) -> str:
        """The root as a local path or a URI (``s3://bucket/prefix``)."""
        return self._storage.uri

    @property
    def is_local(self) -> bool:
        """Whether it is on a local filesystem (then :attr:`root` is a ``Path``)."""
        return self._storage.is_local

    @property
    def root(self) -> Path:
        """The local directory (``ValueError`` on an object store: use :attr:`uri` or
        :attr:`storage` there)."""
        if self._local_root is None:
            raise ValueError(
                f"{self._what} {self.uri} is not a local directory: use .uri or .storage for it"
            )
        return self._local_root
