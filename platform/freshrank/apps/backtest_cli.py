"""``freshrank backtest``: replay a time-ordered log through update strategies, print JSON.

    freshrank backtest --data simulator --sim-periods 8 --shift-at 4
    freshrank backtest --data diginetica --periods 0-16 --train-candidates 3 --output r.json
    freshrank backtest --data parquet --parquet week1.parquet week2.parquet week3.parquet
    freshrank backtest --data diginetica --select --jobs 2

``--select`` chooses a strategy honestly: it searches strategies and their knobs on the first
half of the tested periods only (``--selection-periods``), over ``--seeds``, then reports the
choice once on the later periods and prints the ``freshrank train`` options that run it live
(``learn.backtest.selection``).

Runs in this process (no Ray; ``jobs/backtest.py`` submits it as a Ray job). Progress lines go
to stderr; stdout gets a JSON summary (per arm: mean prequential metrics, backward transfer,
events trained, time); ``--output FILE`` also writes the whole result
(``BacktestReport.to_dict()``: every period's metrics and the accuracy matrices). Markdown
reports and plots are the bench harness's (``python bench/backtest_harness.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from freshrank.events.adapters.diginetica import DigineticaConfig, NegativeSampling
from freshrank.events.simulator import SimulatorConfig
from freshrank.features.encode import FeatureConfig
from freshrank.learn.backtest import (
    ARM_NAMES,
    DEFAULT_ARM_NAMES,
    BacktestConfig,
    BacktestProgress,
    BacktestReport,
    DataSource,
    DigineticaData,
    ParquetData,
    SelectionConfig,
    SelectionReport,
    SimulatorData,
    Spread,
    arms_from_names,
    default_candidates,
    run_backtest,
    run_selection,
)
from freshrank.learn.strategies import EWCConfig, LwFConfig, ReplayConfig
from freshrank.model.config import RankerConfig

__all__ = [
    "add_arguments",
    "add_backtest_command",
    "config_from_args",
    "main",
    "parse_periods",
    "selection_config_from_args",
    "selection_text",
    "summary",
]


def add_backtest_command(sub: Any) -> None:
    """Add ``backtest`` to the ``freshrank`` command's subparsers."""
    parser = sub.add_parser(
        "backtest",
        help="replay a time-ordered log through update strategies (no Ray)",
        description=__doc__.splitlines()[0],
    )
    add_arguments(parser)
    _add_output(parser)
    parser.set_defaults(func=_cmd_backtest)


def main(argv: Sequence[str] | None = None) -> int:
    """``freshrank backtest`` on its own (what ``jobs/backtest.py`` runs)."""
    parser = argparse.ArgumentParser(prog="backtest", description=__doc__.splitlines()[0])
    add_arguments(parser)
    _add_output(parser)
    args = parser.parse_args(argv)
    try:
        return _cmd_backtest(args)
    except ValueError as exc:  # configuration errors: say what is wrong, no traceback
        parser.error(str(exc))
        return 2


def summary(report: BacktestReport) -> dict[str, Any]:
    """The JSON summary printed by ``freshrank backtest``: per arm the mean prequential
    metrics, backward transfer of every metric, events trained and time (NaN as null)."""
    full = report.to_dict()
    return {
        "name": full["name"],
        "periods": full["periods"],
        "k": full["k"],
        "events_per_period": full["events_per_period"],
        "arms": [
            {
                key: arm[key]
                for key in ("name", "schedule", "mean", "bwt", "events_trained", "new_events")
            }
            | {"rows_scored": arm["rows_scored"], "wall_s": arm["train_s"] + arm["eval_s"]}
            for arm in full["arms"]
        ],
    }


def _add_output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output",
        default=None,
        metavar="FILE",
        help="also write the whole result as JSON (every period's metrics, accuracy matrices)",
    )


