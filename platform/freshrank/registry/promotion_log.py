"""The local promotion log (``promotions.jsonl``): appends that cannot tear it, reads that a
torn or garbled line cannot stop.

An append writes the whole line with one ``os.write`` on an ``O_APPEND`` descriptor, under the
registry's lock (:meth:`freshrank.registry.store.Registry.log_event` holds it). Before writing it
looks at the file's last byte: a file that does not end in ``"\\n"`` holds the torn tail of an
append that failed half way (a full disk, a killed writer), which is cut off first, so the new
event starts on a line of its own. An append that fails part way (``ENOSPC``) truncates its own
partial bytes before raising; where even that fails, the next append heals the tail.

Readers (:func:`parse_lines`) take every complete line that is a JSON object and skip the rest,
saying which lines they skipped, so one bad line never hides the others.
:class:`PromotionLog` is the registry's log on either kind of filesystem (a local file; one
object per event on an object store, which cannot append).

>>> events, skipped = parse_lines('{"kind": "promoted"}\\n{"kind": "rej\\n{"kind": "pruned"}\\n')
>>> [e["kind"] for e in events], skipped
(['promoted', 'pruned'], [2])
"""

from __future__ import annotations

import errno
import json
import logging
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any

from freshrank.core.storage import Storage
from freshrank.registry.layout import PROMOTIONS_DIR, PROMOTIONS_LOG
from freshrank.registry.records import count_unreadable

__all__ = ["PromotionLog", "append_line", "champion_history", "heal_torn_tail", "parse_lines"]

_log = logging.getLogger(__name__)


def heal_torn_tail(fd: int) -> int:
    """Cut a torn last line (bytes after the last ``"\\n"``) off the file open as ``fd``;
    returns how many bytes were cut (0 for a file that ends in ``"\\n"`` or is empty)."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return 0
    keep, block = 0, 64 * 1024
    end = size
    while end > 0:  # find the last newline, reading backwards a block at a time
        start = max(0, end - block)
        chunk = os.pread(fd, end - start, start)
        at = chunk.rfind(b"\n")
        if at >= 0:
            keep = start + at + 1
            break
        end = start
    os.ftruncate(fd, keep)
    return size - keep


def append_line(path: str, line: bytes) -> int:
    """Append ``line`` (one JSON document, without its newline) to the log at ``path``, healing
    a torn tail first; returns the bytes of torn tail that were cut (usually 0).

    Call it under the registry's lock. Raises ``OSError`` (with the errno of the failure and a
    message naming the file) when the write fails; the log is then left as it was before the
    call, or, when even that cannot be done, with a tail the next append cuts off.
    """
    if b"\n" in line:
        raise ValueError("a promotion log event must be one line (no newline inside)")
    data = line + b"\n"
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        cut = heal_torn_tail(fd)
        start = os.fstat(fd).st_size
        written = 0
        try:
            while written < len(data):  # one write normally; a short write continues
                n = os.write(fd, data[written:])
                if n <= 0:
                    raise OSError(errno.EIO, "write returned no progress")
                written += n
        except OSError as exc:
            try:
                os.ftruncate(fd, start)  # take our partial line back
            except OSError:
                pass  # the next append cuts the torn tail
            raise OSError(
                exc.errno,
                f"could not append an event to the promotion log {path} "
                f"({exc.strerror or exc}); nothing was logged and the log is intact: "
                "free space / fix permissions and retry",
            ) from exc
        return cut
    finally:
        os.close(fd)


def parse_lines(text: str) -> tuple[list[dict[str, Any]], list[int]]:
    """The events of a promotion log's ``text`` and the (1-based) numbers of the lines skipped
    because they are not a JSON object. The part after the last newline is a line still being
    appended (or a torn one) and is neither read nor counted."""
    events: list[dict[str, Any]] = []
    skipped: list[int] = []
    for number, line in enumerate(text.split("\n")[:-1], start=1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            skipped.append(number)
            continue
        if isinstance(event, dict):
            events.append(event)
        else:
            skipped.append(number)
    return events, skipped


def champion_history(events: Sequence[Mapping[str, Any]]) -> list[int]:
    """Every version that was champion, newest first, each once, leaving out versions rolled
    back from (unless promoted again later): the order in which serving falls back and
    rollback looks.

    >>> log = [{"kind": "promoted", "to_version": 1}, {"kind": "promoted", "to_version": 2},
    ...        {"kind": "rolled_back", "from_version": 2, "to_version": 1},
    ...        {"kind": "promoted", "to_version": 3}]
    >>> champion_history(log)
    [3, 1]
    """
    history: list[int] = []
    rolled_away: set[int] = set()
    for event in events:
        kind, to = event.get("kind"), event.get("to_version")
        if kind == "rolled_back" and event.get("from_version") is not None:
            rolled_away.add(int(event["from_version"]))
        if kind in ("promoted", "rolled_back") and to is not None:
            if kind == "promoted":
                rolled_away.discard(int(to))
            history.append(int(to))
    out: list[int] = []
    for version in reversed(history):
        if version not in rolled_away and version not in out:
            out.append(version)
    return out


def _event_or_none(data: bytes | None) -> dict[str, Any] | None:
    """One event object's record, or None when it is gone or not a JSON object."""
    if data is None:
        return None
    try:
        event = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return event if isinstance(event, dict) else None


