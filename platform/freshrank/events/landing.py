"""The landing zone: sequence-numbered parquet event shards under a directory or prefix.

A landing zone lives on any filesystem :mod:`freshrank.core.storage` resolves: a local path,
``file://``, ``s3://bucket/prefix`` (AWS or any S3-compatible store), ``gs://bucket/prefix``.
Its layout under the root::

    root/shard-000000000001.parquet      published shards (seq = 1, 2, ...)
    root/.tmp-*                          local files being written; every lister ignores them
    root/_PRODUCER_DONE                  written once the producer has finished
    root/quarantine/shard-....parquet    shards that failed validation
    root/quarantine/shard-....parquet.reason.txt

Publishing a shard (:meth:`Storage.write_first_free`):

* locally, the shard is written to a temp file in ``root``, fsynced, then published with
  ``os.link``, which fails when the name is taken: two writers can never overwrite each other's
  shard or share a sequence number, and a reader never sees a half-written file;
* on an object store, the complete shard is one PUT under the first free name (HEAD first). A
  reader never sees a partial object, but the check and the PUT are not one step (pyarrow
  offers no conditional ``If-None-Match`` PUT), so keep **one producer per landing prefix**
  there; two producers racing for one sequence number could both write it, the later PUT
  winning.

Sequence numbers are never reused, quarantined ones included, so a reader's cursor ("every shard
with seq > n is new") stays valid. Quarantine is a ``rename`` locally and copy-then-delete on an
object store; a crash between the two leaves the shard in both places, which the next
:meth:`LandingZone.quarantine` of it completes instead of quarantining a second copy.

What a reader promises about the rows (the trainer's shard feed, ``freshrank.learn.feed``):

* every row read ends up in exactly one count of the version that covers it (manifest
  ``window_events``, ``rows_dropped`` for a missing required field, ``rows_out_of_time``,
  ``rows_duplicate``; a shard that is not a valid event shard is quarantined with its reason);
* **de-duplication** is by event id: a row whose ``event_id`` was already trained within the
  horizon (the last ``TrainConfig.dedup_horizon_events`` trained ids, kept in every version,
  so a restart keeps them), or that an earlier row of the same window has, is dropped and
  counted as a duplicate. So the same shard landed twice (same event ids), or a producer's
  retried write, is trained once as long as fewer than that many events were trained between
  the two landings; the landing zone itself keeps both files (sequence numbers are never
  reused);
* **time**: a row whose ``event_time`` is later than the reader's clock plus
  ``TrainConfig.max_future_skew_s`` (or older than ``max_past_age_s``, when set) is dropped and
  counted as out of time, so a clock gone wrong never moves the model's watermark past now.

Nothing is created until the first write.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from freshrank.core.storage import StorageBacked, StoredFile
from freshrank.events.schema import conform, drop_invalid_rows, schema_problem

SHARD_PATTERN: re.Pattern[str] = re.compile(r"^shard-(\d{12})\.parquet$")
"""File names of published shards; group 1 is the sequence number."""

QUARANTINE_DIR = "quarantine"
DONE_MARKER = "_PRODUCER_DONE"
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


class LandingZone(StorageBacked):
    """Sequence-numbered parquet event shards under a directory or object-store prefix (see the
    module docstring). ``root`` is a local path or a URI (``s3://bucket/landing``);
    ``options`` says how to reach an S3-compatible endpoint the URI cannot name."""

    _what = "the landing zone"

    @property
    def quarantine_dir(self) -> Path:
        """The local directory that holds quarantined shards and their reason files."""
        return self.root / QUARANTINE_DIR

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
        sink = pa.BufferOutputStream()
        pq.write_table(conformed, sink)
        return self._publish(sink.getvalue().to_pybytes(), seq)

    def write_raw(self, data: bytes, seq: int | None = None) -> ShardRef:
        """Publish ``data`` as a shard without any check (for fault injection and tests).

        Readers treat such a file like any other shard: if it is not a valid event shard it is
        quarantined by :meth:`validate`.
        """
        return self._publish(bytes(data), seq)

    def _publish(self, data: bytes, seq: int | None) -> ShardRef:
        """Publish ``data`` under the first free shard name (see the module docstring)."""
        if seq is not None:
            _check_seq(seq)
            if self._storage.exists(f"{QUARANTINE_DIR}/{shard_name(seq)}"):
                raise FileExistsError(
                    f"seq {seq} was already used by a shard now in quarantine; "
                    "sequence numbers are never reused, pass seq=None to take the next free one"
                )

        def candidates() -> Iterator[str]:
            target = seq if seq is not None else self._next_seq()
            while True:
                yield shard_name(target)
                if seq is not None:
                    return
                target = max(target + 1, self._next_seq())

        try:
            entry = self._storage.write_first_free(candidates(), data)
        except FileExistsError:
            if seq is None:  # pragma: no cover - the candidates never run out
                raise
            raise FileExistsError(
                f"shard seq {seq} already exists at {self._ref_path(shard_name(seq))}; "
                "pass seq=None to take the next free one"
            ) from None
        return self._ref(entry)

    def next_seq(self) -> int:
        """1 + the largest sequence number in the zone or its quarantine (1 when empty): the
        number the next published shard gets, unless another writer takes it first."""
        return self._next_seq()

    def _next_seq(self) -> int:
        """1 + the largest sequence number in the zone or its quarantine (1 when empty)."""
        # Root first, then quarantine: a shard being quarantined meanwhile is seen in one of them.
        seqs = [seq for seq, _ in self._scan("", SHARD_PATTERN)]
        seqs += [seq for seq, _ in self._scan(QUARANTINE_DIR, _QUARANTINED_PATTERN)]
        return max(seqs, default=0) + 1

    # ----------------------------------------------------------------------------------- reading

    def list_shards(self, after: int = 0) -> list[ShardRef]:
        """Published shards with ``seq > after``, sorted by seq (temp and other files ignored).

        Landing times are the store's modification times (S3: one-second resolution).
        """
        refs = [self._ref(entry) for seq, entry in self._scan("", SHARD_PATTERN) if seq > after]
        refs.sort(key=lambda r: r.seq)
        return refs

    def read_shard(self, ref: ShardRef) -> ShardRead:
        """Read and check a shard; drop (and count) rows missing a required field.

        Raises ``InvalidShard`` when the file is not readable parquet or its schema is not the
        event schema, and ``FileNotFoundError`` when the file is gone (e.g. quarantined). An
        I/O error of the store itself (a network failure) is raised as it is, never taken for
        a bad shard.
        """
        table = self.read_events(ref)
        rows_total = table.num_rows
        kept, dropped = drop_invalid_rows(table)
        lo, hi = _time_range(kept)
        return ShardRead(
            ref=ref,
            table=kept,
            rows_total=rows_total,
            rows_dropped=dropped,
            min_event_time=lo,
            max_event_time=hi,
        )

    def read_events(self, ref: ShardRef) -> pa.Table:
        """Every row of a shard, in file order, conformed to the file schema (nothing dropped:
        the shard feed decides row by row what is trained, see ``events.selection``).

        Raises like :meth:`read_shard`.
        """
        data = self._storage.read(self._name_of(ref))  # whole object: I/O errors raise here
        try:
            table = pq.read_table(pa.BufferReader(data))
        except Exception as exc:  # pyarrow raises several types for a corrupt file
            raise InvalidShard(f"not readable as parquet: {exc}") from exc
        problem = schema_problem(table.schema)
        if problem is not None:
            raise InvalidShard(f"wrong schema: {problem}")
        return conform(table)

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
            if self._storage.exists(f"{QUARANTINE_DIR}/{ref.name}"):
                return None
            raise

    def read_source(self, paths: Iterable[str]) -> tuple[list[str], pafs.FileSystem | None]:
        """What Ray Data needs to read shards of this zone from any filesystem.

        ``paths`` are :attr:`ShardRef.path` values (or bare shard names). Returns
        ``(paths, filesystem)`` for ``ray.data.read_parquet(paths, filesystem=filesystem)``:
        locally the paths unchanged and ``None`` (Ray infers the local filesystem, as before);
        on an object store, paths inside the bucket (``bucket/prefix/shard-...parquet``) and the
        zone's pyarrow filesystem (endpoint included; it pickles to Ray's workers).
        ``ValueError`` for a path outside the zone.
        """
        paths = list(paths)
        names = [self._name_of_path(p) for p in paths]  # ValueError for anything else
        if self.is_local:
            pairs = zip(paths, names, strict=True)
            return [p if p != n else self._ref_path(n) for p, n in pairs], None
        return self._storage.source(names)

    # -------------------------------------------------------------------------------- quarantine

    def quarantine(self, ref: ShardRef, reason: str) -> str:
        """Move a shard into ``quarantine/`` with a reason file; return its new path.

        The reason file (``<name>.reason.txt``: reason and UTC time) is written first, then the
        shard is moved (a ``rename`` locally; copy then delete on an object store). If another
        reader quarantined the shard first, the path it was moved to is returned; on an object
        store a shard found in both places (a move interrupted between copy and delete) of the
        same size is taken as moved: its original is deleted.
        """
        name = self._name_of(ref)
        q = QUARANTINE_DIR
        dest = f"{q}/{ref.name}"
        n = 0
        while self._storage.exists(dest):
            try:
                src = self._storage.stat(name)
            except FileNotFoundError:  # someone else moved it already
                return self._ref_path(dest)
            if n == 0 and not self.is_local and src.size == self._storage.size(dest):
                self._storage.delete(name)  # finish an interrupted copy-then-delete move
                return self._ref_path(dest)
            n += 1
            dest = f"{q}/{ref.name}.dup{n}"
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        text = f"{reason}\nquarantined_at: {stamp}\nshard: {ref.name}\n"
        self._storage.write_atomic(f"{dest}{_REASON_SUFFIX}", text.encode())
        try:
            self._storage.move(name, dest)
        except FileNotFoundError:
            if self._storage.exists(dest):
                return self._ref_path(dest)
            raise
        except FileExistsError:  # another reader's move landed first
            return self._ref_path(dest)
        return self._ref_path(dest)

    def quarantined(self) -> list[tuple[str, str]]:
        """``(file name, reason)`` of each quarantined shard, sorted by name.

        The reason is the first line of its reason file (``""`` if that file is missing).
        """
        out = []
        for _, entry in self._scan(QUARANTINE_DIR, _QUARANTINED_PATTERN):
            try:
                text = self._storage.read(f"{QUARANTINE_DIR}/{entry.name}{_REASON_SUFFIX}")
                reason = text.decode("utf-8", errors="replace").split("\n", 1)[0]
            except FileNotFoundError:
                reason = ""
            out.append((entry.name, reason))
        out.sort()
        return out

    def quarantined_seqs(self) -> set[int]:
        """Sequence numbers of the quarantined shards: one listing, no reason file read (what a
        reader polling for gaps needs; on an object store :meth:`quarantined` costs one GET
        per quarantined shard)."""
        return {seq for seq, _ in self._scan(QUARANTINE_DIR, _QUARANTINED_PATTERN)}

    # ------------------------------------------------------------------------- producer marker

    def mark_done(self) -> None:
        """Say that the producer has finished (writes ``_PRODUCER_DONE`` atomically)."""
        stamp = datetime.now(timezone.utc).isoformat()
        self._storage.write_atomic(DONE_MARKER, f"{stamp}\n".encode())

    def is_done(self) -> bool:
        """Whether the producer has said it has finished."""
        return self._storage.exists(DONE_MARKER)

    def clear_done(self) -> None:
        """Remove the completion marker (a producer starting again on this zone calls it)."""
        self._storage.delete(DONE_MARKER)

    # ---------------------------------------------------------------------------------- helpers

    def _scan(self, prefix: str, pattern: re.Pattern[str]) -> list[tuple[int, StoredFile]]:
        """``(seq, entry)`` of the files under ``prefix`` whose names match ``pattern``."""
        out = []
        for entry in self._storage.list(prefix):
            m = pattern.match(entry.name)
            if m is not None and not entry.is_dir:
                out.append((int(m.group(1)), entry))
        return out

    def _ref(self, entry: StoredFile) -> ShardRef:
        m = SHARD_PATTERN.match(entry.name)
        if m is None:  # pragma: no cover - only shard names are published
            raise ValueError(f"not a shard name: {entry.name!r}")
        return ShardRef(
            seq=int(m.group(1)),
            path=self._ref_path(entry.name),
            landed_at=entry.mtime if entry.mtime is not None else 0.0,
            num_bytes=entry.size,
        )

    def _ref_path(self, name: str) -> str:
        """The :attr:`ShardRef.path` of ``name``: a path under the root as given (local), or a
        URI (object stores)."""
        if self._local_root is not None:
            return str(self._local_root / name)
        return f"{self.uri}/{name}"

    def _name_of(self, ref: ShardRef) -> str:
        """The storage name of a shard of this zone (a shard sits directly under the root)."""
        return ref.name

    def _name_of_path(self, path: str) -> str:
        """The shard name of a :attr:`ShardRef.path` (or bare name) of this zone."""
        name = posixpath.basename(path)
        if path != name:
            prefix = posixpath.dirname(path)
            if self.is_local:
                bare = os.path.abspath(prefix.removeprefix("file://"))
            else:
                bare = prefix.split("://", 1)[1] if "://" in prefix else prefix
            if bare.rstrip("/") != self._storage.root:
                raise ValueError(f"{path!r} is not a shard of the landing zone {self.uri}")
        if SHARD_PATTERN.match(name) is None:
            raise ValueError(f"{path!r} is not a shard name (shard-NNNNNNNNNNNN.parquet)")
        return name


def _check_seq(seq: int) -> None:
    if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= _MAX_SEQ:
        raise ValueError(f"shard seq must be an int in [1, {_MAX_SEQ}], got {seq!r}")


def _time_range(table: pa.Table) -> tuple[datetime | None, datetime | None]:
    """Min and max ``event_time`` of ``table`` as UTC datetimes (``None`` when no rows)."""
    if table.num_rows == 0:
        return None, None
    mm = pc.min_max(table.column("event_time"))
    lo, hi = mm["min"].as_py(), mm["max"].as_py()
    if lo is None or hi is None:
        return None, None
    return lo.astimezone(timezone.utc), hi.astimezone(timezone.utc)
