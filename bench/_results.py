"""Write a benchmark's tables into ``bench/RESULTS.md`` under ``## <issue>`` / ``### <name>``.

The file is created when absent; an existing ``## <issue>`` section gets the subsection
replaced (same name) or appended; other sections are left as they are.

>>> text = write_section_text("# Results\\n\\n## Other\\n\\nx\\n", "Issue 4", "Swap", "t1")
>>> text = write_section_text(text, "Issue 4", "Serving", "s1")
>>> text = write_section_text(text, "Issue 4", "Swap", "t2")
>>> print(text, end="")
# Results
<BLANKLINE>
## Other
<BLANKLINE>
x
<BLANKLINE>
## Issue 4
<BLANKLINE>
### Swap
<BLANKLINE>
t2
<BLANKLINE>
### Serving
<BLANKLINE>
s1
<BLANKLINE>
"""

from __future__ import annotations

import re
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def _block(text: str, heading: str, level: int, start: int = 0, end: int | None = None):
    """(start, end) of the block starting with ``heading`` at ``level`` in text[start:end]."""
    end = len(text) if end is None else end
    prefix = "#" * level + " "
    m = re.compile(rf"^{re.escape(prefix + heading)}[ \t]*$", re.M).search(text, start, end)
    if m is None:
        return None
    nxt = re.compile(rf"^#{{1,{level}}} ", re.M).search(text, m.end(), end)
    return m.start(), nxt.start() if nxt else end


def write_section_text(text: str, issue: str, name: str, body: str) -> str:
    """``text`` with ``### name`` under ``## issue`` set to ``body``."""
    sub = f"### {name}\n\n{body.strip()}\n\n"
    issue_block = _block(text, issue, 2)
    if issue_block is None:
        return text.rstrip("\n") + f"\n\n## {issue}\n\n" + sub
    s, e = issue_block
    inner = _block(text, name, 3, s, e)
    if inner is None:
        return text[:e].rstrip("\n") + "\n\n" + sub + text[e:]
    return text[: inner[0]] + sub + text[inner[1] :]


def write_section(issue: str, name: str, body: str, path: Path = RESULTS) -> Path:
    """Write ``body`` into ``path`` (see module docstring); returns the path."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    path.write_text(write_section_text(text, issue, name, body).rstrip("\n") + "\n")
    return path
