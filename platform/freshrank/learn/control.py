"""Who may write to a registry, and how a running trainer is asked to stop.

* Fencing: every trainer start (a job, or Ray Train restarting its worker group) claims a new
  epoch in ``<registry>/TRAINER_LEASE``. Before publishing a version, rank 0 checks that the
  lease still names its epoch, so a trainer that was replaced (a job restarted while the old
  workers were still finishing a window) stops instead of publishing a second copy of a window.
* Stopping: ``request_stop()`` writes ``<registry>/STOP``; the trainer finishes and checkpoints
  the window it is on, then returns. ``freshrank train`` does this on SIGTERM/SIGINT, which is
  what ``ray job stop`` sends.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

from freshrank.registry.store import atomic_write_bytes


class FencedOut(RuntimeError):
    """Another trainer has claimed the registry since this one started."""


class TrainerControl:
    """Lease and stop flag of the trainer writing to one registry."""

    def __init__(self, registry_root: str | os.PathLike[str]) -> None:
        self.root = Path(registry_root)

    @property
    def _lease(self) -> Path:
        return self.root / "TRAINER_LEASE"

    @property
    def _stop(self) -> Path:
        return self.root / "STOP"

    def claim(self) -> str:
        """Take the lease for a new trainer epoch and return it."""
        epoch = f"{time.time():.6f}-{uuid.uuid4().hex[:8]}"
        record = {"epoch": epoch, "pid": os.getpid(), "at": time.time()}
        atomic_write_bytes(self._lease, json.dumps(record).encode())
        return epoch

    def holder(self) -> str | None:
        """The epoch holding the lease, or None when no trainer has claimed it."""
        try:
            return str(json.loads(self._lease.read_text())["epoch"])
        except FileNotFoundError:
            return None

    def check(self, epoch: str) -> None:
        """Raise ``FencedOut`` unless ``epoch`` still holds the lease."""
        current = self.holder()
        if current != epoch:
            raise FencedOut(f"trainer epoch {epoch} was replaced by {current}; stopping")

    def request_stop(self, reason: str = "") -> None:
        """Ask the running trainer to stop after the window it is on."""
        atomic_write_bytes(self._stop, json.dumps({"at": time.time(), "reason": reason}).encode())

    def stop_requested(self) -> bool:
        """True when a stop was requested and not cleared."""
        return self._stop.exists()

    def clear_stop(self) -> None:
        """Forget an earlier stop request (done when a trainer starts)."""
        self._stop.unlink(missing_ok=True)
