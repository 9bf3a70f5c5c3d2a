"""Strategy selection that cannot see the test: search on early periods, report once on later.

A log's tested periods (1 .. P-1; period 0 is only trained on) are split by time: the first
``selection_periods`` of them are the **selection** periods, the rest the **test** periods. The
search runs every :class:`Candidate` (a strategy and its knobs: LwF weight, replay mix and
capacity, exemplar negatives, learning rate) beside fine-tuning and joint retraining on the
selection periods only, over several seeds, then refines the best candidates' learning rate,
still on the selection periods. Only then is the chosen configuration run through every period,
with fine-tuning and joint retraining, and its figures on the test periods reported, once.
Nothing the search decides reads a test period: a run over periods ``0 .. S`` cannot, and the
final run's test figures are computed after the choice is made.

A candidate is *eligible* when it beats fine-tuning on every selection metric beyond noise
(its range over seeds lies above fine-tuning's: :meth:`Spread.compare`) and, if asked, trains
on at most ``max_events_vs_joint`` of joint retraining's events. Eligible candidates are
ranked by their *score*, the smallest share of the fine-tune -> joint gap they close over the
selection metrics. When none is eligible, nothing is chosen and the report says so (and which
candidates were better only within noise): fine-tuning stays the recommendation.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any

import numpy as np

from freshrank.learn.backtest.arms import Arm, Schedule
from freshrank.learn.backtest.candidates import (
    BASELINE,
    REFERENCE,
    Candidate,
    Spread,
    default_candidates,
)
from freshrank.learn.backtest.config import BacktestConfig
from freshrank.learn.backtest.data import DataSource, Period
from freshrank.learn.backtest.report import ArmResult, BacktestReport, backward_transfer
from freshrank.learn.backtest.run import run_periods

__all__ = [
    "MIN_PERIODS",
    "CandidateResult",
    "SelectionConfig",
    "SelectionReport",
    "half_figures",
    "run_seeds",
    "run_selection",
    "split_tested_periods",
]

MIN_PERIODS = 5
"""Fewest periods a selection needs: one to train on first, two to select on, two to test on."""


@dataclass(frozen=True)
class SelectionConfig:
    """How to split the periods and what to search.

    >>> SelectionConfig(seeds=(0, 0))
    Traceback (most recent call last):
    ...
    ValueError: SelectionConfig: seeds must be distinct, got (0, 0)
    """

    selection_periods: int | None = None
    """Tested periods to select on, from period 1 (None: half of the tested periods)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    candidates: tuple[Candidate, ...] = field(default_factory=default_candidates)
    learning_rates: tuple[float, ...] = (0.01, 0.03)
    """Stage 2: the ``refine`` best eligible candidates again at each of these rates."""
    refine: int = 2
    metrics: tuple[str, ...] = ("recall@{k}", "mrr@{k}")
    """Metrics a candidate must beat fine-tuning on (``{k}``: the backtest's cut-off)."""
    max_events_vs_joint: float | None = None
    """Eligible only at most this share of joint retraining's events (None: any)."""
    jobs: int = 1
    """Backtests run at once, each in its own process (1: in this process)."""
    report_all: bool = False
    """After the choice, run every configuration tried over every period too, so that the
    report shows each one's test figures beside the choice's (the choice is already made:
    they cannot change it)."""

    def __post_init__(self) -> None:
        def fail(msg: str) -> None:
            raise ValueError(f"SelectionConfig: {msg}")

        object.__setattr__(self, "seeds", tuple(self.seeds))
        object.__setattr__(self, "candidates", tuple(self.candidates))
        object.__setattr__(self, "learning_rates", tuple(self.learning_rates))
        object.__setattr__(self, "metrics", tuple(self.metrics))
        if not self.seeds:
            fail("seeds must hold at least one seed (3 or more for a spread)")
        if len(set(self.seeds)) != len(self.seeds):
            fail(f"seeds must be distinct, got {self.seeds}")
        if not self.candidates:
            fail("candidates must hold at least one Candidate")
        names = [c.name for c in self.candidates]
        if len(set(names)) != len(names) or {BASELINE, REFERENCE} & set(names):
            fail(f"candidate names must be distinct and not {BASELINE}/{REFERENCE}: {names}")
        if self.selection_periods is not None and self.selection_periods < 2:
            fail(f"selection_periods must be >= 2 or None, got {self.selection_periods}")
        if any(not r > 0 for r in self.learning_rates) or self.refine < 0:
            fail("learning_rates must be > 0 and refine >= 0")
        if not self.metrics:
            fail("metrics must name at least one metric")
        if self.max_events_vs_joint is not None and not self.max_events_vs_joint > 0:
            fail(f"max_events_vs_joint must be > 0 or None, got {self.max_events_vs_joint}")
        if self.jobs < 1:
            fail(f"jobs must be >= 1, got {self.jobs}")


