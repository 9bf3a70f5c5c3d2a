"""The landing zone: a local directory of sequence-numbered parquet event shards.

Layout of a landing zone rooted at ``root``::

    root/shard-000000000001.parquet      published shards (seq = 1, 2, ...)
    root/.tmp-*                          files being written; every lister ignores them
    root/_PRODUCER_DONE                  written once the producer has finished
    root/quarantine/shard-....parquet    shards that failed validation
    root/quarantine/shard-....parquet.reason.txt

A shard is written to a temp file in ``root``, fsynced, then published with ``os.link``, which
fails when the name is taken: two writers can never overwrite each other's shard, and a reader
never sees a half-written file. Sequence numbers are never reused, quarantined ones included, so
a reader's cursor ("every shard with seq > n is new") stays valid.

Nothing is created on disk until the first write.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from freshrank.events.schema import conform, drop_invalid_rows, schema_problem

SHARD_PATTERN: re.Pattern[str] = re.compile(r"^shard-(\d{12})\.parquet$")
"""File names of published shards; group 1 is the sequence number."""

QUARANTINE_DIR = "quarantine"
DONE_MARKER = "_PRODUCER_DONE"
_TMP_PREFIX = ".tmp-"
_REASON_SUFFIX = ".reason.txt"
_QUARANTINED_PATTERN = re.compile(r"^shard-(\d{12})\.parquet(?:\.dup\d+)?$")
_MAX_SEQ = 10**12 - 1


class InvalidShard(Exception):
    """A shard that cannot be used: not parquet, or not an event schema.

    ``reason`` says what is wrong, in words fit for the quarantine reason file.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ShardRef:
    """A published shard: its sequence number, path, landing time (mtime, unix s) and size."""

    seq: int
    path: str
    landed_at: float
    num_bytes: int

    @property
    def name(self) -> str:
        """The shard's file name, e.g. ``shard-000000000007.parquet``."""
        return os.path.basename(self.path)


@dataclass(frozen=True)
class ShardRead:
    """A validated shard: the rows that have every required field, and what was dropped.

    ``min_event_time``/``max_event_time`` are UTC datetimes over the kept rows, or ``None`` when
    no row was kept (an empty shard, or every row invalid).
    """

    ref: ShardRef
    table: pa.Table
    rows_total: int
    rows_dropped: int
    min_event_time: datetime | None
    max_event_time: datetime | None

    @property
    def rows_kept(self) -> int:
        """Rows in ``table`` (``rows_total - rows_dropped``)."""
        return self.table.num_rows


def shard_name(seq: int) -> str:
    """File name of the shard with sequence number ``seq``.

    >>> shard_name(7)
    'shard-000000000007.parquet'
    """
    _check_seq(seq)
    return f"shard-{seq:012d}.parquet"


