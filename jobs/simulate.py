"""Land simulated event shards into a landing zone at a steady rate (``freshrank simulate``).

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/simulate.py --landing-path /data/landing --events-per-second 2000

Runs until ``--duration-s``, ``--max-shards`` or ``ray job stop`` (SIGTERM), whichever comes
first; then it marks the landing zone done and prints its stats as JSON. It needs no Ray.
``python jobs/simulate.py --help`` explains every option.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Parse the producer's options and run it."""
    from freshrank.apps.cli import main as cli_main

    return cli_main(["simulate", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