def split_tested_periods(n_periods: int, selection_periods: int | None) -> tuple[int, int]:
    """``(S, P)``: tested periods ``1 .. S`` select, ``S+1 .. P-1`` test.

    >>> split_tested_periods(17, None)
    (8, 17)
    >>> split_tested_periods(4, None)
    Traceback (most recent call last):
    ...
    ValueError: a selection needs at least 5 periods (1 to train on first, 2 to select on, \
2 to test on); the log has 4
    """
    if n_periods < MIN_PERIODS:
        raise ValueError(
            f"a selection needs at least {MIN_PERIODS} periods (1 to train on first, 2 to select "
            f"on, 2 to test on); the log has {n_periods}"
        )
    tested = n_periods - 1
    s = tested // 2 if selection_periods is None else selection_periods
    if not 2 <= s <= tested - 2:
        raise ValueError(
            f"selection_periods must leave 2 or more periods to test on: with {n_periods} "
            f"periods it can be 2 .. {tested - 2}, got {s}"
        )
    return s, n_periods


HALF_METRICS = ("recall@{k}", "mrr@{k}", "auc", "gauc", "ndcg@10")


def half_figures(arm: ArmResult, first: int, last: int, k: int) -> dict[str, float]:
    """``arm``'s figures over tested periods ``first .. last`` (1-based, inclusive): the mean
    of each of :data:`HALF_METRICS`, backward transfer of Recall@K within those periods, and
    the events its updates before them trained on (``events``)."""
    chosen = arm.prequential[first - 1 : last]
    out = {}
    for template in HALF_METRICS:
        name = template.format(k=k)
        values = [m.get(name, float("nan")) for m in chosen]
        finite = [v for v in values if math.isfinite(v)]
        out[name] = float(np.mean(finite)) if finite else float("nan")
    for metric in (f"recall@{k}", "auc"):
        matrix = arm.accuracy.get(metric)
        out[f"bwt {metric}"] = (
            backward_transfer(matrix[first - 1 : last, first - 1 : last + 1])
            if matrix is not None and matrix.size
            else float("nan")
        )
    out["events"] = float(sum(arm.events_per_update[first - 1 : last]))
    return out


@dataclass(frozen=True)
class CandidateResult:
    """A candidate as the search saw it, on the selection periods only."""

    candidate: Candidate
    learning_rate: float
    figures: dict[str, Spread]
    """Selection-period figures over seeds (see :func:`half_figures`)."""
    gap_closed: dict[str, Spread]
    """Per selection metric: share of the fine-tune -> joint gap closed, per seed."""
    versus_baseline: dict[str, str]
    """Per selection metric: ``above`` / ``within noise`` / ``below`` fine-tuning."""
    events_vs_joint: float
    stage: int
    """1: the search space; 2: a learning-rate refinement of a stage-1 candidate."""

    @property
    def name(self) -> str:
        """The candidate's name, with the learning rate it ran at."""
        base = self.candidate.name
        return (
            base if self.candidate.learning_rate is not None else f"{base} lr{self.learning_rate:g}"
        )

    @property
    def score(self) -> float:
        """The smallest mean share of the gap closed over the selection metrics."""
        return min(s.mean for s in self.gap_closed.values())

    def eligible(self, max_events_vs_joint: float | None) -> bool:
        """Beats fine-tuning beyond noise on every metric, within the events budget."""
        cheap = max_events_vs_joint is None or self.events_vs_joint <= max_events_vs_joint
        return cheap and all(v == "above" for v in self.versus_baseline.values())


