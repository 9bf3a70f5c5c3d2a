"""docs/observability.md lists every catalogue metric, exactly as the catalogue defines it."""

from __future__ import annotations

from pathlib import Path

from freshrank.core import CATALOGUE
from freshrank.core.telemetry import catalogue_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "observability.md"


def catalogue_section() -> str:
    text = DOC.read_text()
    start = text.index("<!-- catalogue:start -->") + len("<!-- catalogue:start -->")
    end = text.index("<!-- catalogue:end -->")
    return text[start:end].strip()


def test_doc_table_is_the_generated_catalogue():
    assert catalogue_section() == catalogue_markdown(), (
        "docs/observability.md is out of date; paste the output of "
        "python -c 'from freshrank.core.telemetry import catalogue_markdown; "
        "print(catalogue_markdown())' between its catalogue markers"
    )


def test_doc_lists_every_catalogue_metric_once():
    rows = [line for line in catalogue_section().splitlines() if line.startswith("| `")]
    names = [row.split("`")[1] for row in rows]
    assert names == [spec.name for spec in CATALOGUE]
