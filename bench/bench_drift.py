"""Drift detection on the simulator: delay after a planted shift, false alarms when stationary.

Run: ``python bench/bench_drift.py [--windows 240] [--requests 500] [--shift-every 60]``.

A long run of windows from one simulated world (its scheduled slow drift and item arrivals left
on), with ``Simulator.planted_shift()`` called before known windows. Each window goes through
what the trainer does: score it with the current model (before training), sketch it against
the reference and judge it (`DriftMonitor.sketch` / `check`, thresholds raised by each
statistic's own noise), train the ranker one pass on it (with replay), then absorb its sketch
(scores of the updated model) into the reference (`DriftMonitor.absorb`).

Reported per statistic and for "any alarm" (what pages):

* detection delay: windows from a planted shift to the first alarm (0 = the first window after
  the shift is flagged; the goal is <= 1, i.e. flagged within 2 windows);
* false-alarm rate: alarmed windows / windows in stationary stretches (after the warm-up and
  more than ``--settle`` windows after any shift);
* the largest value seen in stationary stretches against the threshold (the margin).

The table (with the run's settings and a description of the figure) also goes to
``bench/RESULTS.md`` under "Issue 5" (``--no-write`` skips that). Writes
``bench/out/<name>_timeline.png`` (statistics over windows, shifts marked, thresholds
dashed) and ``bench/out/<name>_run.json`` (every window's report); ``--name`` defaults to
``drift``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from freshrank.drift import (
    DriftMonitor,
    DriftReport,
    DriftThresholds,
    FeatureDrift,
    ReferenceProfile,
    SketchConfig,
    Statistic,
)
from freshrank.evaluation.classification import roc_auc
from freshrank.events.simulator import Simulator, SimulatorConfig
from freshrank.features.encode import FeatureConfig, concat_inputs, encode, num_rows, slice_inputs
from freshrank.learn.replay import ReservoirBuffer
from freshrank.model.config import RankerConfig
from freshrank.model.device import to_tensors
from freshrank.model.ranker import Ranker

OUT = Path(__file__).resolve().parent / "out"
CPU = torch.device("cpu")
# Smaller hashed spaces than production so the bench trains fast; the simulator's ids fit.
FEATURES = FeatureConfig(
    user_buckets=16_384,
    item_buckets=16_384,
    category_buckets=256,
    brand_buckets=512,
    query_buckets=4_096,
)


class Learner:
    """The trainer's per-window step in one process: evaluate first, train one pass, replay."""

    def __init__(self, seed: int) -> None:
        torch.manual_seed(seed)
        self.model = Ranker(RankerConfig(features=FEATURES))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=3e-3)
        self.buffer = ReservoirBuffer(20_000, seed=seed)
        self.rng = np.random.default_rng(seed)

    def scores(self, rows: dict[str, np.ndarray]) -> np.ndarray:
        self.model.eval()
        with torch.no_grad():
            return self.model(to_tensors(rows, CPU), use_position=False).numpy()

    def train(self, rows: dict[str, np.ndarray], batch: int = 512) -> None:
        self.model.train()
        order = self.rng.permutation(num_rows(rows))
        for s in range(0, len(order), batch):
            new = slice_inputs(rows, order[s : s + batch])
            k = num_rows(new) // 2 if len(self.buffer) else 0
            both = concat_inputs([new, self.buffer.sample(k)]) if k else new
            t = to_tensors(both, CPU)
            loss = F.binary_cross_entropy_with_logits(self.model(t), t["label"])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        self.buffer.add(rows)


def run(args: argparse.Namespace) -> dict:
    sim = Simulator(SimulatorConfig(seed=args.seed))
    config = SketchConfig()
    thresholds = DriftThresholds()
    learner = Learner(args.seed) if not args.no_model else None
    monitor = DriftMonitor(ReferenceProfile(config), thresholds=thresholds)
    shifts = list(range(args.first_shift, args.windows, args.shift_every))
    reports: list[DriftReport] = []
    aucs: list[float] = []
    sketch_s, t0 = 0.0, time.perf_counter()
    for w in range(args.windows):
        if w in shifts:
            sim.planted_shift()
        rows = encode(sim.generate(args.requests), FEATURES)
        before = learner.scores(rows) if learner else None
        aucs.append(roc_auc(rows["label"], before) if learner else math.nan)
        s0 = time.perf_counter()
        window = monitor.sketch(rows, scores=before)
        reports.append(monitor.check(window))
        sketch_s += time.perf_counter() - s0
        if learner:
            learner.train(rows)
            window = window.with_scores(learner.scores(rows))
        s0 = time.perf_counter()
        monitor.absorb(window)
        sketch_s += time.perf_counter() - s0
        if args.verbose:
            r = reports[-1]
            lead = ", ".join(f"{e.feature}/{e.statistic.value}={e.value:.3f}" for e in r.leaders(3))
            mark = "*" if w in shifts else " "
            print(f"w{w:4d}{mark} alarm={int(r.alarm)} auc={aucs[-1]:.3f} {lead}", flush=True)
    elapsed = time.perf_counter() - t0
    return {
        "reports": reports,
        "aucs": aucs,
        "shifts": shifts,
        "thresholds": thresholds,
        "config": config,
        "monitor": monitor,
        "elapsed_s": elapsed,
        "sketch_s_per_window": sketch_s / args.windows,
        "rows_per_window": args.requests * sim.config.list_size,
    }