@dataclass(frozen=True)
class SelectionReport:
    """What the search tried and chose on the selection periods, and the choice's figures on
    the test periods (with fine-tuning's and joint retraining's, same seeds)."""

    name: str
    periods: tuple[str, ...]
    selection_periods: tuple[str, ...]
    test_periods: tuple[str, ...]
    seeds: tuple[int, ...]
    metrics: tuple[str, ...]
    learning_rate: float
    baseline: dict[str, Spread]
    reference: dict[str, Spread]
    candidates: tuple[CandidateResult, ...]
    """Every configuration tried, best score first."""
    chosen: CandidateResult | None
    """None when no candidate was eligible: keep fine-tuning."""
    final: dict[str, dict[str, dict[str, Spread]]]
    """arm (``finetune``, ``joint``, the chosen name; every candidate's with ``report_all``)
    -> ``selection`` / ``test`` -> figure -> spread, from the runs over every period made
    after the choice."""
    events_vs_joint: dict[str, dict[str, float]]
    """arm -> half -> its events as a share of joint retraining's over that half."""
    max_events_vs_joint: float | None = None

    @property
    def message(self) -> str:
        """One paragraph: what was chosen, or that nothing beat fine-tuning."""
        if self.chosen is not None:
            c = self.chosen
            return (
                f"chose {c.name}: on the selection periods it beats fine-tuning beyond noise on "
                f"{', '.join(self.metrics)} (closes {c.score:.0%} of the fine-tune -> joint gap "
                f"at least, at {c.events_vs_joint:.1%} of joint's events), over "
                f"{len(self.seeds)} seed(s)"
            )
        near = [c.name for c in self.candidates if c.score > 0][:3]
        return (
            "no configuration beat fine-tuning beyond noise on every one of "
            f"{', '.join(self.metrics)} on the selection periods"
            + (
                f" within the events budget ({self.max_events_vs_joint:.0%} of joint)"
                if self.max_events_vs_joint
                else ""
            )
            + (f"; better only within noise: {', '.join(near)}" if near else "")
            + "; keep fine-tuning"
        )

    def train_flags(self) -> tuple[str, ...]:
        """``freshrank train`` options of the recommendation (fine-tuning when none chosen)."""
        candidate = self.chosen.candidate if self.chosen else Candidate(BASELINE)
        lr = self.chosen.learning_rate if self.chosen else self.learning_rate
        return dataclasses.replace(candidate, learning_rate=lr).train_flags(lr)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (NaN as null)."""

        def spreads(d: dict[str, Spread]) -> dict[str, Any]:
            return {k: v.to_dict() for k, v in d.items()}

        return {
            "name": self.name,
            "periods": list(self.periods),
            "selection_periods": list(self.selection_periods),
            "test_periods": list(self.test_periods),
            "seeds": list(self.seeds),
            "metrics": list(self.metrics),
            "message": self.message,
            "chosen": self.chosen.name if self.chosen else None,
            "train_flags": list(self.train_flags()),
            "baseline": spreads(self.baseline),
            "reference": spreads(self.reference),
            "candidates": [
                {
                    "name": c.name,
                    "candidate": dataclasses.asdict(c.candidate),
                    "learning_rate": c.learning_rate,
                    "stage": c.stage,
                    "score": c.score,
                    "eligible": c.eligible(self.max_events_vs_joint),
                    "events_vs_joint": c.events_vs_joint,
                    "versus_finetune": c.versus_baseline,
                    "gap_closed": spreads(c.gap_closed),
                    "figures": spreads(c.figures),
                }
                for c in self.candidates
            ],
            "final": {
                arm: {half: spreads(f) for half, f in halves.items()}
                for arm, halves in self.final.items()
            },
            "events_vs_joint": self.events_vs_joint,
        }


Progress = Callable[[str], None]


def run_selection(
    config: BacktestConfig,
    selection: SelectionConfig,
    periods: Sequence[Period] | None = None,
    progress: Progress | None = None,
    initializer: Callable[[], None] | None = None,
) -> SelectionReport:
    """Search ``selection.candidates`` on the selection periods, choose, then report the choice
    on the test periods (see the module docstring).

    ``config`` gives the data, model and training settings (its arms are ignored; its seed is
    replaced by each of ``selection.seeds``). ``periods``: already loaded periods (then every
    backtest runs in this process); otherwise each backtest process loads ``config.data``.
    ``initializer`` runs first in every worker process (e.g. to register strategies).
    """
    say = progress or (lambda _line: None)
    loaded = list(periods) if periods is not None else _load(config.data)
    n = len(loaded)
    s, _ = split_tested_periods(n, selection.selection_periods)
    metrics = tuple(m.format(k=config.k) for m in selection.metrics)
    runner = _Runner(
        config,
        loaded if periods is not None or selection.jobs == 1 else None,
        selection,
        initializer,
        say,
    )
    base_lr = config.learning_rate
    try:
        # Stage 1: every candidate beside fine-tuning and joint, selection periods only.
        base = [Candidate(BASELINE).arm(), Arm(REFERENCE, Schedule.JOINT)]
        stage1 = list(selection.candidates)
        runs = runner.run(_groups(base_lr, base, stage1), s)
        ctx = _Context(s, config.k, metrics, runs[base_lr, BASELINE], runs[base_lr, REFERENCE])
        results = [ctx.result(c, base_lr, runs, 1) for c in stage1]
        # Stage 2: the best eligible candidates at the other learning rates.
        best = _ranked(results, selection.max_events_vs_joint)[: selection.refine]
        stage2 = [
            dataclasses.replace(r.candidate, learning_rate=lr)
            for r in best
            for lr in selection.learning_rates
            if not math.isclose(lr, r.learning_rate)
        ]
        stage2 = [c for c in stage2 if c.name not in {r.name for r in results}]
        if stage2:
            runs.update(runner.run(_groups(base_lr, [], stage2), s))
            results += [ctx.result(c, base_lr, runs, 2) for c in stage2]
        ordered = sorted(results, key=lambda r: -r.score if math.isfinite(r.score) else math.inf)
        eligible = _ranked(ordered, selection.max_events_vs_joint)
        chosen = eligible[0] if eligible else None
        say(f"selection: {chosen.name if chosen else 'nothing'} chosen; running every period")
        # The choice is made: now, and only now, every period (the test periods included).
        shown = ([chosen] if chosen else []) + (
            [r for r in ordered if r is not chosen] if selection.report_all else []
        )
        finals = runner.run(_groups(base_lr, base, [r.candidate for r in shown]), n - 1)
    finally:
        runner.close()
    final, shares = _final_figures(finals, shown, s, n - 1, config.k, base_lr)
    names = tuple(p.name for p in loaded)
    return SelectionReport(
        name=config.name,
        periods=names,
        selection_periods=names[1 : s + 1],
        test_periods=names[s + 1 :],
        seeds=selection.seeds,
        metrics=metrics,
        learning_rate=base_lr,
        baseline=ctx.figures(ctx.baseline),
        reference=ctx.figures(ctx.reference),
        candidates=tuple(ordered),
        chosen=chosen,
        final=final,
        events_vs_joint=shares,
        max_events_vs_joint=selection.max_events_vs_joint,
    )


_Runs = dict[tuple[float, str], list[ArmResult]]
"""(learning rate, arm name) -> the arm's result for every seed, in seed order."""