class PromotionLog:
    """The promotion log of the registry at ``storage``; ``locked()`` is the registry's lock
    (appends to the local file hold it)."""

    def __init__(self, storage: Storage, locked: Callable[[], AbstractContextManager[Any]]):
        self._storage = storage
        self._locked = locked
        self._cache: dict[str, dict[str, Any]] = {}  # event objects are immutable
        self._warned: tuple[int, ...] = ()
        self.skipped = 0
        """Lines (or objects) the last :meth:`read` skipped because they are not JSON events."""

    def append(self, now_ns: int, line: str) -> None:
        """Log one event (``line``: its JSON, written at ``now_ns``)."""
        if not self._storage.is_local:
            name = f"{PROMOTIONS_DIR}/{now_ns:020d}-{uuid.uuid4().hex[:12]}.json"
            self._storage.write_atomic(name, line.encode())
            return
        os.makedirs(self._storage.root, exist_ok=True)
        path = self._storage.path(PROMOTIONS_LOG)
        with self._locked():  # one appender at a time: the torn-tail check is then safe
            cut = append_line(path, line.encode())
        if cut:
            _log.warning(
                "%s: cut %d bytes of a torn last line (an append that failed half way) "
                "before appending",
                path,
                cut,
            )

    def read(self) -> list[dict[str, Any]]:
        """Every event, oldest first (see ``Registry.promotions``); bad lines are skipped."""
        try:
            text = self._storage.read(PROMOTIONS_LOG).decode("utf-8", errors="replace")
        except FileNotFoundError:
            text = ""
        events, skipped = parse_lines(text)  # the part after the last newline is incomplete
        names = [
            f"{PROMOTIONS_DIR}/{e.name}"
            for e in self._storage.list(PROMOTIONS_DIR)
            if not e.is_dir and e.name.endswith(".json")
        ]
        missing = [n for n in names if n not in self._cache]
        if missing:
            with ThreadPoolExecutor(max_workers=min(8, len(missing))) as pool:
                for name, data in zip(missing, pool.map(self._read_or_none, missing), strict=True):
                    event = _event_or_none(data)
                    if event is not None:
                        self._cache[name] = event
                    elif data is not None:
                        skipped.append(-1)
                        _log.warning("%s/%s is not a JSON event: skipped", self._storage.uri, name)
        self.skipped = len(skipped)
        if skipped and tuple(skipped) != self._warned:
            self._warned = tuple(skipped)
            count_unreadable("promotion_log")
            _log.warning(
                "%s: skipped %d line(s) that are not JSON events (line %s); the other events "
                "are read",
                self._storage.path(PROMOTIONS_LOG),
                len(skipped),
                ", ".join(str(n) for n in skipped[:10] if n > 0) or "-",
            )
        if not names:
            return events
        events += [self._cache[n] for n in names if n in self._cache]
        return sorted(events, key=lambda e: float(e.get("at") or 0.0))  # stable: ties keep order

    def _read_or_none(self, name: str) -> bytes | None:
        try:
            return self._storage.read(name)
        except FileNotFoundError:
            return None
