"""The model a replica serves, swapped in place off the request path.

A background thread follows a target (the registry's champion, or a pinned version); when the
target changes it loads and warms the new model, then swaps one reference. A request reads the
reference once at its start, so it finishes on the model it started with. A load that fails
keeps the old model serving and the failing version is not retried.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from freshrank.registry.checkpoint import ServingModel


@dataclass(frozen=True)
class Loaded:
    """A served model and when it went live."""

    served: ServingModel
    loaded_at: float


class ModelHolder:
    """Holds the live model; ``loader(version)`` and ``target()`` are injected (tests fake them).

    ``on_swap(loaded)`` runs after each swap, ``on_error(version, message)`` after a failed
    load, ``on_tick(live)`` once per poll of the background thread.
    """

    def __init__(
        self,
        loader: Callable[[int], ServingModel],
        target: Callable[[], int | None],
        poll_interval_s: float = 0.25,
        on_swap: Callable[[Loaded], None] | None = None,
        on_tick: Callable[[Loaded | None], None] | None = None,
        on_error: Callable[[int, str], None] | None = None,
    ) -> None:
        self._loader = loader
        self._target = target
        self.poll_interval_s = poll_interval_s
        self._on_swap = on_swap
        self._on_tick = on_tick
        self._on_error = on_error
        self._live: Loaded | None = None
        self._pinned: int | None = None
        self._failed: dict[int, str] = {}
        self._lock = threading.Lock()  # serialises loads, never taken by requests
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.swaps = 0
        self.last_error: str | None = None

    # ----- request path: one attribute read ----------------------------------------------------
    def current(self) -> Loaded | None:
        """The live model (None until the first load succeeds)."""
        return self._live

    @property
    def pinned(self) -> int | None:
        """The pinned version, or None when following the target."""
        return self._pinned

    # ----- control -----------------------------------------------------------------------------
    def pin(self, version: int | None) -> None:
        """Serve ``version`` regardless of the target (None: follow the target again).

        Returns at once; the background thread loads it (keep Serve's ``reconfigure()`` short).
        """
        self._pinned = version
        if version is not None:
            self._failed.pop(version, None)
        self._wake.set()

    def refresh(self) -> bool:
        """Load and swap to the wanted version if it differs from the live one; True on a swap."""
        with self._lock:
            wanted = self._pinned if self._pinned is not None else self._target()
            live = self._live
            if wanted is None or (live is not None and live.served.version == wanted):
                return False
            if wanted in self._failed:
                return False
            try:
                served = self._loader(wanted)
            except Exception as exc:  # keep serving the old model
                self._failed[wanted] = f"{type(exc).__name__}: {exc}"
                self.last_error = f"version {wanted}: {self._failed[wanted]}"
                if self._on_error is not None:
                    self._on_error(wanted, self._failed[wanted])
                return False
            loaded = Loaded(served, time.time())
            self._live = loaded  # the swap: one reference
            self.swaps += 1
        if self._on_swap is not None:
            self._on_swap(loaded)
        return True

    def start(self) -> None:
        """Follow the target in a daemon thread."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="model-holder", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop following (the live model stays)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception as exc:  # the target itself failed (e.g. registry unreadable)
                self.last_error = f"refresh: {type(exc).__name__}: {exc}"
            if self._on_tick is not None:
                self._on_tick(self._live)
            self._wake.wait(self.poll_interval_s)
            self._wake.clear()
