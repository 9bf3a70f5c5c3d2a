"""Imports inside the library point one way, down through the layers (DESIGN.md, "Layout").

Every ``import``/``from ... import`` of a freshrank module in platform/freshrank is checked,
at module level and inside functions alike (a function-local import is still an import), and
so are ``importlib.import_module("freshrank...")`` calls with a literal name. A package may
import itself and any package of a lower layer, nothing else; two packages of one layer do not
import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "platform" / "freshrank"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("core",),
    ("events",),
    ("features",),
    ("model",),
    ("evaluation", "drift"),
    ("registry",),
    ("learn",),
    ("serving",),
    ("ops",),
    ("apps",),
)
"""Bottom to top. The package root (``freshrank/__init__.py``) re-exports lazily from below."""

RANK = {package: rank for rank, layer in enumerate(LAYERS) for package in layer}
MAX_LINES = 600
LONG_FILES_WITH_A_REASON = "over 600 lines because"


def _module_of(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, module) for every freshrank module ``path`` imports, wherever the import is."""
    module = _module_of(path, root)
    is_package = path.name == "__init__.py"
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                keep = len(base) - node.level + (1 if is_package else 0)
                target = ".".join(base[:keep] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if _package(target) is None:  # `from freshrank import events`
                found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, target))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return [(line, name) for line, name in found if name.split(".")[0] == "freshrank"]


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _violations(root: Path) -> list[str]:
    problems = []
    for path in sorted(root.rglob("*.py")):
        own = _package(_module_of(path, root))
        if own is None:
            continue  # the package root: lazy re-exports of the public surface
        if own not in RANK:
            problems.append(f"{path}: package {own!r} is in no layer of LAYERS")
            continue
        for line, target in _imported(path, root):
            other = _package(target)
            if other is None or other == own:
                continue
            if other not in RANK:
                problems.append(f"{path}:{line}: imports {target}, in no layer")
            elif RANK[other] >= RANK[own]:
                problems.append(
                    f"{path}:{line}: {own} (layer {RANK[own]}) imports {target} "
                    f"(layer {RANK[other]}): imports must point down"
                )
    return sorted(set(problems))


def test_every_package_is_in_a_layer() -> None:
    packages = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in ROOT.glob("*.py") if p.name != "__init__.py"}
    assert modules == set(), f"top-level modules belong in a package: {sorted(modules)}"
    assert packages == set(RANK), (
        f"packages without a layer: {sorted(packages - set(RANK))}; "
        f"layers naming no package: {sorted(set(RANK) - packages)}"
    )


def test_imports_point_down() -> None:
    problems = _violations(ROOT)
    assert problems == [], "\n".join(problems)


def test_the_check_sees_local_and_upward_imports(tmp_path: Path) -> None:
    """The checker itself: a function-local upward import and a same-layer import both fail."""
    lib = tmp_path / "freshrank"
    for package in ("core", "drift", "evaluation"):
        (lib / package).mkdir(parents=True)
        (lib / package / "__init__.py").write_text("")
    (lib / "core" / "bad.py").write_text(
        "def f():\n    from freshrank.drift.monitor import DriftMonitor\n    return DriftMonitor\n"
    )
    (lib / "drift" / "side.py").write_text("from freshrank.evaluation import roc_auc\n")
    (lib / "drift" / "ok.py").write_text("from freshrank.core import storage\nfrom . import side\n")
    (lib / "evaluation" / "dyn.py").write_text(
        "import importlib\nimportlib.import_module('freshrank.drift.side')\n"
    )
    problems = _violations(lib)
    assert len(problems) == 3, problems
    assert any("core/bad.py:2" in p and "must point down" in p for p in problems)
    assert any("drift/side.py:1" in p for p in problems)
    assert any("evaluation/dyn.py:2" in p for p in problems)


@pytest.mark.parametrize("path", sorted(ROOT.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_library_file_is_long_without_a_reason(path: Path) -> None:
    text = path.read_text()
    lines = len(text.splitlines())
    assert lines <= MAX_LINES or LONG_FILES_WITH_A_REASON in text, (
        f"{path.relative_to(ROOT)} has {lines} lines: split it, or say in its docstring why it "
        f"is {LONG_FILES_WITH_A_REASON} ..."
    )
