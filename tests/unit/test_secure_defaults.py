"""Secure defaults, by inspection: nothing in platform/, jobs/, serve_apps/ or cluster/ binds all
interfaces unless configured to; the Serve config pins its proxy to loopback (Serve's own default
for a config file is all interfaces); the local head keeps token auth and loopback; checkpoints
are never unpickled; request bodies are bounded. tests/e2e/test_newcomer_path.py checks the
sockets of a real head; cluster/kuberay is checked in test_kuberay_manifests.py (in a pod the
Kubernetes Service, ClusterIP only, is the boundary)."""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCANNED = [
    "platform",
    "jobs",
    "serve_apps",
    "cluster/local",
    "cluster/prometheus",
    "cluster/grafana",
]
ALL_INTERFACES = {"0.0.0.0", "::", "[::]", "*"}
HOST_NAMES = {"host", "addr", "address", "bind", "dashboard_host", "http_host", "ip", "listen"}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _files(suffixes: tuple[str, ...]) -> list[Path]:
    out = []
    for top in SCANNED:
        out += [p for p in (ROOT / top).rglob("*") if p.suffix in suffixes and p.is_file()]
    return sorted(p for p in out if "__pycache__" not in p.parts)


def python_binds_everywhere(source: str) -> list[str]:
    """Places in Python source that bind (or default to binding) all interfaces."""
    tree = ast.parse(source)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) not in docstrings and node.value.strip() in ALL_INTERFACES - {"*"}:
                found.append(f"line {node.lineno}: {node.value!r}")
        elif isinstance(node, ast.keyword) and node.arg in HOST_NAMES:
            if isinstance(node.value, ast.Constant) and node.value.value == "":
                found.append(f"line {node.value.lineno}: {node.arg}=''")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args.args + node.args.kwonlyargs
            defaults = [None] * (len(node.args.args) - len(node.args.defaults))
            defaults += node.args.defaults + node.args.kw_defaults
            for arg, default in zip(args, defaults, strict=True):
                if (
                    arg.arg in HOST_NAMES
                    and isinstance(default, ast.Constant)
                    and isinstance(default.value, str)
                    and default.value not in LOOPBACK
                ):
                    found.append(f"line {arg.lineno}: {arg.arg}={default.value!r}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "bind"
            and node.args
            and isinstance(node.args[0], ast.Tuple)
            and isinstance(node.args[0].elts[0], ast.Constant)
            and node.args[0].elts[0].value == ""
        ):
            found.append(f"line {node.lineno}: bind(('', ...))")
    return found


def text_binds_everywhere(text: str) -> list[str]:
    """Lines of a shell/YAML/JSON file that name an all-interfaces address (comments ignored)."""
    found = []
    for n, line in enumerate(text.splitlines(), 1):
        code = re.sub(r"(^|\s)#.*$", "", line)
        if re.search(r"0\.0\.0\.0|\[::\]|listen-address=:|--host[= ]+['\"]?::", code):
            found.append(f"line {n}: {line.strip()}")
    return found


def test_the_scanners_have_teeth():
    bad_python = (
        "def serve(port, host='0.0.0.0'):\n"
        "    '''Binds 0.0.0.0 -- docstrings may say so.'''\n"
        "    start(addr='')\n"
        "    s.bind(('', port))\n"
        "    run(host='::')\n"
    )
    assert set(python_binds_everywhere(bad_python)) == {
        "line 1: '0.0.0.0'",
        "line 1: host='0.0.0.0'",
        "line 3: addr=''",
        "line 4: bind(('', ...))",
        "line 5: '::'",
    }
    assert python_binds_everywhere("def ok(host='127.0.0.1'):\n    bind(('127.0.0.1', 0))\n") == []
    assert text_binds_everywhere(
        "ray start --dashboard-host 0.0.0.0\n# 0.0.0.0 in a comment\n"
    ) == ["line 1: ray start --dashboard-host 0.0.0.0"]
    assert text_binds_everywhere("--web.listen-address=:9090\n") == [
        "line 1: --web.listen-address=:9090"
    ]


