"""The long-lived incremental trainer (``freshrank train``)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Parse the trainer's options and run it on the connected (or a new local) Ray."""
    from freshrank.cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
