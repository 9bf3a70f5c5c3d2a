"""Backtest update strategies on a time-ordered log (``python jobs/backtest.py --help``).

Examples::

    python jobs/backtest.py --data simulator --sim-periods 8 --shift-at 4
    python jobs/backtest.py --data diginetica --periods 0-16 --train-candidates 3
    python jobs/backtest.py --data parquet --parquet week1.parquet week2.parquet week3.parquet

The ``freshrank backtest`` command as a ``ray job submit`` entrypoint: it runs in one process
(no Ray needed), prints progress lines and a JSON summary, and ``--output FILE`` writes the
whole result as JSON. Markdown reports and plots: ``python bench/backtest_harness.py``.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Parse options, run the backtest, print the JSON summary."""
    from freshrank.apps.backtest_cli import main as backtest_main

    return backtest_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
