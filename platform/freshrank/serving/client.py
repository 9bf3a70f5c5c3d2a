"""A client for the ranking endpoint: ``POST /rank`` and ``GET /healthz`` over one kept-alive
``httpx`` connection, each answer reduced to what a caller checks (status, the model version
that answered, the replica, the error text).

>>> RankAnswer(200, 3, "r1", None).ok, RankAnswer(0, None, None, "ConnectError: refused").ok
(True, False)
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

_JSON = {"content-type": "application/json"}


@dataclass(frozen=True)
class RankAnswer:
    """One ``POST /rank`` answer; ``status`` 0 means no HTTP answer came (``error`` says why)."""

    status: int
    model_version: int | None
    replica: str | None
    error: str | None
    """The body's first 200 characters for a non-200 answer, the exception for none."""

    @property
    def ok(self) -> bool:
        """A 200 answer."""
        return self.status == 200


class RankingClient:
    """Calls one ranking endpoint (``url`` is its root, e.g. ``http://127.0.0.1:8000``).

    ``verify`` is passed to httpx: share one ``httpx.create_ssl_context()`` between many
    clients, since each client would otherwise load the CA bundle itself (~27 ms of CPU).
    """

    def __init__(
        self, url: str, timeout_s: float = 10.0, verify: ssl.SSLContext | bool = True
    ) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout_s, verify=verify)

    def rank(self, body: Mapping[str, Any] | bytes, path: str = "/rank") -> RankAnswer:
        """Send one search (a request dict, or its JSON bytes) and reduce the answer."""
        content = body if isinstance(body, bytes) else orjson.dumps(dict(body))
        try:
            r = self._http.post(path, content=content, headers=_JSON)
        except httpx.HTTPError as exc:
            return RankAnswer(0, None, None, f"{type(exc).__name__}: {exc}")
        version = r.headers.get("x-model-version")
        return RankAnswer(
            r.status_code,
            int(version) if version else None,
            r.headers.get("x-replica"),
            None if r.status_code == 200 else r.text[:200],
        )

    def served_version(self) -> int | None:
        """The version ``GET /healthz`` reports; None when none is loaded or no answer came."""
        try:
            version = self._http.get("/healthz").json().get("model_version")
        except (httpx.HTTPError, ValueError):
            return None
        return int(version) if version is not None else None

    def close(self) -> None:
        """Close the connection."""
        self._http.close()

    def __enter__(self) -> RankingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["RankAnswer", "RankingClient"]
