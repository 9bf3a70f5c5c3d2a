"""The long-lived incremental trainer (``freshrank train``), as a Ray job.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/train.py --landing /data/landing --registry /data/registry

Inside ``ray job submit`` it joins the job's cluster ($RAY_ADDRESS); run directly it starts a
local Ray on 127.0.0.1. ``python jobs/train.py --help`` explains every option. ``ray job stop``
(SIGTERM) makes it finish and checkpoint the window it is on, then exit 0.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Parse the trainer's options and run it on the connected (or a new local) Ray."""
    from freshrank.apps.cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
