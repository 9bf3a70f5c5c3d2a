"""Who may write to a registry, and how a running trainer is asked to stop.

* Fencing: every trainer start (a job, or Ray Train restarting its worker group) claims a new
  epoch in ``<registry>/TRAINER_LEASE``. Before publishing a version, rank 0 checks that the
  lease still names its epoch, so a trainer that was replaced (a job restarted while the old
  workers were still finishing a window) stops instead of publishing a second copy of a window.
* Stopping: ``request_stop()`` writes ``<registry>/STOP``; the trainer finishes and checkpoints
  the window it is on, then returns. ``freshrank train`` does this on SIGTERM/SIGINT, which is
  what ``ray job stop`` sends.

* Status: ``TrainerHeartbeat`` keeps ``<registry>/TRAINER`` (what the trainer is doing)
  honest. Rank 0 refreshes it every ``interval_s`` from a background thread (``heartbeat_at``),
  writes ``failed`` with the reason when the trainer exits with an exception, and
  ``stopped`` when it returns. A trainer that dies without a word (killed, full disk) stops
  beating: ``trainer_health`` reports a live state whose beat is older than
  ``STALE_AFTER_BEATS`` intervals as ``stale`` and older than ``DEAD_AFTER_BEATS`` as ``dead``.

All three files live wherever the registry does (a local path or an object store URI): each is one
whole-file write (atomic rename locally, one PUT on an object store).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

from freshrank.core.storage import Storage, StorageOptions
from freshrank.registry.layout import STOP, TRAINER, TRAINER_LEASE


class FencedOut(RuntimeError):
    """Another trainer has claimed the registry since this one started."""


class TrainerControl:
    """Lease and stop flag of the trainer writing to one registry."""

    def __init__(
        self, registry_root: str | os.PathLike[str], options: StorageOptions | None = None
    ) -> None:
        self.storage = Storage(registry_root, options)

    _lease = TRAINER_LEASE
    _stop = STOP

    def claim(self) -> str:
        """Take the lease for a new trainer epoch and return it."""
        epoch = f"{time.time():.6f}-{uuid.uuid4().hex[:8]}"
        record = {"epoch": epoch, "pid": os.getpid(), "at": time.time()}
        self.storage.write_atomic(self._lease, json.dumps(record).encode())
        return epoch

    def holder(self) -> str | None:
        """The epoch holding the lease, or None when no trainer has claimed it."""
        try:
            return str(json.loads(self.storage.read(self._lease))["epoch"])
        except FileNotFoundError:
            return None

    def check(self, epoch: str) -> None:
        """Raise ``FencedOut`` unless ``epoch`` still holds the lease."""
        current = self.holder()
        if current != epoch:
            raise FencedOut(f"trainer epoch {epoch} was replaced by {current}; stopping")

    def request_stop(self, reason: str = "") -> None:
        """Ask the running trainer to stop after the window it is on."""
        record = {"at": time.time(), "reason": reason}
        self.storage.write_atomic(self._stop, json.dumps(record).encode())

    def stop_requested(self) -> bool:
        """True when a stop was requested and not cleared."""
        return self.storage.exists(self._stop)

    def clear_stop(self) -> None:
        """Forget an earlier stop request (done when a trainer starts)."""
        self.storage.delete(self._stop, missing_ok=True)


LIVE_STATES: tuple[str, ...] = ("starting", "ready")
"""``TRAINER`` states of a running trainer (it beats); ``stopped`` and ``failed`` are final."""
STALE_AFTER_BEATS = 3
"""A live state whose last beat is older than this many intervals reads ``stale``."""
DEAD_AFTER_BEATS = 12
"""... and older than this many reads ``dead``."""


class TrainerHeartbeat:
    """Writes ``TRAINER`` for the trainer's rank 0 and refreshes it every ``interval_s``.

    ``start`` writes the first record and starts the beat; ``update`` changes fields (written
    at once); ``finish`` stops the beat and writes a final state (``stopped``, or ``failed``
    with a reason). Writes are best effort: a failed write (a full disk) is reported once on
    stderr and retried on the next beat, and the age of the last beat tells readers the rest.
    """

    def __init__(
        self,
        registry_root: str | os.PathLike[str],
        interval_s: float = 5.0,
        options: StorageOptions | None = None,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"heartbeat interval_s must be > 0, got {interval_s}")
        self.storage = Storage(registry_root, options)
        self.interval_s = float(interval_s)
        self._fields: dict[str, Any] = {}
        self._since = time.time()
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned = False
        self._owner: Any = None

    def guard(self, still_owner: Any) -> None:
        """Before every later write, call ``still_owner()``; once it returns False (another
        trainer took the lease) stop beating and write nothing more."""
        self._owner = still_owner

    def start(self, state: str = "starting", **fields: Any) -> None:
        """Write ``state`` and start beating (a daemon thread)."""
        self.update(state=state, **fields)
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._beat, name="freshrank-trainer-heartbeat", daemon=True
            )
            self._thread.start()

    def update(self, **fields: Any) -> bool:
        """Merge ``fields`` into the record and write it now; False when the write failed."""
        with self._lock:
            if fields.get("state", self._fields.get("state")) != self._fields.get("state"):
                self._since = time.time()
            self._fields.update(fields)
        return self._write()

    def finish(self, state: str = "stopped", reason: str | None = None, **fields: Any) -> bool:
        """Stop beating and write the final ``state`` (with ``reason`` when given)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(1.0, 2 * self.interval_s))
        extra = {"reason": reason} if reason is not None else {}
        return self.update(state=state, **extra, **fields)

    def fail(self, exc: BaseException) -> bool:
        """:meth:`finish` with ``failed`` and the exception as the reason."""
        text = f"{type(exc).__name__}: {exc}"
        return self.finish("failed", reason=text[:2000])

    def record(self) -> dict[str, Any]:
        """The record as it would be written now."""
        now = time.time()
        with self._lock:
            return {
                **self._fields,
                "at": now,
                "since": self._since,
                "heartbeat_at": now,
                "heartbeat_interval_s": self.interval_s,
                "pid": os.getpid(),
                "host": socket.gethostname(),
            }

    def _write(self) -> bool:
        if self._stop.is_set() and self._fields.get("state") in LIVE_STATES:
            return False  # the beat was halted (fenced out)
        try:
            with self._write_lock:  # the beat thread and the trainer's own updates
                if self._owner is not None and not self._owner():
                    self._stop.set()
                    return False
                self.storage.write_atomic(TRAINER, json.dumps(self.record()).encode())
        except Exception as exc:  # best effort: the beat's age covers a status we cannot write
            if not self._warned:
                print(f"[freshrank trainer] cannot write {TRAINER}: {exc}", file=sys.stderr)
                self._warned = True
            return False
        self._warned = False
        return True

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._write()


