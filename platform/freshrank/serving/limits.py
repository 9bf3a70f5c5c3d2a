"""Request body size limit: an ASGI middleware that answers 413 before a big body is parsed.

A declared ``Content-Length`` above the limit is refused at once, without reading the body; a
body without one (chunked), or one longer than it said, is counted as it arrives and refused as
soon as it passes the limit. Either way the client gets ``413`` with a JSON body saying the
limit, and the application never sees the body.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_MAX_BODY_BYTES = 1 << 20
"""1 MiB: room for ``MAX_CANDIDATES`` candidates with every field at its longest."""


class BodySizeLimit:
    """Wrap an ASGI ``app`` so HTTP request bodies over ``max_bytes`` get a 413.

    ``on_reject`` (optional) is called once per refused request, e.g. to count it.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int = DEFAULT_MAX_BODY_BYTES,
        on_reject: Callable[[], None] | None = None,
    ) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self.app = app
        self.max_bytes = int(max_bytes)
        self.on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send, declared)
            return
        # Read the body here (it is at most max_bytes) and hand it on in one message: the app
        # never sees a body over the limit, whatever framework error handling it has.
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message.get("type") != "http.request":  # http.disconnect: nobody to answer
                return
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_bytes:
                await self._refuse(send, declared)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for a disconnect, as ASGI says

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send, declared: int | None) -> None:
        if self.on_reject is not None:
            try:
                self.on_reject()
            except Exception:  # counting must not change the answer
                pass
        body = json.dumps(
            {
                "error": "request body too large",
                "limit_bytes": self.max_bytes,
                "content_length": declared,
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers") or ():
        if key.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
