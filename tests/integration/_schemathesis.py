"""schemathesis against a live ranking app's OpenAPI document (both ingress modes use it)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

CONFIG = Path(__file__).with_name("schemathesis.toml")
"""413 counts as a rejection (the body limit); otherwise schemathesis' defaults."""

MAX_EXAMPLES = 30
"""Generated cases per operation and phase (bounded: the run takes tens of seconds)."""


def run_schemathesis(base_url: str, out: Path) -> dict[str, int]:
    """``schemathesis run <base>/openapi.json --checks all`` (positive and negative data, a
    fixed seed); returns the JUnit counts and fails the test with schemathesis' own report
    when any check failed."""
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("schemathesis is not installed (it is in the dev extras: make venv)")
    junit = out / "schemathesis.xml"
    done = subprocess.run(
        [exe, "--config-file", str(CONFIG), "run", f"{base_url}/openapi.json", "--url", base_url]
        + ["--checks", "all", "--mode", "all", "--max-examples", str(MAX_EXAMPLES)]
        + ["--seed", "17", "--workers", "2", "--request-timeout", "20"]
        + ["--report", "junit", "--report-junit-path", str(junit), "--no-color"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert junit.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    assert suite is not None
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    (out / "schemathesis.txt").write_text(done.stdout + done.stderr)
    readable = "\n".join(line[:300] for line in done.stdout.splitlines())  # bodies can be huge
    assert done.returncode == 0 and counts["failures"] == counts["errors"] == 0, (
        f"{counts}\n{readable[-6000:]}"
    )
    summary = [line for line in done.stdout.splitlines() if "generated" in line or "passed" in line]
    print(f"schemathesis {base_url}: {counts}; {' | '.join(summary[-3:])}")  # shown with -s
    return counts
