"""Stop signals turned into a request to stop: what the trainer, the producer and the CLI do on
``ray job stop`` (SIGTERM, then SIGKILL after ``RAY_JOB_STOP_WAIT_TIME_S``) and Ctrl-C (SIGINT).

>>> import os
>>> seen = []
>>> with on_stop_signals(seen.append):
...     os.kill(os.getpid(), signal.SIGTERM)
>>> seen == [signal.SIGTERM]
True
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def on_stop_signals(on_signal: Callable[[int], None]) -> Iterator[None]:
    """While the block runs, SIGTERM and SIGINT call ``on_signal(signum)`` instead of killing.

    Handlers can only be installed from the main thread; elsewhere this does nothing. The
    previous handlers come back afterwards.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:  # noqa: ANN401 - a frame or None
        on_signal(signum)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


__all__ = ["STOP_SIGNALS", "on_stop_signals"]
