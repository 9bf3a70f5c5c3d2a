"""Backtest update strategies on a time-ordered log (``python jobs/backtest.py --help``).

Examples::

    python jobs/backtest.py --data simulator --sim-periods 8 --shift-at 4
    python jobs/backtest.py --data diginetica --periods 0-16 --train-candidates 3
    python jobs/backtest.py --data parquet --parquet week1.parquet week2.parquet week3.parquet

Runs in one process (no Ray needed) and writes report.md, report.json and PNG plots into
``--output-dir`` (default ``bench/out/backtest-<name>``).
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    """Parse options, run the backtest, print the table and where the report went."""
    from freshrank.learn.backtest import add_arguments, config_from_args, run_backtest

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    report = run_backtest(config_from_args(parser.parse_args(argv)))
    print(report.markdown())
    if report.output_dir is not None:
        print(f"\nreport: {report.output_dir}/ ({', '.join(report.files)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