def _groups(
    base_lr: float, base: Sequence[Arm], candidates: Sequence[Candidate]
) -> list[tuple[float, list[Arm]]]:
    """Arms grouped by the learning rate they run at (one backtest per group and seed)."""
    groups: dict[float, list[Arm]] = {base_lr: list(base)} if base else {}
    for c in candidates:
        groups.setdefault(c.learning_rate or base_lr, []).append(c.arm())
    return list(groups.items())


def run_seeds(
    config: BacktestConfig,
    seeds: Sequence[int],
    jobs: int = 1,
    periods: Sequence[Period] | None = None,
    progress: Progress | None = None,
    initializer: Callable[[], None] | None = None,
) -> list[BacktestReport]:
    """``config`` once per seed (its ``seed`` replaced), ``jobs`` backtests at once: one
    report per seed, in order, each as :func:`run_periods` would return it."""
    selection = SelectionConfig(seeds=tuple(seeds), jobs=jobs)
    loaded = list(periods) if periods is not None else _load(config.data)
    in_process = periods is not None or jobs == 1
    runner = _Runner(
        config, loaded if in_process else None, selection, initializer, progress or _quiet
    )
    try:
        runs = runner.run([(config.learning_rate, config.arms)], len(loaded) - 1)
    finally:
        runner.close()
    return [
        BacktestReport(
            name=config.name,
            periods=tuple(p.name for p in loaded),
            arms=tuple(runs[config.learning_rate, a.name][i] for a in config.arms),
            k=config.k,
            events_per_period=tuple(p.train.num_rows for p in loaded),
        )
        for i in range(len(selection.seeds))
    ]