def _series(reports: list[DriftReport]) -> dict[tuple[str, Statistic], list[FeatureDrift]]:
    out: dict[tuple[str, Statistic], list[FeatureDrift]] = {}
    for r in reports:
        for e in r.entries:
            if e.statistic is Statistic.LINF:
                continue
            out.setdefault((e.feature, e.statistic), []).append(e)
    return out


def evaluate(result: dict, args: argparse.Namespace) -> list[dict]:
    reports, shifts = result["reports"], result["shifts"]
    n = len(reports)
    stationary = [
        w for w in range(args.warmup, n) if not any(s <= w < s + args.settle for s in shifts)
    ]
    rows = []

    def summarise(
        name: str, alarms: list[bool], values: list[float | None], thr: str, two_sided: bool
    ) -> dict:
        delays = []
        for s in shifts:
            hit = next((w - s for w in range(s, min(n, s + args.settle)) if alarms[w]), None)
            delays.append(hit)
        false = sum(alarms[w] for w in stationary)
        finite = [
            abs(values[w]) if two_sided else values[w] for w in stationary if values[w] is not None
        ]
        return {
            "statistic": name,
            "threshold": thr,
            "delays": delays,
            "detected_within_2": sum(d is not None and d <= 1 for d in delays),
            "false_alarms": int(false),
            "stationary_windows": len(stationary),
            "false_alarm_rate": false / max(len(stationary), 1),
            "max_stationary": max(finite) if finite else None,
            "post_shift_alarm_windows": [
                sum(alarms[w] for w in range(s, min(n, s + args.settle))) for s in shifts
            ],
        }

    for (feature, stat), entries in _series(reports).items():
        alarms = [e.alarm for e in entries]
        values = [e.value for e in entries]
        effective = [
            entries[w].threshold
            for w in stationary
            if entries[w].threshold is not None and entries[w].value is not None
        ]
        thr_text = f"{np.median(effective):.3f}" if effective else "-"
        two_sided = stat is Statistic.CTR_SHIFT
        rows.append(summarise(f"{feature}/{stat.value}", alarms, values, thr_text, two_sided))
    rows.append(
        summarise("ANY ALARM", [r.alarm for r in reports], [None] * n, "-", False),
    )
    return rows


def table_lines(rows: list[dict]) -> list[str]:
    out = []
    head = (
        f"{'statistic':26s} {'threshold':>13s} {'delays (windows)':>18s} {'<=1':>4s} "
        f"{'false alarms':>14s} {'FA rate':>8s} {'max stationary':>15s} {'alarmed after':>14s}"
    )
    out.append(head)
    out.append("-" * len(head))
    for r in rows:
        delays = ",".join("-" if d is None else str(d) for d in r["delays"])
        mx = "-" if r["max_stationary"] is None else f"{r['max_stationary']:.4f}"
        after = ",".join(str(x) for x in r["post_shift_alarm_windows"])
        out.append(
            f"{r['statistic']:26s} {r['threshold']:>13s} {delays:>18s} "
            f"{r['detected_within_2']:>2d}/{len(r['delays'])} "
            f"{r['false_alarms']:>6d}/{r['stationary_windows']:<7d} {r['false_alarm_rate']:>8.4f} "
            f"{mx:>15s} {after:>14s}"
        )
    return out


def setting_line(result: dict, args: argparse.Namespace) -> str:
    return (
        f"{args.windows} windows x {result['rows_per_window']} rows (seed {args.seed}), planted "
        f"shifts before windows {result['shifts']}; stationary = windows >= {args.warmup} and "
        f"not within {args.settle} windows after a shift; threshold = median over the "
        "stationary windows of the threshold applied (the fixed one, raised by the statistic's "
        "own noise; for unseen rates the reference's own rate + 0.05)"
    )


