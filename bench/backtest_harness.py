"""The backtest harness of the benchmarks: tqdm progress, markdown reports, JSON and PNG plots.

The library runs a backtest and returns the figures (``freshrank.learn.backtest``); this file
turns them into what ``bench/RESULTS.md`` and a reader want to see, in
``bench/out/backtest-<name>/`` by default:

* ``report.md``: the comparison table (means over the tested periods, BWT, events trained
  against joint retraining, wall time), recall by item age and per-period tables;
* ``report.json``: ``BacktestReport.to_dict()``;
* PNG plots of the prequential metrics per period.

Run on its own it takes the options of ``freshrank backtest`` plus ``--output-dir`` and
``--no-report``::

    python bench/backtest_harness.py --data simulator --sim-periods 8 --shift-at 4

``bench/bench_backtest.py`` uses :func:`run` with the configurations measured for RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from freshrank.apps.backtest_cli import add_arguments, config_from_args
from freshrank.events.adapters.diginetica import available_periods, default_data_dir
from freshrank.learn.backtest import (
    ITEM_AGE_CLASSES,
    BacktestConfig,
    BacktestProgress,
    BacktestReport,
    Schedule,
    Spread,
    run_backtest,
)

OUT = Path(__file__).resolve().parent / "out"
"""Where reports go unless told otherwise (``bench/out``, ignored by git)."""


def diginetica_directory(path: str | None, tool: str) -> Path | None:
    """The DIGINETICA directory a bench reads (``path`` or ``../shared/data/diginetica``), or
    None, with a message saying why, when it holds no periods (a user's clone has none)."""
    directory = Path(path) if path else default_data_dir()
    if available_periods(directory):
        return directory
    print(
        f"[{tool}] DIGINETICA skipped: no period_*.txt in {directory} (working directory "
        f"{Path.cwd()}; pass --diginetica DIR or set FRESHRANK_DIGINETICA; see "
        "../shared/data/diginetica/SOURCE.md)"
    )
    return None


def default_output_dir(name: str) -> Path:
    """``bench/out/backtest-<name>``."""
    return OUT / f"backtest-{name}"


@dataclass(frozen=True)
class HarnessRun:
    """A backtest's result and the report files written for it."""

    report: BacktestReport
    output_dir: Path | None
    files: tuple[str, ...]


def run(
    config: BacktestConfig,
    output_dir: str | Path | None = None,
    progress: bool = True,
    write: bool = True,
) -> HarnessRun:
    """Run ``config`` with a tqdm bar (``progress``) and write its report into ``output_dir``
    (default :func:`default_output_dir`) unless ``write`` is False."""
    bar = TqdmProgress(config.name) if progress else None
    try:
        report = run_backtest(config, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    if not write:
        return HarnessRun(report, None, ())
    directory = Path(output_dir) if output_dir is not None else default_output_dir(config.name)
    return HarnessRun(report, directory, write_report(report, directory))


class TqdmProgress:
    """A progress callback for ``run_backtest`` that drives a tqdm bar (made on first use)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._bar: Any = None

    def __call__(self, p: BacktestProgress) -> None:
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=p.total, desc=self.name, unit="period", dynamic_ncols=True)
        self._bar.set_description(f"{p.arm} {p.period}")
        self._bar.update(p.done - self._bar.n)
        recall = {k: f"{v:.3f}" for k, v in p.metrics.items() if k.startswith("recall@")}
        self._bar.set_postfix({k: v for k, v in recall.items() if " " not in k})

    def close(self) -> None:
        """Close the bar (if one was made)."""
        if self._bar is not None:
            self._bar.close()


# ------------------------------------------------------------------------------------ markdown


def comparison_markdown(report: BacktestReport) -> str:
    """The comparison table (means over the tested periods)."""
    k = report.k
    metrics = [f"recall@{k}", f"mrr@{k}", "auc", "gauc", "ndcg@10", "logloss"]
    joint = next((a for a in report.arms if a.schedule is Schedule.JOINT), None)
    head = (
        "| strategy | "
        + " | ".join(_label(m) for m in metrics)
        + f" | BWT {_label(f'recall@{k}')} | BWT AUC | events trained | vs joint | wall s |"
    )
    lines = [head, "|" + "---|" * (len(metrics) + 6)]
    for a in report.arms:
        mean = a.mean
        ratio = (
            f"{a.events_trained / joint.events_trained:.1%}"
            if joint is not None and joint.events_trained
            else "—"
        )
        cells = [_fmt(mean.get(m)) for m in metrics]
        cells += [_fmt(a.bwt(f"recall@{k}"), signed=True), _fmt(a.bwt("auc"), signed=True)]
        cells += [f"{a.events_trained:,}", ratio, f"{a.wall_s:.1f}"]
        lines.append(f"| {a.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def spread_markdown(reports: Sequence[BacktestReport], baseline: str = "finetune") -> str:
    """The comparison table over seeds: per arm, each figure's mean [min, max] over
    ``reports`` (one per seed, same arms), and whether it is above or below ``baseline``
    beyond noise (the ranges do not overlap) or within noise, on Recall@K and MRR@K."""
    k = reports[0].k
    metrics = [f"recall@{k}", f"mrr@{k}", "auc", "gauc", "ndcg@10"]
    judged = metrics[:2]
    head = (
        "| strategy | "
        + " | ".join(_label(m) for m in metrics)
        + f" | BWT {_label(f'recall@{k}')} | events vs joint | vs {baseline} |"
    )
    lines = [head, "|" + "---|" * (len(metrics) + 4)]
    names = [a.name for a in reports[0].arms]
    joint = next((a.name for a in reports[0].arms if a.schedule is Schedule.JOINT), None)

    def spread(name: str, metric: str) -> Spread:
        if metric == "bwt":
            return Spread.of([r.arm(name).bwt(f"recall@{k}") for r in reports])
        return Spread.of([r.arm(name).mean[metric] for r in reports])

    for name in names:
        cells = [_spread(spread(name, m)) for m in metrics]
        cells.append(_spread(spread(name, "bwt"), signed=True))
        ratio = "—"
        if joint is not None:
            shares = [r.arm(name).events_trained / r.arm(joint).events_trained for r in reports]
            ratio = f"{np.mean(shares):.1%}"
        if name == baseline or baseline not in names:
            verdict = "—"
        else:
            verdict = ", ".join(
                f"{_label(m)}: {spread(name, m).compare(spread(baseline, m))}" for m in judged
            )
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ratio} | {verdict} |")
    return "\n".join(lines)


def _spread(s: Spread, signed: bool = False) -> str:
    if not math.isfinite(s.mean):
        return "—"
    f = "{:+.4f}" if signed else "{:.4f}"
    return f"{f.format(s.mean)} [{f.format(s.low)}, {f.format(s.high)}]"


def item_age_markdown(report: BacktestReport) -> str:
    """Recall@K of clicks by how recently their item first appeared in training data."""
    k = report.k
    names = [n for n, _, _ in ITEM_AGE_CLASSES]
    clicks = report.arms[0].clicks_by_item_age() if report.arms else dict.fromkeys(names, 0)
    head = " | ".join(f"Recall@{k} {n} ({clicks[n]:,} clicks)" for n in names)
    lines = [f"| strategy | {head} |", "|" + "---|" * (len(names) + 1)]
    for a in report.arms:
        recall = a.recall_by_item_age(k)
        lines.append(f"| {a.name} | " + " | ".join(_fmt(recall[n]) for n in names) + " |")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------- files


_PLOT_METRICS = ("recall@{k}", "mrr@{k}", "auc", "gauc")


def write_report(report: BacktestReport, directory: str | Path) -> tuple[str, ...]:
    """Write ``report.md``, ``report.json`` and PNG plots into ``directory``; their names."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    md = out / "report.md"
    md.write_text(_markdown_document(report) + "\n")
    files.append(md.name)
    js = out / "report.json"
    js.write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    files.append(js.name)
    files.extend(_plots(report, out))
    return tuple(files)


def _markdown_document(report: BacktestReport) -> str:
    lines = [
        f"# Backtest: {report.name}",
        "",
        f"Periods: {', '.join(report.periods)} (update on p-1, test on p; means over "
        f"{len(report.periods) - 1} tested periods). BWT: backward transfer on held-out slices "
        "(negative = forgetting). Events trained: rows through forward/backward.",
        "",
        comparison_markdown(report),
        "",
    ]
    lines += [
        "## New items",
        "",
        "Clicks grouped by when their item first appeared in a training table: in the last "
        "update window (new), earlier (older), or never (unseen); pooled over tested periods.",
        "",
        item_age_markdown(report),
        "",
    ]
    for m in (f"recall@{report.k}", "auc"):
        lines += [f"## Prequential {_label(m)} per period", "", _per_period_table(report, m), ""]
    return "\n".join(lines)


def _per_period_table(report: BacktestReport, metric: str) -> str:
    tested = report.periods[1:]
    lines = ["| strategy | " + " | ".join(tested) + " |", "|" + "---|" * (len(tested) + 1)]
    for a in report.arms:
        cells = [_fmt(m.get(metric)) for m in a.prequential]
        lines.append(f"| {a.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plots(report: BacktestReport, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt  # imported here: the Agg backend must be chosen first

    files = []
    x = np.arange(1, len(report.periods))
    labels = list(report.periods[1:])
    metrics = [m.format(k=report.k) for m in _PLOT_METRICS]
    fig, axes = plt.subplots(2, 2, figsize=(13, 8), sharex=True)
    for ax, metric in zip(axes.ravel(), metrics, strict=True):
        for a in report.arms:
            ax.plot(x, [m.get(metric, np.nan) for m in a.prequential], marker=".", label=a.name)
        ax.set_title(f"prequential {_label(metric)}")
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xticks(x, labels, rotation=45 if len(x) > 8 else 0)
        ax.set_xlabel("tested period")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"backtest {report.name}")
    fig.tight_layout()
    path = out / "metrics_per_period.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    files.append(path.name)
    for metric in metrics:
        fig, ax = plt.subplots(figsize=(9, 4.5))
        for a in report.arms:
            ax.plot(x, [m.get(metric, np.nan) for m in a.prequential], marker=".", label=a.name)
        ax.set_xticks(x, labels, rotation=45 if len(x) > 8 else 0)
        ax.set_ylabel(_label(metric))
        ax.set_xlabel("tested period")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"prequential_{metric.replace('@', '_at_')}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        files.append(path.name)
    return files


def _label(metric: str) -> str:
    names = {"auc": "AUC", "gauc": "GAUC", "logloss": "log loss"}
    if metric in names:
        return names[metric]
    head, _, k = metric.partition("@")
    return {"recall": "Recall", "mrr": "MRR", "ndcg": "NDCG"}.get(head, head) + (
        f"@{k}" if k else ""
    )


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run a backtest from the command line; print the table and where the report went."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--output-dir", default=None, help="default: bench/out/backtest-<name>")
    parser.add_argument(
        "--report",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write report.md, report.json and the plots",
    )
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    result = run(config, args.output_dir, progress=args.progress, write=args.report)
    print(comparison_markdown(result.report))
    if result.output_dir is not None:
        print(f"\nreport: {result.output_dir}/ ({', '.join(result.files)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
