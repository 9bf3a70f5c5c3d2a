"""The model a replica serves, swapped in place off the request path, and healed when it can.

A background thread follows a target (the registry's champion, or a pinned version); when the
target changes it loads and warms the new model, then swaps one reference. A request reads the
reference once at its start, so it finishes on the model it started with.

What it serves when a load fails (the TF Serving / Triton way): the newest version that loads
and verifies, in the order of preference ``[target] + fallbacks()`` (the registry's champion,
then the versions that were champion before it, newest first). The live model is never dropped
for a worse one: the walk stops at the version already live. A version that failed is retried
when its files change (``fingerprint(version)`` differs: size, mtime of each file) or after a
back-off (``retry_backoff_s`` doubling up to ``retry_backoff_max_s``), so a champion restored
on disk is served again within a poll. :meth:`ModelHolder.status` says what is served and why
(``reason``: ``"champion"``, ``"fallback: champion v12 failed to load (...); serving v11"``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field

from freshrank.registry.checkpoint import ServingModel

Target = int | tuple[int, str] | None
"""What ``target()`` returns: a version, a version and its role (``"champion"``, ``"pinned"``),
or None when there is nothing to serve (nothing promoted yet)."""


@dataclass(frozen=True)
class Loaded:
    """A served model and when it went live."""

    served: ServingModel
    loaded_at: float


@dataclass(frozen=True)
class VersionFailure:
    """A version that failed to load: why, when, and when it is tried again at the latest
    (earlier when its files change)."""

    version: int
    error: str
    failed_at: float
    attempts: int
    retry_at: float
    fingerprint: Hashable | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class ServingStatus:
    """What a replica serves and why.

    ``wanted``: the version it should serve (``role`` says which: champion, pinned); ``version``:
    the one it serves (None: none loaded); ``fallback``: something is wanted and it is not the
    one served; ``reason``: one line for ``/model``; ``failures``: versions that failed to load.
    """

    version: int | None
    wanted: int | None
    role: str | None
    reason: str
    failures: tuple[VersionFailure, ...] = ()

    @property
    def fallback(self) -> bool:
        """True when a version is wanted and another one (or none) is served."""
        return self.wanted is not None and self.version != self.wanted


class ModelHolder:
    """Holds the live model; ``loader(version)`` and ``target()`` are injected (tests fake them).

    Args:
        loader: loads and verifies a version (raises when it cannot).
        target: the version to serve (see :data:`Target`).
        poll_interval_s: how often the background thread looks.
        on_swap: runs after each swap; ``on_error(version, message)`` after a failed load;
            ``on_tick(live)`` once per poll of the background thread.
        fallbacks: versions to serve when the target cannot be, in order of preference
            (consulted only then, and at most every ``fallback_refresh_s``).
        fingerprint: what a version's files look like now (any hashable; None: unknown); a
            failed version whose fingerprint changes is retried at once.
        retry_backoff_s: wait before a failed version (files unchanged) is tried again; it
            doubles with each failure up to ``retry_backoff_max_s``.
        max_fallbacks: most fallback versions considered.
        clock: monotonic seconds (tests pass a fake one).
    """

    def __init__(
        self,
        loader: Callable[[int], ServingModel],
        target: Callable[[], Target],
        poll_interval_s: float = 0.25,
        on_swap: Callable[[Loaded], None] | None = None,
        on_tick: Callable[[Loaded | None], None] | None = None,
        on_error: Callable[[int, str], None] | None = None,
        *,
        fallbacks: Callable[[], Sequence[int]] | None = None,
        fingerprint: Callable[[int], Hashable | None] | None = None,
        retry_backoff_s: float = 30.0,
        retry_backoff_max_s: float = 300.0,
        max_fallbacks: int = 5,
        fallback_refresh_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not retry_backoff_s > 0 or retry_backoff_max_s < retry_backoff_s:
            raise ValueError(
                f"retry_backoff_s ({retry_backoff_s}) must be > 0 and <= retry_backoff_max_s "
                f"({retry_backoff_max_s})"
            )
        if max_fallbacks < 0:
            raise ValueError(f"max_fallbacks must be >= 0, got {max_fallbacks}")
        self._loader = loader
        self._target = target
        self.poll_interval_s = poll_interval_s
        self._on_swap = on_swap
        self._on_tick = on_tick
        self._on_error = on_error
        self._fallbacks = fallbacks
        self._fingerprint = fingerprint
        self.retry_backoff_s = float(retry_backoff_s)
        self.retry_backoff_max_s = float(retry_backoff_max_s)
        self.max_fallbacks = int(max_fallbacks)
        self.fallback_refresh_s = float(fallback_refresh_s)
        self._clock = clock
        self._live: Loaded | None = None
        self._pinned: int | None = None
        self._failed: dict[int, VersionFailure] = {}
        self._chain: tuple[int | None, float, list[int]] = (None, float("-inf"), [])
        self._status = ServingStatus(None, None, None, "not looked yet")
        self._unserved_since: float | None = None
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
        """The version pinned through :meth:`pin`, or None when following the target."""
        return self._pinned

    def status(self) -> ServingStatus:
        """What is served and why, as of the last look (:meth:`refresh`)."""
        return self._status

    def retry_in_s(self, failure: VersionFailure) -> float:
        """Seconds until ``failure``'s version is tried again at the latest."""
        return max(0.0, failure.retry_at - self._clock())

    def unserved_for(self) -> float:
        """Seconds this holder has had a version to serve and none loaded (0 when serving, or
        when nothing was ever promoted): how long it has been unhealthy."""
        since = self._unserved_since
        return 0.0 if since is None else max(0.0, self._clock() - since)

    # ----- control -----------------------------------------------------------------------------
    def pin(self, version: int | None) -> None:
        """Serve ``version`` regardless of the target (None: follow the target again).

        Returns at once; the background thread loads it (keep Serve's ``reconfigure()`` short).
        Pinning a version that failed retries it now.
        """
        self._pinned = version
        if version is not None:
            self._failed.pop(version, None)
        self._wake.set()

    def refresh(self) -> bool:
        """Serve the most preferred version that loads (see the module doc); True on a swap.

        Raises what ``target()`` raises (the background thread records it and keeps going).
        """
        with self._lock:
            wanted, role = self._wanted()
            live = self._live
            if wanted is None:
                self._unserved_since = None
                reason = "nothing promoted yet" if live is None else "no target: keeping it"
                self._set_status(None, None, reason)
                return False
            if live is not None and live.served.version == wanted:
                self._failed.pop(wanted, None)
                self._set_status(wanted, role, role)
                return False
            swapped: Loaded | None = None
            for version in self._candidates(wanted):
                if live is not None and version == live.served.version:
                    break  # nothing preferred loads: keep the live one
                if not self._due(version):
                    continue
                loaded = self._load(version)
                if loaded is not None:
                    self._live = live = swapped = loaded  # the swap: one reference
                    self.swaps += 1
                    break
            if live is None:
                if self._unserved_since is None:
                    self._unserved_since = self._clock()
            else:
                self._unserved_since = None
            self._set_status(wanted, role, self._fallback_reason(wanted, role, live))
        if swapped is not None and self._on_swap is not None:
            self._on_swap(swapped)
        return swapped is not None

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

    # ----- internals ---------------------------------------------------------------------------
    def _wanted(self) -> tuple[int | None, str | None]:
        if self._pinned is not None:
            return self._pinned, "pinned"
        target = self._target()
        if isinstance(target, tuple):
            return int(target[0]), str(target[1])
        return (None, None) if target is None else (int(target), "target")

    def _candidates(self, wanted: int) -> Iterator[int]:
        """``wanted``, then (only if the caller goes on) the fallbacks, read at most every
        ``fallback_refresh_s``."""
        yield wanted
        if self._fallbacks is None or self.max_fallbacks == 0:
            return
        cached_for, at, chain = self._chain
        now = self._clock()
        if cached_for != wanted or now - at >= self.fallback_refresh_s:
            try:
                chain = [int(v) for v in self._fallbacks()]
            except Exception as exc:  # the log unreadable: try what we knew
                self.last_error = f"fallbacks: {type(exc).__name__}: {exc}"
            self._chain = (wanted, now, chain)
        seen = {wanted}
        for version in chain:
            if len(seen) > self.max_fallbacks:
                return
            if version not in seen:
                seen.add(version)
                yield version

    def _fingerprint_of(self, version: int) -> Hashable | None:
        if self._fingerprint is None:
            return None
        try:
            return self._fingerprint(version)
        except Exception:
            return None

    def _due(self, version: int) -> bool:
        """Whether ``version`` may be loaded now: never failed, its files changed since it
        failed, or its back-off is over."""
        failure = self._failed.get(version)
        if failure is None:
            return True
        if self._clock() >= failure.retry_at:
            return True
        now = self._fingerprint_of(version)
        return now is not None and failure.fingerprint is not None and now != failure.fingerprint

    def _load(self, version: int) -> Loaded | None:
        before = self._fingerprint_of(version)  # what the files looked like when we tried
        try:
            served = self._loader(version)
        except Exception as exc:  # keep serving what is live
            previous = self._failed.get(version)
            attempts = 1 if previous is None else previous.attempts + 1
            backoff = min(self.retry_backoff_s * 2 ** (attempts - 1), self.retry_backoff_max_s)
            now = self._clock()
            message = f"{type(exc).__name__}: {exc}"
            self._failed[version] = VersionFailure(
                version, message, time.time(), attempts, now + backoff, before
            )
            self.last_error = f"version {version}: {message}"
            if self._on_error is not None:
                self._on_error(version, message)
            return None
        self._failed.pop(version, None)
        return Loaded(served, time.time())

    def _fallback_reason(self, wanted: int, role: str | None, live: Loaded | None) -> str:
        if live is not None and live.served.version == wanted:
            return role or "target"
        failure = self._failed.get(wanted)
        why = f"failed to load ({failure.error})" if failure else "is not loaded yet"
        head = f"{role} v{wanted} {why}"
        if live is None:
            return f"no model: {head}, and no earlier version loads"
        return f"fallback: {head}; serving v{live.served.version}"

    def _set_status(self, wanted: int | None, role: str | None, reason: str) -> None:
        live = self._live
        self._status = ServingStatus(
            live.served.version if live is not None else None,
            wanted,
            role,
            reason,
            tuple(sorted(self._failed.values(), key=lambda f: -f.version)),
        )

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