def cost_line(result: dict) -> str:
    return (
        f"run {result['elapsed_s']:.1f} s; sketch + compare + absorb "
        f"{1000 * result['sketch_s_per_window']:.1f} ms per window; reference state "
        f"{_state_kib(result['monitor']):.0f} KiB raw, {_npz_kib(result['monitor']):.0f} "
        "KiB as compressed npz"
    )


def figure_text(rows: list[dict], result: dict, png: Path) -> str:
    """What the timeline figure shows, in words (bench/out is not committed)."""
    reports, shifts = result["reports"], result["shifts"]
    surprise = [r.value("user_category", Statistic.SURPRISE) for r in reports]
    # The first judged window after each shift (small windows are judged in groups).
    at_shift = [
        next(
            (surprise[w] for w in range(s, min(len(surprise), s + 3)) if surprise[w] is not None),
            None,
        )
        for s in shifts
    ]
    at_shift = [v for v in at_shift if v is not None] or [float("nan")]
    any_row = rows[-1]
    stationary_max = {
        r["statistic"]: r["max_stationary"] for r in rows if r["max_stationary"] is not None
    }
    early = sum(r.alarm for r in reports[: min(len(reports), 20)])
    limits = [
        e.threshold
        for r in reports[20:]
        if (e := r.get("user_category", Statistic.SURPRISE)) is not None
        and e.threshold
        and e.value is not None
    ]
    thr_text = f"median {np.median(limits):.2f} nats after the warm-up" if limits else "not reached"
    aucs = [a for a in result["aucs"] if not math.isnan(a)]
    auc_text = ""
    if aucs and shifts:
        before = [result["aucs"][s - 1] for s in shifts]
        after = [result["aucs"][s] for s in shifts]
        auc_text = (
            f", and the AUC barely moves (mean {np.mean(before):.3f} in the window before a "
            f"shift, {np.mean(after):.3f} in the window after)"
        )
    return (
        f"`{png.relative_to(png.parents[2])}` (not committed): one panel per statistic over the "
        "windows, planted shifts as red lines, thresholds dashed, and the prequential AUC with "
        "the windows that alarmed. The user-interest surprise jumps to "
        f"{min(at_shift):.2f}-{max(at_shift):.2f} nats in the first judged window after each "
        "shift "
        f"(threshold: the larger of {result['thresholds'].surprise:g} and its typical value + "
        f"{result['thresholds'].noise_z:g} x its own noise, {thr_text}) and "
        "falls back within "
        f"{max(any_row['post_shift_alarm_windows'])} window(s) as the reference catches up; in "
        f"stationary stretches it stays below {stationary_max['user_category/surprise']:.2f}. "
        "Every other statistic stays flat through the shifts (category JS <= "
        f"{stationary_max['category/js']:.3f}, query JS <= {stationary_max['query/js']:.3f}, "
        f"price PSI <= {stationary_max['price/psi']:.3f}, |CTR shift| <= "
        f"{stationary_max['ctr/ctr_shift']:.2f}){auc_text}: the planted shift changes which "
        "categories each user looks at, not the traffic's overall mix. In the "
        f"warm-up, {early} of the first 20 windows alarmed (score PSI while the new model's "
        "scores move fast, and unseen users while the id filters fill); those windows are "
        "outside the false-alarm count."
    )


def results_markdown(rows: list[dict], result: dict, args: argparse.Namespace, png: Path) -> str:
    command = "python bench/bench_drift.py " + " ".join(
        f"--{k.replace('_', '-')} {v}"
        for k, v in vars(args).items()
        if k not in ("verbose", "no_model", "no_write") and v != DEFAULTS.get(k)
    )
    return "\n".join(
        [
            f"`{command.strip()}`: {setting_line(result, args)}.",
            "",
            "```",
            *table_lines(rows),
            "```",
            "",
            cost_line(result) + ".",
            "",
            figure_text(rows, result, png),
        ]
    )


def print_table(rows: list[dict], result: dict, args: argparse.Namespace) -> None:
    print()
    print(setting_line(result, args))
    print("\n".join(table_lines(rows)))
    print("\n" + cost_line(result))


def _state_kib(monitor: DriftMonitor) -> float:
    return sum(a.nbytes for a in monitor.state_dict().values()) / 1024


