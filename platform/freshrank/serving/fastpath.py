"""The short way through the ranking app for a well-formed ``POST /rank``.

FastAPI stays the application (its routes make ``/docs``, ``/openapi.json``, ``/model`` and
``/healthz``, and it answers every request this module passes on), but the hot endpoint skips
its routing, dependency solving and two-step body parsing (``json.loads`` then validation):
:class:`RankFastPath` is an ASGI middleware that takes a ``POST /rank`` with a JSON content type,
decodes and validates the body in one call into the encoder's columns (``wire.decode_search``:
msgspec, the constraints of ``RankRequest``) and hands them to the server's answer function, the
same one the FastAPI route calls with its ``RankRequest``.

Anything else goes to FastAPI unchanged, and so does a body the decoder refuses: FastAPI then
answers exactly as it did before (422 naming the field, 422 for bad JSON, 400 for a body it
cannot parse at all), so answers cannot drift from the documented ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from freshrank.features.encode import SearchCandidates
from freshrank.serving.limits import ASGIApp, Message, Receive, Scope, Send
from freshrank.serving.wire import decode_search

Answer = Callable[[SearchCandidates, bool], Awaitable[Any]]
"""Answers a validated request with an ASGI response (a Starlette ``Response``); the flag says
whether it is the only ``/rank`` request this app holds (nothing to batch it with)."""


class RankFastPath:
    """Wrap an ASGI ``app``; answer JSON ``POST <path>`` through ``answer()`` when it is set.

    ``answer`` is a zero-argument callable giving the answer function, or None while there is
    none (then every request goes to ``app``). ``in_flight``, kept by an outer
    :class:`CountInFlight`, says how many ``POST <path>`` requests the app holds: a request
    answered while no other one is in (not even one still waiting for its body, which a replica
    fetches from the proxy, nor one that arrived with it and has not started: the fast path
    yields once before it decides) is told it is alone, so it can skip the batching machinery.
    """

    def __init__(
        self,
        app: ASGIApp,
        answer: Callable[[], Answer | None],
        in_flight: InFlight,
        path: str = "/rank",
    ) -> None:
        self.app = app
        self.answer = answer
        self.in_flight = in_flight
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope.get("type") != "http"
            or scope.get("method") != "POST"
            or route_path(scope) != self.path
            or not is_json(scope)
        ):
            await self.app(scope, receive, send)
            return
        answer = self.answer()
        if answer is None:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message.get("type") != "http.request":  # http.disconnect: nobody to answer
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        request = decode_search(body)
        if request is None:  # FastAPI answers: says what is wrong, or accepts it its own way
            await self.app(scope, _replay(body, receive), send)
            return
        alone = self.in_flight.count <= 1
        if alone:
            # With a body that was already here (Serve's direct ingress: HAProxy hands the whole
            # request to the replica's uvicorn) nothing above suspended, so requests that
            # arrived together with this one have not started yet: yield once so they are
            # counted and can be batched with it, instead of each being scored alone in turn.
            await asyncio.sleep(0)
            alone = self.in_flight.count <= 1
        response = await answer(request, alone)
        await response(scope, receive, send)


class InFlight:
    """How many requests a :class:`CountInFlight` holds right now."""

    def __init__(self) -> None:
        self.count = 0


class CountInFlight:
    """ASGI middleware: count ``POST <path>`` requests from their first byte to their answer."""

    def __init__(self, app: ASGIApp, in_flight: InFlight, path: str = "/rank") -> None:
        self.app = app
        self.in_flight = in_flight
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope.get("type") != "http"
            or scope.get("method") != "POST"
            or route_path(scope) != self.path
        ):
            await self.app(scope, receive, send)
            return
        self.in_flight.count += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight.count -= 1


def route_path(scope: Scope) -> str:
    """The path the app routes on: ``path`` without the ``root_path`` it is mounted at (as
    Starlette's router computes it)."""
    path = scope.get("path", "")
    root = scope.get("root_path", "")
    if not root or not path.startswith(root):
        return path
    if path == root:
        return ""
    return path[len(root) :] if path[len(root)] == "/" else path


def is_json(scope: Scope) -> bool:
    """Whether the request declares a JSON body (``application/json`` or ``application/*+json``,
    the types FastAPI parses as JSON)."""
    for key, value in scope.get("headers") or ():
        if key.lower() == b"content-type":
            kind = value.decode("latin-1").split(";", 1)[0].strip().lower()
            main, _, sub = kind.partition("/")
            return main == "application" and (sub == "json" or sub.endswith("+json"))
    return False


def _replay(body: bytes, receive: Receive) -> Receive:
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
