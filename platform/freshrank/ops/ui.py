"""``freshrank ui``: the status page over HTTP, from a stdlib ``ThreadingHTTPServer``.

``GET /`` (or ``/index.html``) is the page, ``GET /status.json`` the same state as JSON; every
request reads the registry, landing zone and metrics endpoint afresh (`load_status`), so the
page is as current as its last reload. Anything else is a 404. It binds 127.0.0.1 by default:
the page has no authentication, widen ``host`` only on purpose.

>>> import tempfile, httpx
>>> with tempfile.TemporaryDirectory() as root:
...     page = start_status_page(root, port=0)
...     try:
...         answers = [httpx.get(page.url + p).status_code for p in ("/", "/status.json", "/x")]
...     finally:
...         page.close()
>>> answers, page.url.startswith("http://127.0.0.1:")
([200, 200, 404], True)
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from freshrank.ops.page import PageConfig, load_status, render_page, status_document

DEFAULT_PORT = 8266
"""The page's default port (the Ray Dashboard's 8265, plus one)."""


@dataclass(frozen=True)
class UiConfig:
    """Where the page reads from and where it listens."""

    registry: str
    """The registry directory (or URI) of the model line."""
    landing: str | None = None
    """The landing zone, for the backlog and the quarantined shards (None: not shown)."""
    metrics_url: str | None = None
    """A Prometheus text endpoint (a Ray node's metrics export, http://127.0.0.1:PORT/metrics)
    for what each replica serves and its freshness (None: not shown)."""
    host: str = "127.0.0.1"
    """Address to bind; the page has no authentication."""
    port: int = DEFAULT_PORT
    """TCP port; 0 picks a free one."""
    page: PageConfig = field(default_factory=PageConfig)

    def __post_init__(self) -> None:
        if not str(self.registry):
            raise ValueError("UiConfig.registry is empty: give the registry directory")
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"UiConfig.port must be an int in 0..65535, got {self.port!r}")


class StatusPage:
    """A running status page: ``url`` to open, ``close()`` to stop it (also a context manager)."""

    def __init__(self, server: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        host, port = server.server_address[:2]
        self.host, self.port = str(host), int(port)
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{shown}:{self.port}"

    def close(self) -> None:
        """Stop serving and release the port (waits at most 10 s for the serving thread)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10.0)

    def __enter__(self) -> StatusPage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_status_page(
    registry_root: str,
    landing_root: str | None = None,
    metrics_url: str | None = None,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    page: PageConfig | None = None,
) -> StatusPage:
    """Serve the status page of ``registry_root`` from a daemon thread; returns its handle.

    The demo calls this in-process; ``freshrank ui`` calls it and waits. ``port=0`` picks a
    free port (read it from ``.url``). Raises ``OSError`` when the port is taken.
    """
    config = UiConfig(
        str(registry_root), landing_root, metrics_url, host, port, page or PageConfig()
    )
    server = ThreadingHTTPServer((config.host, config.port), _handler(config))
    server.daemon_threads = True
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="status-page", daemon=True
    )
    thread.start()
    return StatusPage(server, thread)


def _handler(config: UiConfig) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "freshrank-ui"

        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            path = self.path.split("?", 1)[0]
            if path not in ("/", "/index.html", "/status.json"):
                self._send(404, "text/plain; charset=utf-8", f"no page at {path}\n".encode())
                return
            try:
                status = load_status(
                    config.registry, config.landing, config.metrics_url, config.page
                )
            except Exception as exc:  # a corrupt manifest, an unreadable store: say so
                text = f"status could not be read: {type(exc).__name__}: {exc}\n"
                self._send(500, "text/plain; charset=utf-8", text.encode())
                return
            if path == "/status.json":
                body = json.dumps(status_document(status), allow_nan=False).encode()
                self._send(200, "application/json", body)
            else:
                self._send(
                    200, "text/html; charset=utf-8", render_page(status, config.page).encode()
                )

        def _send(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # no line per request on the terminal

    return Handler


__all__ = ["DEFAULT_PORT", "StatusPage", "UiConfig", "start_status_page"]