def _cmd_backtest(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.select:
        return _cmd_select(args, config)
    report = run_backtest(config, progress=_print_progress if args.progress else None)
    if args.output:
        path = Path(args.output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report.to_dict(), indent=1) + "\n")
        print(f"[freshrank backtest] wrote {path}", file=sys.stderr, flush=True)
    print(json.dumps(summary(report), indent=2), flush=True)
    return 0


def _cmd_select(args: argparse.Namespace, config: BacktestConfig) -> int:
    selection = selection_config_from_args(args)
    say = _log if args.progress else None
    report = run_selection(config, selection, progress=say)
    if args.output:
        path = Path(args.output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report.to_dict(), indent=1) + "\n")
        _log(f"wrote {path}")
    print(selection_text(report), file=sys.stderr, flush=True)
    print(json.dumps(report.to_dict(), indent=2), flush=True)
    return 0


def selection_config_from_args(args: argparse.Namespace) -> SelectionConfig:
    """A :class:`SelectionConfig` from the ``--select`` options."""
    seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    rates = tuple(float(r) for r in args.select_learning_rates.split(",") if r.strip())
    return SelectionConfig(
        selection_periods=args.selection_periods,
        seeds=seeds,
        candidates=default_candidates(),
        learning_rates=rates,
        metrics=tuple(m.strip() for m in args.select_metrics.split(",") if m.strip()),
        max_events_vs_joint=args.max_events_vs_joint,
        jobs=args.jobs,
    )


def _spread(s: Spread, digits: int = 4) -> str:
    return f"{s.mean:.{digits}f} [{s.low:.{digits}f}, {s.high:.{digits}f}]"


def selection_text(report: SelectionReport) -> str:
    """What ``--select`` prints for people: every candidate on the selection periods, the
    choice on the test periods beside fine-tuning and joint, and the command to run it live."""
    m = report.metrics
    w = max(len(n) for n in [c.name for c in report.candidates] + list(report.final)) + 1
    lines = [
        f"selection periods {report.selection_periods[0]}-{report.selection_periods[-1]}, "
        f"test periods {report.test_periods[0]}-{report.test_periods[-1]}, "
        f"seeds {', '.join(map(str, report.seeds))} (mean [min, max])",
        "",
        "on the selection periods:",
        f"  {'finetune':<{w}} " + "  ".join(f"{k} {_spread(report.baseline[k])}" for k in m),
        f"  {'joint':<{w}} " + "  ".join(f"{k} {_spread(report.reference[k])}" for k in m),
    ]
    for c in report.candidates:
        verdict = ", ".join(f"{k}: {v}" for k, v in c.versus_baseline.items())
        lines.append(
            f"  {c.name:<{w}} "
            + "  ".join(f"{k} {_spread(c.figures[k])}" for k in m)
            + f"  gap closed {c.score:+.0%}  events {c.events_vs_joint:.1%} of joint"
            + f"  vs finetune: {verdict}"
        )
    lines += ["", report.message + ".", "", "on the test periods (reported once, after choosing):"]
    base = report.final["finetune"]["test"]
    for name, halves in report.final.items():
        test = halves["test"]
        verdict = (
            ""
            if name == "finetune"
            else "  vs finetune: " + ", ".join(f"{k}: {test[k].compare(base[k])}" for k in m)
        )
        lines.append(
            f"  {name:<{w}} "
            + "  ".join(f"{k} {_spread(test[k])}" for k in m)
            + f"  events {report.events_vs_joint[name]['test']:.1%} of joint{verdict}"
        )
    flags = " ".join(report.train_flags())
    lines += [
        "",
        "run it live:",
        f"  freshrank train --landing LANDING --registry REGISTRY {flags}",
    ]
    return "\n".join(lines)


def _log(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} [freshrank backtest] {line}", file=sys.stderr, flush=True)


