"""Land simulated event shards into a landing zone at a steady rate (``freshrank simulate``)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Parse the producer's options and run it."""
    from freshrank.cli import main as cli_main

    return cli_main(["simulate", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
