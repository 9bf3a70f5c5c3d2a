"""Who may write to a registry, and how a running trainer is asked to stop.

* Fencing: every trainer start (a job, or Ray Train restarting its worker group) claims a new
  epoch in ``<registry>/TRAINER_LEASE``. Before publishing a version, rank 0 checks that the
  lease still names its epoch, so a trainer that was replaced (a job restarted while the old
  workers were still finishing a window) stops instead of publishing a second copy of a window.
* Stopping: ``request_stop()`` writes ``<registry>/STOP``; the trainer finishes and checkpoints
  the window it is on, then returns. ``freshrank train`` does this on SIGTERM/SIGINT, which is
  what ``ray job stop`` sends.

Both files live wherever the registry does (a local path or an object store URI): each is one
whole-file write (atomic rename locally, one PUT on an object store).
"""

from __future__ import annotations

import json
import os
import time
import uuid

from freshrank.core.storage import Storage, StorageOptions
from freshrank.registry.layout import STOP, TRAINER_LEASE


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