@pytest.mark.parametrize("path", _files((".py",)), ids=lambda p: str(p.relative_to(ROOT)))
def test_python_never_binds_all_interfaces_by_default(path):
    assert python_binds_everywhere(path.read_text()) == []


@pytest.mark.parametrize(
    "path", _files((".sh", ".yaml", ".yml", ".json")), ids=lambda p: str(p.relative_to(ROOT))
)
def test_scripts_and_configs_never_bind_all_interfaces(path):
    assert text_binds_everywhere(path.read_text()) == []


def test_serve_config_pins_the_proxy_to_loopback():
    """Serve's config schema defaults http_options.host to all interfaces, unlike `serve run`:
    ranking.yaml must say 127.0.0.1 itself."""
    from ray.serve.schema import HTTPOptionsSchema

    assert HTTPOptionsSchema().host == "0.0.0.0"  # the trap this guards against
    config = yaml.safe_load((ROOT / "serve_apps" / "ranking.yaml").read_text())
    assert config["http_options"]["host"] == "127.0.0.1"


def test_local_head_keeps_loopback_and_token_auth():
    script = (ROOT / "cluster" / "local" / "start.sh").read_text()
    assert "--dashboard-host 127.0.0.1" in script
    assert "NODE_IP=${FRESHRANK_NODE_IP:-127.0.0.1}" in script
    assert "export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0" in script
    assert "export RAY_AUTH_MODE=token" in script
    assert "RAY_AUTH_MODE=disabled" not in script
    assert "ray stop" not in re.sub(r"#.*", "", (ROOT / "cluster/local/stop.sh").read_text())


def test_in_process_ray_binds_loopback():
    import inspect

    from freshrank.ops import runtime

    source = inspect.getsource(runtime.init_ray)
    assert 'dashboard_host="127.0.0.1"' in source
    assert "_single_node_mode()" in source and "secure_auth_token()" in source
    assert 'os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"' in inspect.getsource(
        runtime._single_node_mode
    )


@functools.cache
def _library_trees() -> tuple[tuple[Path, ast.Module], ...]:
    paths = sorted((ROOT / "platform" / "freshrank").rglob("*.py"))
    return tuple((path, ast.parse(path.read_text())) for path in paths)


def _calls(name: str) -> list[tuple[Path, ast.Call]]:
    out = []
    for path, tree in _library_trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                dotted = (
                    f"{func.value.id}.{func.attr}"
                    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                    else getattr(func, "id", "")
                )
                if dotted == name:
                    out.append((path, node))
    return out


def test_checkpoints_never_unpickle():
    """torch.load only with weights_only=True, np.load only with allow_pickle=False, and no
    pickle loads anywhere in the library."""
    loads = _calls("torch.load")
    assert loads, "expected the registry to load weights with torch.load"
    for path, call in loads:
        kw = {k.arg: k.value for k in call.keywords}
        assert (
            isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
        ), path
    for path, call in _calls("np.load"):
        kw = {k.arg: k.value for k in call.keywords}
        assert (
            isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value is False
        ), path
    for name in ("pickle.load", "pickle.loads", "cloudpickle.load", "cloudpickle.loads"):
        assert _calls(name) == [], name


def test_request_bodies_are_bounded():
    from freshrank.serving.app import RankingAppConfig
    from freshrank.serving.limits import DEFAULT_MAX_BODY_BYTES

    assert 0 < RankingAppConfig(registry="r").max_body_bytes == DEFAULT_MAX_BODY_BYTES <= 1 << 20
    config = yaml.safe_load((ROOT / "serve_apps" / "ranking.yaml").read_text())
    assert config["applications"][0]["args"]["max_body_bytes"] <= 1 << 20