def _print_progress(p: BacktestProgress) -> None:
    recall = "".join(
        f" {k} {v:.4f}" for k, v in p.metrics.items() if k.startswith("recall@") and " " not in k
    )
    stamp = time.strftime("%H:%M:%S")
    print(
        f"{stamp} [freshrank backtest] {p.done}/{p.total} {p.arm} tested on {p.period}:"
        f" auc {p.metrics.get('auc', float('nan')):.4f}{recall}",
        file=sys.stderr,
        flush=True,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The backtest's options (``freshrank backtest``, ``jobs/backtest.py`` and the bench
    harness, which adds its report options)."""
    parser.add_argument(
        "--data", choices=("simulator", "diginetica", "parquet"), default="simulator"
    )
    parser.add_argument("--name", default=None, help="report name (default: the data source)")
    parser.add_argument(
        "--arms",
        default=",".join(DEFAULT_ARM_NAMES),
        help=f"comma-separated arms from {', '.join(ARM_NAMES)} (default: %(default)s)",
    )
    parser.add_argument("--window", type=int, default=3, help="sliding-window retrain periods")
    parser.add_argument("--replay-capacity", type=int, default=ReplayConfig.capacity)
    parser.add_argument("--replay-ratio", type=float, default=ReplayConfig.mix_ratio)
    parser.add_argument("--ewc-lambda", type=float, default=EWCConfig.lam)
    parser.add_argument("--ewc-decay", type=float, default=EWCConfig.decay)
    parser.add_argument("--lwf-alpha", type=float, default=LwFConfig.alpha)
    parser.add_argument("--lwf-temperature", type=float, default=LwFConfig.temperature)
    parser.add_argument("--batch-size", type=int, default=BacktestConfig.batch_size)
    parser.add_argument("--learning-rate", type=float, default=BacktestConfig.learning_rate)
    parser.add_argument(
        "--row-sparse",
        action=argparse.BooleanOptionalAction,
        default=BacktestConfig.row_sparse,
        help="train with the row-sparse optimizer, as `freshrank train --row-sparse` does",
    )
    parser.add_argument(
        "--table-learning-rate",
        type=float,
        default=None,
        help="with --row-sparse: the tables' step size (default: --learning-rate)",
    )
    parser.add_argument("--epochs", type=int, default=BacktestConfig.epochs)
    parser.add_argument("--k", type=int, default=BacktestConfig.k, help="Recall@K / MRR@K")
    parser.add_argument(
        "--forgetting-requests",
        type=int,
        default=BacktestConfig.forgetting_requests,
        help="requests per held-out slice for the accuracy matrix (0: skip forgetting)",
    )
    parser.add_argument("--seed", type=int, default=0)
    select = parser.add_argument_group("strategy selection (--select)")
    select.add_argument(
        "--select",
        action="store_true",
        help="search strategies and knobs on the selection periods, report the choice on the "
        "test periods and print the `freshrank train` options that run it (--arms is ignored)",
    )
    select.add_argument(
        "--selection-periods",
        type=int,
        default=None,
        help="tested periods to select on, from period 1 (default: half of them)",
    )
    select.add_argument(
        "--seeds", default="0,1,2", help="seeds of every configuration (default: %(default)s)"
    )
    select.add_argument(
        "--select-learning-rates",
        default="0.01,0.03",
        help="learning rates the best candidates are tried at again (default: %(default)s)",
    )
    select.add_argument(
        "--select-metrics",
        default="recall@{k},mrr@{k}",
        help="metrics a choice must beat fine-tuning on beyond noise (default: %(default)s)",
    )
    select.add_argument(
        "--max-events-vs-joint",
        type=float,
        default=None,
        help="choose only what trains on at most this share of joint retraining's events",
    )
    select.add_argument(
        "--jobs", type=int, default=1, help="backtests run at once, each in its own process"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: leave as is)")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a line per tested period on stderr",
    )
    model = parser.add_argument_group("model")
    defaults = FeatureConfig()
    model.add_argument("--embedding-dim", type=int, default=RankerConfig.embedding_dim)
    model.add_argument("--user-buckets", type=int, default=defaults.user_buckets)
    model.add_argument("--item-buckets", type=int, default=defaults.item_buckets)
    model.add_argument("--query-buckets", type=int, default=defaults.query_buckets)
    sim = parser.add_argument_group("simulator data")
    sim.add_argument("--sim-periods", type=int, default=SimulatorData.periods)
    sim.add_argument("--sim-requests", type=int, default=SimulatorData.requests_per_period)
    sim.add_argument("--shift-at", type=int, default=None, help="planted shift before period N")
    sim.add_argument("--sim-users", type=int, default=SimulatorConfig.n_users)
    sim.add_argument("--sim-items", type=int, default=SimulatorConfig.n_items)
    dg = parser.add_argument_group("DIGINETICA data")
    dg.add_argument("--diginetica-path", default=None, help="default: ../shared/data/diginetica")
    dg.add_argument("--periods", default=None, help="e.g. 0-16 or 0,1,2 (default: all found)")
    dg.add_argument("--candidates", type=int, default=DigineticaConfig.candidates)
    dg.add_argument("--train-candidates", type=int, default=DigineticaConfig.train_candidates)
    dg.add_argument("--test-requests", type=int, default=DigineticaConfig.test_requests)
    dg.add_argument(
        "--train-session-fraction", type=float, default=DigineticaConfig.train_session_fraction
    )
    dg.add_argument(
        "--negatives", choices=[n.value for n in NegativeSampling], default="popularity"
    )
    dg.add_argument("--history", type=int, default=DigineticaConfig.history)
    pq_group = parser.add_argument_group("parquet data")
    pq_group.add_argument("--parquet", nargs="+", default=(), help="one path per period")


def config_from_args(args: argparse.Namespace) -> BacktestConfig:
    """A :class:`BacktestConfig` from options added by :func:`add_arguments`."""
    if args.data == "simulator":
        data: DataSource = SimulatorData(
            SimulatorConfig(seed=args.seed, n_users=args.sim_users, n_items=args.sim_items),
            periods=args.sim_periods,
            requests_per_period=args.sim_requests,
            shift_at=args.shift_at,
        )
    elif args.data == "diginetica":
        data = DigineticaData(
            DigineticaConfig(
                path=args.diginetica_path,
                history=args.history,
                candidates=args.candidates,
                train_candidates=args.train_candidates,
                negatives=NegativeSampling(args.negatives),
                test_requests=args.test_requests,
                train_session_fraction=args.train_session_fraction,
                seed=args.seed,
            ),
            periods=parse_periods(args.periods) if args.periods else None,
        )
    else:
        data = ParquetData(tuple(args.parquet), seed=args.seed)
    features = dataclasses.replace(
        FeatureConfig(),
        user_buckets=args.user_buckets,
        item_buckets=args.item_buckets,
        query_buckets=args.query_buckets,
    )
    arms = arms_from_names(
        [n for n in args.arms.split(",") if n.strip()],
        window=args.window,
        replay=ReplayConfig(capacity=args.replay_capacity, mix_ratio=args.replay_ratio),
        ewc=EWCConfig(lam=args.ewc_lambda, decay=args.ewc_decay),
        lwf=LwFConfig(alpha=args.lwf_alpha, temperature=args.lwf_temperature),
    )
    return BacktestConfig(
        name=args.name or args.data,
        data=data,
        arms=arms,
        model=RankerConfig(features=features, embedding_dim=args.embedding_dim),
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        row_sparse=args.row_sparse,
        table_learning_rate=args.table_learning_rate,
        epochs=args.epochs,
        k=args.k,
        forgetting_requests=args.forgetting_requests or None,
        seed=args.seed,
        threads=args.threads or None,
    )


def parse_periods(text: str) -> tuple[int, ...]:
    """``"0-3"`` -> (0, 1, 2, 3); ``"0,2,5"`` -> (0, 2, 5); ranges and lists combine.

    >>> parse_periods("0-2,5")
    (0, 1, 2, 5)
    """
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            lo, hi = (int(x) for x in part.split("-", 1))
            out.extend(range(lo, hi + 1))
        elif part:
            out.append(int(part))
    return tuple(out)
