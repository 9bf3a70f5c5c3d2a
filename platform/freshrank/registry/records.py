"""Reading the registry's small records (pointer files) defensively, and counting the ones
that cannot be read: a garbled record is a warning and a count, never a crash of its reader.

>>> parse_pointer("CHAMPION", b'{"version": 3, "reason": "gate"}')
3
>>> try:
...     parse_pointer("CHAMPION", b"\\x00garbage")
... except UnreadablePointer as exc:
...     print(str(exc)[:31])
CHAMPION is not JSON (8 bytes):
"""

from __future__ import annotations

import json
import logging

from freshrank.core.telemetry import default_telemetry

__all__ = ["UnreadablePointer", "count_unreadable", "parse_pointer"]

_log = logging.getLogger(__name__)

_FIX = "point it again with `freshrank registry promote|rollback|pin` (or delete it)"


class UnreadablePointer(ValueError):
    """A pointer file (``CHAMPION``, ``PINNED``) exists but is not a pointer record."""


def parse_pointer(where: str, raw: bytes) -> int:
    """The version a pointer record names; ``UnreadablePointer`` naming ``where`` and the fix
    when it is not JSON or holds no version number >= 1."""
    try:
        record = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise UnreadablePointer(f"{where} is not JSON ({len(raw)} bytes): {_FIX}") from None
    version = record.get("version") if isinstance(record, dict) else None
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise UnreadablePointer(
            f"{where} holds no version number >= 1 (got {str(record)[:80]!r}): {_FIX}"
        )
    return version


def count_unreadable(record: str) -> None:
    """Count one unreadable ``record`` (``champion``, ``pinned``, ``promotion_log``) in
    ``freshrank_registry_unreadable_total``; never raises (counting must not stop a reader)."""
    try:
        default_telemetry().inc("freshrank_registry_unreadable_total", tags={"record": record})
    except Exception:
        _log.debug("counting an unreadable %s failed", record, exc_info=True)