def trainer_health(record: Mapping[str, Any] | None, now: float | None = None) -> dict | None:
    """``record`` (a ``TRAINER`` record) as a reader should report it: a live state whose
    heartbeat is too old becomes ``stale`` or ``dead`` (the recorded one stays in
    ``reported_state``), and ``heartbeat_age_s`` says how old the beat is.

    >>> rec = {"state": "ready", "heartbeat_at": 100.0, "heartbeat_interval_s": 5.0}
    >>> [trainer_health(rec, now)["state"] for now in (110.0, 120.0, 200.0)]
    ['ready', 'stale', 'dead']
    >>> trainer_health({**rec, "state": "stopped"}, 1e9)["state"]
    'stopped'
    """
    if record is None:
        return None
    out = dict(record)
    now = time.time() if now is None else now
    beat, interval = record.get("heartbeat_at"), record.get("heartbeat_interval_s")
    if not isinstance(beat, (int, float)) or not isinstance(interval, (int, float)):
        return out  # written without a heartbeat: nothing to judge it by
    age = max(0.0, now - float(beat))
    out["heartbeat_age_s"] = age
    if record.get("state") in LIVE_STATES and interval > 0:
        if age > DEAD_AFTER_BEATS * interval:
            out["state"], out["reported_state"] = "dead", record.get("state")
        elif age > STALE_AFTER_BEATS * interval:
            out["state"], out["reported_state"] = "stale", record.get("state")
    return out
