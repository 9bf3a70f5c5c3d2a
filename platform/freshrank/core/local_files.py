"""Local-filesystem writes that readers in other processes can rely on: a file replaced whole
(temp file, fsync, rename, fsync of the directory) and a directory published whole (written
under a temporary name, then renamed). `freshrank.core.storage` builds its local primitives on
these.

>>> import pathlib, tempfile
>>> target = pathlib.Path(tempfile.mkdtemp()) / "sub" / "POINTER"
>>> write_local_atomic(target, b'{"version": 3}')
>>> target.read_bytes(), [p.name for p in target.parent.iterdir()]
(b'{"version": 3}', ['POINTER'])
"""

from __future__ import annotations

import os
import tempfile
import uuid

TMP_PREFIX = ".tmp-"
"""Names of in-flight local writes; ``Storage.list`` never shows them."""


def write_local_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace the local file ``path`` with ``data``: temp file in the same directory, fsync,
    ``rename`` over, fsync the directory (missing parent directories are created).

    The one implementation behind ``Storage.write_atomic`` on local filesystems, for
    callers that hold a plain path.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = local_temp_file(directory, data)
    try:
        os.replace(tmp, path)
        fsync_dir(directory)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def local_temp_file(directory: str, data: bytes) -> str:
    """A fsynced ``.tmp-*`` file holding ``data`` in ``directory`` (created if needed)."""
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def publish_local_dir(final: str, ordered: list[tuple[str, bytes]]) -> None:
    """Write ``ordered`` (name, bytes) into a fsynced temporary sibling directory, then rename it
    to ``final`` whole; ``FileExistsError`` when ``final`` exists (another writer was first)."""
    parent = os.path.dirname(final)
    if os.path.lexists(final):
        raise FileExistsError(f"{final} exists")
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f"{TMP_PREFIX}{uuid.uuid4().hex}")
    os.mkdir(tmp)
    try:
        for name, data in ordered:
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        fsync_dir(tmp)
        try:
            os.rename(tmp, final)
        except OSError as exc:  # ENOTEMPTY / EEXIST: another writer published it first
            if os.path.lexists(final):
                raise FileExistsError(f"{final} exists") from exc
            raise
        fsync_dir(parent)
    finally:
        if os.path.isdir(tmp):
            for name in os.listdir(tmp):
                os.unlink(os.path.join(tmp, name))
            os.rmdir(tmp)


def fsync_dir(directory: str) -> None:
    """Make a directory's entries durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


__all__ = ["TMP_PREFIX", "fsync_dir", "local_temp_file", "publish_local_dir", "write_local_atomic"]