def _quiet(_line: str) -> None:
    pass


def _ranked(results: Sequence[CandidateResult], budget: float | None) -> list[CandidateResult]:
    ok = [r for r in results if r.eligible(budget)]
    return sorted(ok, key=lambda r: -r.score)


@dataclass(frozen=True)
class _Context:
    s: int
    k: int
    metrics: tuple[str, ...]
    baseline: list[ArmResult]
    reference: list[ArmResult]

    def per_seed(self, runs: Sequence[ArmResult]) -> list[dict[str, float]]:
        return [half_figures(a, 1, self.s, self.k) for a in runs]

    def figures(self, runs: Sequence[ArmResult]) -> dict[str, Spread]:
        return _spreads(self.per_seed(runs))

    def result(
        self, candidate: Candidate, base_lr: float, runs: _Runs, stage: int
    ) -> CandidateResult:
        lr = candidate.learning_rate or base_lr
        mine = self.per_seed(runs[lr, candidate.name])
        base, ref = self.per_seed(self.baseline), self.per_seed(self.reference)
        figures, base_spreads = _spreads(mine), _spreads(base)
        gap: dict[str, Spread] = {}
        versus: dict[str, str] = {}
        for m in self.metrics:
            shares = []
            for x, lo, hi in ((a[m], b[m], r[m]) for a, b, r in zip(mine, base, ref, strict=True)):
                width = abs(hi - lo) if abs(hi - lo) > 1e-12 else max(abs(lo), 1e-12)
                shares.append((x - lo) / width)
            gap[m] = Spread.of(shares)
            versus[m] = figures[m].compare(base_spreads[m])
        joint_events = _spreads(ref)["events"].mean
        share = figures["events"].mean / joint_events if joint_events else float("nan")
        return CandidateResult(candidate, lr, figures, gap, versus, share, stage)


def _spreads(per_seed: Sequence[dict[str, float]]) -> dict[str, Spread]:
    """Figure -> its spread over the seeds of ``per_seed`` (one dict of figures per seed)."""
    return {m: Spread.of([f[m] for f in per_seed]) for m in per_seed[0]}