def _npz_kib(monitor: DriftMonitor) -> float:
    from freshrank.core.serialization import npz_bytes

    return len(npz_bytes(monitor.state_dict(), compressed=True)) / 1024


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reports, shifts, t = result["reports"], result["shifts"], result["thresholds"]
    x = np.arange(len(reports))

    def values(feature: str, stat: Statistic) -> np.ndarray:
        out = []
        for r in reports:
            v = r.value(feature, stat)
            out.append(np.nan if v is None else v)
        return np.array(out)

    panels = [
        (
            "user interests: surprise excess (nats)",
            [("user_category", Statistic.SURPRISE)],
            t.surprise,
        ),
        (
            "categorical JS (bits)",
            [(f, Statistic.JS) for f in ("category", "query", "brand", "item", "device")],
            t.js,
        ),
        ("PSI", [("price", Statistic.PSI), ("score", Statistic.PSI)], t.psi),
        ("CTR shift (relative)", [("ctr", Statistic.CTR_SHIFT)], t.ctr_shift),
        ("unseen-id rate", [(f, Statistic.UNSEEN_RATE) for f in ("user", "item", "query")], None),
    ]
    fig, axes = plt.subplots(len(panels) + 1, 1, figsize=(12, 2.2 * (len(panels) + 1)), sharex=True)
    for ax, (title, series, thr) in zip(axes, panels, strict=False):
        for feature, stat in series:
            ax.plot(x, values(feature, stat), lw=1, label=f"{feature}")
        if stat is Statistic.SURPRISE:  # the threshold follows the statistic's own noise
            limits = [r.get("user_category", Statistic.SURPRISE) for r in reports]
            limit = [np.nan if e is None or e.threshold is None else e.threshold for e in limits]
            ax.plot(x, limit, ls="--", c="k", lw=0.8, label="threshold")
        elif thr is not None:
            ax.axhline(thr, ls="--", c="k", lw=0.8)
            if stat is Statistic.CTR_SHIFT:
                ax.axhline(-thr, ls="--", c="k", lw=0.8)
        ax.set_title(title, fontsize=9, loc="left")
        ax.legend(fontsize=7, loc="upper right", ncol=5)
    ax = axes[-1]
    ax.plot(x, result["aucs"], lw=1, c="tab:purple", label="prequential AUC")
    alarms = np.array([r.alarm for r in reports])
    ax.scatter(x[alarms], np.full(alarms.sum(), 0.5), marker="|", c="r", label="any alarm")
    ax.set_title("model AUC (evaluated before training) and alarms", fontsize=9, loc="left")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_xlabel("window")
    for a in axes:
        for s in shifts:
            a.axvline(s, c="r", lw=0.6, alpha=0.5)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


DEFAULTS: dict[str, object] = {}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--windows", type=int, default=240)
    p.add_argument("--requests", type=int, default=500, help="search requests per window")
    p.add_argument("--first-shift", type=int, default=60)
    p.add_argument("--shift-every", type=int, default=60)
    p.add_argument("--warmup", type=int, default=20, help="windows before judging false alarms")
    p.add_argument("--settle", type=int, default=10, help="windows after a shift not stationary")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-model", action="store_true", help="skip the ranker (no score drift)")
    p.add_argument("--name", default="drift", help="output files bench/out/<name>_*.{png,json}")
    p.add_argument("--no-write", action="store_true", help="do not write bench/RESULTS.md")
    p.add_argument("--verbose", action="store_true")
    DEFAULTS.update(vars(p.parse_args([])))
    args = p.parse_args()
    if args.windows < 1 or args.requests < 1 or args.shift_every < 1:
        p.error("--windows, --requests and --shift-every must be >= 1")
    torch.set_num_threads(1)
    result = run(args)
    rows = evaluate(result, args)
    print_table(rows, result, args)
    OUT.mkdir(parents=True, exist_ok=True)
    png, run_json = OUT / f"{args.name}_timeline.png", OUT / f"{args.name}_run.json"
    plot(result, png)
    with open(run_json, "w") as f:
        json.dump(
            {
                "args": vars(args),
                "thresholds": asdict(result["thresholds"]),
                "summary": rows,
                "windows": [r.to_dict() for r in result["reports"]],
                "auc": [None if math.isnan(a) else a for a in result["aucs"]],
            },
            f,
            indent=1,
        )
    print(f"wrote {png} and {run_json}")
    if not args.no_write:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _results import write_section

        title = f"Drift detection ({args.windows} windows x {result['rows_per_window']} rows)"
        path = write_section("Issue 5", title, results_markdown(rows, result, args, png))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
