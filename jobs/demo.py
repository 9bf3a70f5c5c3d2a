"""The main job: the whole freshrank loop on a local Ray (``make demo``).

Also runs under ``ray job submit --working-dir . -- python jobs/demo.py --address auto``.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Parse the demo's options and run it."""
    from freshrank.apps.cli import main as cli_main

    return cli_main(["demo", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
