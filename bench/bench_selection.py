"""Issue 16: honest strategy selection on DIGINETICA and on the simulator, over seeds.

Run: ``python bench/bench_selection.py [--parts diginetica,simulator,shift] [--jobs 2]``.

* **diginetica**: ``run_selection`` (``learn.backtest.selection``, what ``freshrank backtest
  --select`` runs) over DIGINETICA's periods with the DIGINETICA protocol of
  ``bench_backtest.py`` (skipped with a message when ``../shared/data/diginetica`` is absent):
  the search sees tested periods 1-8 only, the choice is then reported once on 9-16. The search
  space is the library's (``default_candidates()``) plus the experimental ``exemplar-distill``.
  Goal: the choice closes >= 100% of the fine-tune -> joint gap on both Recall@20 and MRR@20 on
  the test periods at <= 20% of joint's events.
* **simulator**: the same protocol on the simulator's planted-shift log (12 periods, shift before
  period 6, which falls in the test half), selecting on AUC and MRR@20 (Recall@20 is 1 by
  construction: a list shows 10 items).
* **shift**: the DIGINETICA choice (or ``--shift-strategy``) on the simulator's planted shift,
  every seed: back within 0.01 AUC of its pre-shift level within 3 windows, and not worse than
  fine-tuning on AUC or MRR@20.

Figures go under "## Issue 16" in ``bench/RESULTS.md``; the JSON of each selection into
``bench/out/selection-<name>/``. Arms of one seed share shuffles; each seed varies the model's
initialisation, the shuffles and the strategies' draws (replay reservoir, exemplar negatives);
the data is the same for every seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import sys
import time
from pathlib import Path

import experimental_strategies
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ modules, however this is run
import backtest_harness as harness  # noqa: E402
from _results import write_section  # noqa: E402
from bench_backtest import DG_ADAPTER, DG_FEATURES  # noqa: E402

from freshrank.events.simulator import SimulatorConfig  # noqa: E402
from freshrank.learn.backtest import (  # noqa: E402
    BacktestConfig,
    Candidate,
    DigineticaData,
    SelectionConfig,
    SelectionReport,
    SimulatorData,
    Spread,
    default_candidates,
    run_periods,
    run_selection,
)
from freshrank.model.config import RankerConfig  # noqa: E402

ISSUE = "Issue 16 (honest strategy selection)"
OUT = Path(__file__).resolve().parent / "out"
EVENTS_GOAL = 0.20
FIGURES = ("recall@20", "mrr@20", "auc", "gauc", "ndcg@10", "bwt recall@20")
SIM_FIGURES = ("mrr@20", "auc", "gauc", "ndcg@10", "bwt auc")
"""The simulator's lists show 10 items: Recall@20 is 1 by construction, so AUC's BWT instead."""


def candidates() -> tuple[Candidate, ...]:
    """The library's search space plus the experimental exemplar distillation and two
    neighbours of exemplar replay + LwF (more exemplars per step, more negatives)."""
    experimental_strategies.register()
    extra = tuple(Candidate("exemplar-distill", lwf_alpha=a) for a in (0.25, 0.5, 1.0))
    more = (  # more exemplars per step (the events budget allows about 0.75 on DIGINETICA)
        Candidate("exemplar-replay+lwf", lwf_alpha=0.25, replay_ratio=0.75),
        Candidate("exemplar-replay+lwf", lwf_alpha=0.25, exemplar_negatives=5),
    )
    return default_candidates() + extra + more


def diginetica_config(path: str | None, quick: bool) -> BacktestConfig:
    """The DIGINETICA protocol of ``bench_backtest.py`` (its arms are the selection's)."""
    return BacktestConfig(
        name="diginetica" + ("-quick" if quick else ""),
        data=DigineticaData(
            dataclasses.replace(DG_ADAPTER, path=path), tuple(range(7)) if quick else None
        ),
        model=RankerConfig(features=DG_FEATURES),
        batch_size=1024,
        learning_rate=0.02,
        epochs=2,
        forgetting_requests=200,
    )


def simulator_config(quick: bool) -> BacktestConfig:
    """The planted-shift protocol of ``bench_backtest.py``."""
    periods, shift = (6, 3) if quick else (12, 6)
    return BacktestConfig(
        name="simulator-shift" + ("-quick" if quick else ""),
        data=SimulatorData(
            SimulatorConfig(seed=0),
            periods=periods,
            requests_per_period=4000,
            shift_at=shift,
            test_fraction=0.1,
        ),
        model=RankerConfig(),
        batch_size=512,
        learning_rate=0.02,
        forgetting_requests=300,
    )


# ------------------------------------------------------------------------------- formatting


def _s(spread: Spread, digits: int = 4, signed: bool = False) -> str:
    if not math.isfinite(spread.mean):
        return "—"
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    return f"{f.format(spread.mean)} [{f.format(spread.low)}, {f.format(spread.high)}]"


def _pct(spread: Spread) -> str:
    if not math.isfinite(spread.mean):
        return "—"
    return f"{spread.mean:.0%} [{spread.low:.0%}, {spread.high:.0%}]"


def _gap(report: SelectionReport, arm: str, half: str, metric: str) -> Spread:
    """Per seed: the share of fine-tune -> joint gap ``arm`` closes on ``half``."""
    f = report.final
    shares = []
    for x, lo, hi in zip(
        f[arm][half][metric].values,
        f["finetune"][half][metric].values,
        f["joint"][half][metric].values,
        strict=True,
    ):
        shares.append((x - lo) / (hi - lo) if abs(hi - lo) > 1e-12 else float("nan"))
    return Spread.of(shares)


def search_table(report: SelectionReport, figures: tuple[str, ...]) -> str:
    """Every configuration tried, on the selection periods only."""
    metrics = report.metrics
    head = (
        ["configuration", "stage"]
        + list(figures)
        + [f"gap closed {m}" for m in metrics]
        + ["events vs joint", "vs finetune"]
    )
    rows = [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        "| finetune | — | " + " | ".join(_s(report.baseline[f]) for f in figures)
        + " | " + " | ".join("0%" for _ in metrics) + " | "
        + f"{report.baseline['events'].mean / report.reference['events'].mean:.1%} | — |",
        "| joint | — | " + " | ".join(_s(report.reference[f]) for f in figures)
        + " | " + " | ".join("100%" for _ in metrics) + " | 100.0% | — |",
    ]  # fmt: skip
    for c in report.candidates:
        verdict = ", ".join(f"{m}: {v}" for m, v in c.versus_baseline.items())
        chosen = " **(chosen)**" if report.chosen and c.name == report.chosen.name else ""
        rows.append(
            f"| {c.name}{chosen} | {c.stage} | "
            + " | ".join(_s(c.figures[f]) for f in figures)
            + " | "
            + " | ".join(_pct(c.gap_closed[m]) for m in metrics)
            + f" | {c.events_vs_joint:.1%} | {verdict} |"
        )
    return "\n".join(rows)


def final_table(report: SelectionReport, figures: tuple[str, ...]) -> str:
    """The runs over every period made after the choice: both halves, every arm."""
    head = ["arm", "periods"] + list(figures) + ["events vs joint", "vs finetune"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for half, names in (("selection", report.selection_periods), ("test", report.test_periods)):
        base = report.final["finetune"][half]
        for arm, halves in report.final.items():
            figs = halves[half]
            verdict = (
                "—"
                if arm == "finetune"
                else ", ".join(f"{m}: {figs[m].compare(base[m])}" for m in report.metrics)
            )
            rows.append(
                f"| {arm} | {half} ({names[0]}-{names[-1]}) | "
                + " | ".join(_s(figs[f]) for f in figures)
                + f" | {report.events_vs_joint[arm][half]:.1%} | {verdict} |"
            )
    return "\n".join(rows)


def test_table(report: SelectionReport, figures: tuple[str, ...]) -> str:
    """Every configuration tried, on the test periods (run after the choice was made)."""
    head = (
        ["configuration", "chosen"]
        + list(figures)
        + [f"gap closed {m}" for m in report.metrics]
        + ["events vs joint", "vs finetune"]
    )
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = report.final["finetune"]["test"]
    for name, halves in report.final.items():
        if name in ("finetune", "joint"):
            continue
        figs = halves["test"]
        rows.append(
            f"| {name} | {'yes' if report.chosen and name == report.chosen.name else ''} | "
            + " | ".join(_s(figs[f]) for f in figures)
            + " | "
            + " | ".join(_pct(_gap(report, name, "test", m)) for m in report.metrics)
            + f" | {report.events_vs_joint[name]['test']:.1%} | "
            + ", ".join(f"{m}: {figs[m].compare(base[m])}" for m in report.metrics)
            + " |"
        )
    return "\n".join(rows)


def selection_body(
    report: SelectionReport, command: str, wall: float, note: str, figures: tuple[str, ...]
) -> str:
    lines = [
        f"Command: `{command}` (wall {wall / 60:.1f} min on {_machine()}). JSON: "
        f"`bench/out/selection-{report.name}/selection.json`.",
        "",
        note,
        "",
        f"Protocol: the search sees tested periods {report.selection_periods[0]}-"
        f"{report.selection_periods[-1]} only; the choice is reported once on "
        f"{report.test_periods[0]}-{report.test_periods[-1]}. Seeds "
        f"{', '.join(map(str, report.seeds))}; every figure is the mean over seeds with its "
        "range [min, max]. A configuration is eligible when its range lies above "
        f'fine-tuning\'s on {" and ".join(report.metrics)} ("above"; overlapping ranges are '
        '"within noise"); the eligible one that closes the largest share of the fine-tune → '
        "joint gap on its weaker metric is chosen. Stage 2 tries the two best eligible "
        "configurations at learning rates 0.01 and 0.03.",
        "",
        "**Search** (selection periods only):",
        "",
        search_table(report, figures),
        "",
        f"**Result**: {report.message}.",
        "",
        "**After the choice**: every period, same seeds (the selection rows repeat the search's "
        "runs exactly; the test rows are new):",
        "",
        final_table(report, figures),
    ]
    if report.chosen is not None:
        name = report.chosen.name
        shares = report.events_vs_joint[name]["test"]
        gaps = {m: _gap(report, name, "test", m) for m in report.metrics}
        means = {}
        for m in report.metrics:
            lo = report.final["finetune"]["test"][m].mean
            hi = report.final["joint"]["test"][m].mean
            means[m] = (report.final[name]["test"][m].mean - lo) / (hi - lo)
        met = all(v >= 1.0 for v in means.values()) and shares <= EVENTS_GOAL
        lines += [
            "",
            "Gap closed on the test periods (of the means; per seed in brackets): "
            + ", ".join(f"{m} {means[m]:.0%} ({_pct(gaps[m])})" for m in report.metrics)
            + f", at {shares:.1%} of joint's events: goal (≥ 100% on both at ≤ "
            f"{EVENTS_GOAL:.0%}) {'met' if met else '**not met**'}.",
        ]
    if len(report.final) > 3:
        lines += [
            "",
            "**Every configuration on the test periods** (run after the choice, for the "
            "record: they could not change it; gap closed per seed, mean [min, max]):",
            "",
            test_table(report, figures),
        ]
    flags = " ".join(report.train_flags())
    lines += ["", f"Run it live: `freshrank train --landing ... --registry ... {flags}`"]
    return "\n".join(lines)


def _machine() -> str:
    return f"2 shared cores, {platform.machine()}, torch 1 thread per process"


# ----------------------------------------------------------------------------------- parts


def run_part(config: BacktestConfig, selection: SelectionConfig, args: argparse.Namespace):
    t0 = time.perf_counter()
    report = run_selection(
        config,
        selection,
        progress=lambda line: print(f"{time.strftime('%H:%M:%S')} [bench_selection] {line}"),
        initializer=experimental_strategies.register,
    )
    wall = time.perf_counter() - t0
    out = OUT / f"selection-{config.name}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "selection.json").write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    return report, wall


def shift_check(
    config: BacktestConfig, candidate: Candidate, seeds: tuple[int, ...], lr: float
) -> str:
    """``candidate`` beside fine-tuning on the planted shift, every seed: recovery and means."""
    arms = (Candidate("finetune").arm(), candidate.arm())
    shift = config.data.shift_at  # type: ignore[union-attr]
    per_arm: dict[str, dict[str, list[float]]] = {a.name: {} for a in arms}
    periods = config.data.load()
    for seed in seeds:
        for arm, rate in ((arms[0], config.learning_rate), (arms[1], lr)):
            cfg = dataclasses.replace(config, arms=(arm,), seed=seed, learning_rate=rate)
            result = run_periods(periods, cfg).arms[0]
            d = per_arm[arm.name]
            for m in ("auc", "mrr@20"):
                d.setdefault(m, []).append(result.mean[m])
            windows = result.recovery_windows(shift, "auc", 0.01, baseline=2)
            d.setdefault("recovery", []).append(math.inf if windows is None else windows)
            series = result.series("auc")
            level = float(np.mean(series[shift - 3 : shift - 1]))
            d.setdefault("drop", []).append(min(series[shift - 1 :]) - level)
    rows = [
        "| arm | AUC | MRR@20 | lowest post-shift AUC − pre-shift level | recovery windows "
        "per seed | within 3 in every seed | vs finetune |",
        "|---|---|---|---|---|---|---|",
    ]
    base = {m: Spread.of(per_arm[arms[0].name][m]) for m in ("auc", "mrr@20")}
    for arm in arms:
        d = per_arm[arm.name]
        spreads = {m: Spread.of(d[m]) for m in ("auc", "mrr@20")}
        verdict = (
            "—"
            if arm is arms[0]
            else ", ".join(f"{m}: {spreads[m].compare(base[m])}" for m in spreads)
        )
        ok = all(w <= 3 for w in d["recovery"])
        rows.append(
            f"| {arm.name} | {_s(spreads['auc'])} | {_s(spreads['mrr@20'])} | "
            f"{_s(Spread.of(d['drop']), signed=True)} | "
            f"{', '.join(str(w) if math.isfinite(w) else 'never' for w in d['recovery'])} | "
            f"{'yes' if ok else '**no**'} | {verdict} |"
        )
    return "\n".join(rows)


def _spread_from(d: dict) -> Spread:
    values = tuple(v for v in d["values"] if v is not None)
    return Spread.of(values)


def _versus(final: dict, name: str, half: str, metrics: list[str]) -> dict[str, str]:
    """``name``'s verdicts against fine-tuning on ``half`` of a selection JSON's final runs."""
    if name not in final:
        return {}
    return {
        m: _spread_from(final[name][half][m]).compare(_spread_from(final["finetune"][half][m]))
        for m in metrics
    }


def live_default(dg: dict, sim: dict) -> tuple[str | None, str]:
    """The live default by the rule of issue 16 from the two selection JSONs: the first
    configuration in DIGINETICA's ranking (selection periods only) that is eligible there
    (above fine-tuning beyond noise on Recall@20 and MRR@20) and holds on the simulator: not
    below fine-tuning beyond noise on AUC or MRR@20 in either half of the simulator's log (the
    planted shift is in its second half). DIGINETICA's test periods play no part, so its test
    figures stay an honest estimate for the default. Returns its name and the table."""
    sim_by_name = {c["name"]: c for c in sim["candidates"]}
    rows = [
        "| configuration | DIGINETICA selection (Recall@20, MRR@20 vs finetune) | "
        "DIGINETICA test | simulator selection (AUC, MRR@20 vs finetune) | simulator test "
        "| holds on both |",
        "|---|---|---|---|---|---|",
    ]
    chosen = None
    for c in dg["candidates"]:
        name = c["name"]
        theirs = sim_by_name.get(name)
        if not c["eligible"] or theirs is None:
            continue
        sim_sel = theirs["versus_finetune"]
        sim_test = _versus(sim["final"], name, "test", sim["metrics"])
        holds = bool(sim_test) and "below" not in {*sim_sel.values(), *sim_test.values()}
        if holds and chosen is None:
            chosen = name

        def say(v: dict[str, str]) -> str:
            return ", ".join(v.values()) if v else "not run"

        rows.append(
            f"| {name}{' **(live default)**' if name == chosen else ''} | "
            f"{say(c['versus_finetune'])} | "
            f"{say(_versus(dg['final'], name, 'test', dg['metrics']))} | {say(sim_sel)} | "
            f"{say(sim_test)} | "
            f"{'yes' if holds else 'no'} |"
        )
    return chosen, "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="diginetica,simulator,shift,default")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--diginetica", default=None, help="default: ../shared/data/diginetica")
    parser.add_argument("--quick", action="store_true", help="fewer periods (a smoke run)")
    parser.add_argument(
        "--shift-strategy",
        default=None,
        help="the shift part's configuration as 'strategy[,alpha]' (default: DIGINETICA's choice)",
    )
    parser.add_argument("--no-write", action="store_true", help="leave RESULTS.md alone")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    seeds = tuple(int(s) for s in args.seeds.split(","))
    command = "python bench/bench_selection.py" + (" --quick" if args.quick else "")
    dg_choice: tuple[Candidate, float] | None = None

    def write(name: str, body: str) -> None:
        print(body)
        if not args.no_write:
            write_section(ISSUE, name, body)

    if "diginetica" in parts:
        directory = harness.diginetica_directory(args.diginetica, "bench_selection")
        if directory is not None:
            config = diginetica_config(str(directory), args.quick)
            selection = SelectionConfig(
                seeds=seeds, candidates=candidates(), jobs=args.jobs, report_all=True
            )
            report, wall = run_part(config, selection, args)
            note = (
                "DIGINETICA protocol of `bench_backtest.py` (held-out session's next view "
                "among 100 candidates; item/query tables 65,536 rows; batch 1024; 2 passes)."
            )
            body = selection_body(report, command, wall, note, FIGURES)
            write("Selection on DIGINETICA", body)
            if report.chosen is not None:
                dg_choice = (report.chosen.candidate, report.chosen.learning_rate)
    if "simulator" in parts:
        config = simulator_config(args.quick)
        selection = SelectionConfig(
            seeds=seeds,
            candidates=candidates(),
            jobs=args.jobs,
            metrics=("auc", "mrr@{k}"),
            report_all=True,
        )
        report, wall = run_part(config, selection, args)
        note = (
            "Simulator with a planted shift before period "
            f"{config.data.shift_at} (in the test half), production model and "  # type: ignore[union-attr]
            "trainer settings (batch 512, Adam 0.02); selected on AUC and MRR@20."
        )
        body = selection_body(report, command, wall, note, SIM_FIGURES)
        write("Selection on the simulator", body)
    if "shift" in parts:
        if args.shift_strategy:
            name, _, alpha = args.shift_strategy.partition(",")
            dg_choice = (Candidate(name, lwf_alpha=float(alpha or 1.0)), 0.02)
        if dg_choice is None:
            print("[bench_selection] shift part skipped: no DIGINETICA choice (--shift-strategy)")
        else:
            candidate, lr = dg_choice
            config = simulator_config(args.quick)
            t0 = time.perf_counter()
            table = shift_check(config, candidate, seeds, lr)
            wall = time.perf_counter() - t0
            body = (
                f"Command: `{command} --parts shift` (wall {wall / 60:.1f} min). The "
                f"configuration DIGINETICA's selection chose (`{candidate.name}`, lr {lr:g}) "
                "beside fine-tuning on the simulator's planted shift, seeds "
                f"{', '.join(map(str, seeds))}; recovery = windows until the prequential AUC "
                "is back within 0.01 of the mean of the two windows before the shift.\n\n" + table
            )
            write("The DIGINETICA choice on the simulator's planted shift", body)
    if "default" in parts:
        files = [
            OUT / f"selection-{n}" / "selection.json" for n in ("diginetica", "simulator-shift")
        ]
        if not all(f.exists() for f in files):
            print(f"[bench_selection] default part skipped: it reads {', '.join(map(str, files))}")
        else:
            dg, sim = (json.loads(f.read_text()) for f in files)
            name, table = live_default(dg, sim)
            body = (
                "Rule: the live default is the first configuration in DIGINETICA's ranking "
                "(selection periods only) that is eligible there and holds on the simulator: "
                "not below fine-tuning beyond noise on AUC or MRR@20 in either half of its log "
                "(the planted shift is in the second). DIGINETICA's test column plays no part "
                "(it stays an honest estimate); the simulator's figures do, so they are a check, "
                "not an estimate. Configurations the simulator's search did not run (DIGINETICA's "
                "stage 2) are left out. From "
                "`bench/out/selection-*/selection.json` (`python bench/bench_selection.py "
                f"--parts default`).\n\n{table}\n\nLive default by this rule: "
                f"**{name or 'none (fine-tuning)'}**."
            )
            if name is not None:
                found = next(c for c in dg["candidates"] if c["name"] == name)
                lr = float(found.get("learning_rate", 0.02))
                known = {f"{c.name} lr{lr:g}": c for c in candidates()}  # JSON of an older run
                candidate = Candidate(**found["candidate"]) if "candidate" in found else known[name]
                config = simulator_config(args.quick)
                t0 = time.perf_counter()
                table = shift_check(config, candidate, seeds, lr)
                body += (
                    f"\n\nThe default on the simulator's planted shift, beside fine-tuning "
                    f"(`{command} --parts default`, {(time.perf_counter() - t0) / 60:.1f} min):"
                    f"\n\n{table}"
                )
            write("The live default from both selections", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