class LandingZone:
    """Sequence-numbered parquet event shards in a local directory (see the module docstring)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self._root = Path(root)

    def __repr__(self) -> str:
        return f"LandingZone({str(self._root)!r})"

    @property
    def root(self) -> Path:
        """The directory that holds the shards."""
        return self._root

    @property
    def quarantine_dir(self) -> Path:
        """The directory that holds quarantined shards and their reason files."""
        return self._root / QUARANTINE_DIR

    # ----------------------------------------------------------------------------------- writing

    def write_shard(self, table: pa.Table, seq: int | None = None) -> ShardRef:
        """Conform ``table`` to the file schema and publish it as a new shard.

        With ``seq=None`` the shard gets the next free sequence number (1 + the largest seen in
        the zone, quarantine included), retrying with the next one if another writer takes it
        first. With an explicit ``seq`` a taken number raises ``FileExistsError``.

        Raises ``ValueError`` when ``table`` is not an event table. Empty tables are allowed.
        """
        if not isinstance(table, pa.Table):
            raise ValueError(
                f"write_shard needs a pyarrow.Table, got {type(table).__name__}; "
                "build one with pyarrow.table(...) or Simulator.generate()"
            )
        conformed = conform(table)  # raises ValueError naming the problem

        def write(f: BinaryIO) -> None:
            pq.write_table(conformed, f)

        return self._publish(write, seq)

    def write_raw(self, data: bytes, seq: int | None = None) -> ShardRef:
        """Publish ``data`` as a shard without any check (for fault injection and tests).

        Readers treat such a file like any other shard: if it is not a valid event shard it is
        quarantined by :meth:`validate`.
        """

        def write(f: BinaryIO) -> None:
            f.write(data)

        return self._publish(write, seq)

    def _publish(self, write: Callable[[BinaryIO], None], seq: int | None) -> ShardRef:
        """Write via ``write`` into a temp file, fsync, and link it under a free shard name."""
        if seq is not None:
            _check_seq(seq)
            if (self.quarantine_dir / shard_name(seq)).exists():
                raise FileExistsError(
                    f"seq {seq} was already used by a shard now in quarantine; "
                    "sequence numbers are never reused, pass seq=None to take the next free one"
                )
        self._root.mkdir(parents=True, exist_ok=True)
        tmp = self._root / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            target = seq if seq is not None else self._next_seq()
            while True:
                final = self._root / shard_name(target)
                try:
                    os.link(tmp, final)
                    break
                except FileExistsError:
                    if seq is not None:
                        raise FileExistsError(
                            f"shard seq {seq} already exists at {final}; "
                            "pass seq=None to take the next free one"
                        ) from None
                    target = max(target + 1, self._next_seq())
            st = tmp.stat()  # same inode as the published file, which a reader may move
            _fsync_dir(self._root)
        finally:
            tmp.unlink(missing_ok=True)
        return ShardRef(seq=target, path=str(final), landed_at=st.st_mtime, num_bytes=st.st_size)

    def _next_seq(self) -> int:
        """1 + the largest sequence number in the zone or its quarantine (1 when empty)."""
        # Root first, then quarantine: a shard being quarantined meanwhile is seen in one of them.
        seqs = [seq for seq, _ in _scan(self._root, SHARD_PATTERN)]
        seqs += [seq for seq, _ in _scan(self.quarantine_dir, _QUARANTINED_PATTERN)]
        return max(seqs, default=0) + 1

    # ----------------------------------------------------------------------------------- reading

    def list_shards(self, after: int = 0) -> list[ShardRef]:
        """Published shards with ``seq > after``, sorted by seq (temp and other files ignored)."""
        refs = []
        for seq, path in _scan(self._root, SHARD_PATTERN):
            if seq <= after:
                continue
            try:
                st = path.stat()
            except FileNotFoundError:  # quarantined since the directory was listed
                continue
            refs.append(
                ShardRef(seq=seq, path=str(path), landed_at=st.st_mtime, num_bytes=st.st_size)
            )
        refs.sort(key=lambda r: r.seq)
        return refs

    def read_shard(self, ref: ShardRef) -> ShardRead:
        """Read and check a shard; drop (and count) rows missing a required field.

        Raises ``InvalidShard`` when the file is not readable parquet or its schema is not the
        event schema, and ``FileNotFoundError`` when the file is gone (e.g. quarantined).
        """
        with open(ref.path, "rb") as f:
            try:
                table = pq.read_table(f)
            except Exception as exc:  # pyarrow raises several types for a corrupt file
                raise InvalidShard(f"not readable as parquet: {exc}") from exc
        problem = schema_problem(table.schema)
        if problem is not None:
            raise InvalidShard(f"wrong schema: {problem}")
        rows_total = table.num_rows
        kept, dropped = drop_invalid_rows(conform(table))
        lo, hi = _time_range(kept)
        return ShardRead(
            ref=ref,
            table=kept,
            rows_total=rows_total,
            rows_dropped=dropped,
            min_event_time=lo,
            max_event_time=hi,
        )

    def validate(self, ref: ShardRef) -> ShardRead | None:
        """:meth:`read_shard`, quarantining an invalid shard and returning ``None`` for it.

        Also returns ``None`` when another reader has quarantined the shard meanwhile.
        """
        try:
            return self.read_shard(ref)
        except InvalidShard as exc:
            self.quarantine(ref, exc.reason)
            return None
        except FileNotFoundError:
            if (self.quarantine_dir / ref.name).exists():
                return None
            raise

    # -------------------------------------------------------------------------------- quarantine

    def quarantine(self, ref: ShardRef, reason: str) -> str:
        """Move a shard into ``quarantine/`` with a reason file; return its new path.

        The reason file (``<name>.reason.txt``: reason and UTC time) is written first, then the
        shard is renamed atomically. If another reader quarantined the shard first, the path it
        was moved to is returned.
        """
        qdir = self.quarantine_dir
        qdir.mkdir(parents=True, exist_ok=True)
        dest = qdir / ref.name
        n = 0
        while dest.exists():
            if not os.path.exists(ref.path):  # someone else moved it already
                return str(dest)
            n += 1
            dest = qdir / f"{ref.name}.dup{n}"
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        text = f"{reason}\nquarantined_at: {stamp}\nshard: {ref.name}\n"
        _write_atomic(qdir / f"{dest.name}{_REASON_SUFFIX}", text.encode())
        try:
            os.rename(ref.path, dest)
        except FileNotFoundError:
            if dest.exists():
                return str(dest)
            raise
        _fsync_dir(qdir)
        _fsync_dir(self._root)
        return str(dest)

    def quarantined(self) -> list[tuple[str, str]]:
        """``(file name, reason)`` of each quarantined shard, sorted by name.

        The reason is the first line of its reason file (``""`` if that file is missing).
        """
        out = []
        for _, path in _scan(self.quarantine_dir, _QUARANTINED_PATTERN):
            reason_file = path.with_name(path.name + _REASON_SUFFIX)
            try:
                reason = reason_file.read_text().split("\n", 1)[0]
            except FileNotFoundError:
                reason = ""
            out.append((path.name, reason))
        out.sort()
        return out

    # ------------------------------------------------------------------------- producer marker

    def mark_done(self) -> None:
        """Say that the producer has finished (writes ``_PRODUCER_DONE`` atomically)."""
        self._root.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).isoformat()
        _write_atomic(self._root / DONE_MARKER, f"{stamp}\n".encode())

    def is_done(self) -> bool:
        """Whether the producer has said it has finished."""
        return (self._root / DONE_MARKER).exists()

    def clear_done(self) -> None:
        """Remove the completion marker (a producer starting again on this zone calls it)."""
        (self._root / DONE_MARKER).unlink(missing_ok=True)


def _check_seq(seq: int) -> None:
    if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= _MAX_SEQ:
        raise ValueError(f"shard seq must be an int in [1, {_MAX_SEQ}], got {seq!r}")


def _scan(directory: Path, pattern: re.Pattern[str]) -> list[tuple[int, Path]]:
    """``(seq, path)`` of the entries of ``directory`` whose names match ``pattern``."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        m = pattern.match(name)
        if m is not None:
            out.append((int(m.group(1)), directory / name))
    return out


def _time_range(table: pa.Table) -> tuple[datetime | None, datetime | None]:
    """Min and max ``event_time`` of ``table`` as UTC datetimes (``None`` when no rows)."""
    if table.num_rows == 0:
        return None, None
    mm = pc.min_max(table.column("event_time"))
    lo, hi = mm["min"].as_py(), mm["max"].as_py()
    if lo is None or hi is None:
        return None, None
    return lo.astimezone(timezone.utc), hi.astimezone(timezone.utc)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via an fsynced temp file in the same directory and a rename."""
    tmp = path.with_name(f"{_TMP_PREFIX}{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
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