def _final_figures(
    finals: _Runs,
    shown: Sequence[CandidateResult],
    s: int,
    tested: int,
    k: int,
    base_lr: float,
) -> tuple[dict[str, dict[str, dict[str, Spread]]], dict[str, dict[str, float]]]:
    arms = {BASELINE: finals[base_lr, BASELINE], REFERENCE: finals[base_lr, REFERENCE]}
    for r in shown:
        arms[r.name] = finals[r.learning_rate, r.candidate.name]
    final: dict[str, dict[str, dict[str, Spread]]] = {}
    for name, runs in arms.items():
        final[name] = {}
        for half, (a, b) in {"selection": (1, s), "test": (s + 1, tested)}.items():
            final[name][half] = _spreads([half_figures(r, a, b, k) for r in runs])
    shares = {
        name: {
            half: final[name][half]["events"].mean / final[REFERENCE][half]["events"].mean
            for half in ("selection", "test")
        }
        for name in final
    }
    return final, shares


@functools.lru_cache(maxsize=1)
def _load(data: DataSource) -> list[Period]:
    return data.load()


def _run_task(config: BacktestConfig, n_tested: int) -> BacktestReport:
    """One backtest in a worker process: its periods ``0 .. n_tested`` (loaded once)."""
    return run_periods(_load(config.data)[: n_tested + 1], config)


def _chunks(arms: tuple[Arm, ...], n: int) -> list[tuple[Arm, ...]]:
    """``arms`` dealt round-robin into at most ``n`` non-empty chunks.

    >>> [len(c) for c in _chunks(tuple(Arm(str(i)) for i in range(5)), 2)]
    [3, 2]
    """
    return [arms[i::n] for i in range(min(n, len(arms)))]


class _Runner:
    """Runs (learning rate, arms) groups over every seed, in this process or in a pool."""

    def __init__(
        self,
        config: BacktestConfig,
        periods: Sequence[Period] | None,
        selection: SelectionConfig,
        initializer: Callable[[], None] | None,
        say: Progress,
    ) -> None:
        self.config, self.periods, self.seeds, self.say = config, periods, selection.seeds, say
        self.chunks = 1 if periods is not None else selection.jobs
        self.pool: ProcessPoolExecutor | None = None
        if periods is None:
            self.pool = ProcessPoolExecutor(
                selection.jobs, mp_context=get_context("spawn"), initializer=initializer
            )

    def run(self, groups: Sequence[tuple[float, Sequence[Arm]]], n_tested: int) -> _Runs:
        # Arms are independent (each draws its own shuffles from the seed), so a pool splits a
        # group's arms into one chunk per worker: every process busy, the same numbers.
        tasks = [
            (lr, dataclasses.replace(self.config, arms=chunk, learning_rate=lr, seed=seed))
            for lr, arms in groups
            for seed in self.seeds
            for chunk in _chunks(tuple(arms), self.chunks)
        ]
        out: _Runs = {}
        if self.pool is None:
            assert self.periods is not None
            done = ((lr, cfg, run_periods(self.periods[: n_tested + 1], cfg)) for lr, cfg in tasks)
        else:
            futures = [(lr, cfg, self.pool.submit(_run_task, cfg, n_tested)) for lr, cfg in tasks]
            done = ((lr, cfg, future.result()) for lr, cfg, future in futures)
        for i, (lr, cfg, report) in enumerate(done, 1):
            for arm in report.arms:
                out.setdefault((lr, arm.name), []).append(arm)
            self._said(i, len(tasks), cfg, n_tested)
        return out

    def _said(self, i: int, total: int, cfg: BacktestConfig, n_tested: int) -> None:
        self.say(
            f"{i}/{total} seed {cfg.seed} lr {cfg.learning_rate:g}: {len(cfg.arms)} arm(s) over "
            f"periods 0-{n_tested}"
        )

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
