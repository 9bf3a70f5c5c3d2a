"""Cold start through the promotion gate, in process: how many versions in a row a model trained
from scratch loses to its first version, by learning rate.

Run: ``python bench/bench_coldstart.py [--rates 0.003,0.01,0.02] [--windows 25]``.

The freshness bench's stream without Ray: the simulator (``--seed``), shards of 1,000 events,
windows of ``--window-shards`` shards, one pass per window at batch 1,024 (the live trainer's two
workers of 512) with the trainer's strategy, and each version judged against the champion on
the next window's rows by ``registry.gate.evaluate_gate`` (default tolerances), as the live
trainer's gate does. A shard trained into a rejected version waits for the next promoted one,
so the longest run of rejections sets the freshness tail (bench/RESULTS.md, "Freshness end to
end"). The baseline is the trainer's default before session 5, Adam lr 3e-3.
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import dataclass

import numpy as np
import torch

from freshrank.events.simulator import Simulator, SimulatorConfig
from freshrank.features.encode import encode
from freshrank.learn.config import TrainConfig
from freshrank.learn.optim import make_optimizer
from freshrank.learn.step import score_rows, train_window
from freshrank.learn.strategies import build_strategy
from freshrank.model.config import RankerConfig
from freshrank.model.ranker import Ranker
from freshrank.registry.promotion import GateConfig, evaluate_gate, metrics_from_logits

BASELINE_RATE = 3e-3
"""``TrainConfig.learning_rate`` before session 5."""


@dataclass(frozen=True)
class ColdStart:
    """One learning rate's run: the gate's decision and the new version's AUC per window."""

    rate: float
    promoted: tuple[bool, ...]
    auc: tuple[float, ...]
    seconds: float

    @property
    def longest_rejection_run(self) -> int:
        """Most versions in a row the gate refused."""
        longest = run = 0
        for ok in self.promoted:
            run = 0 if ok else run + 1
            longest = max(longest, run)
        return longest

    def windows_to(self, auc: float) -> int | None:
        """Windows trained before a version first reaches ``auc`` on the next window."""
        return next((i + 1 for i, a in enumerate(self.auc) if a >= auc), None)


def run(rate: float, windows: list[dict[str, np.ndarray]], strategy: str, seed: int) -> ColdStart:
    """Train from scratch at ``rate`` window by window, gating each version."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model = Ranker(RankerConfig())
    optimizer = make_optimizer(model, rate)
    train = TrainConfig("unused", "unused", strategy=strategy, learning_rate=rate)
    learner = build_strategy(train.strategy_config())
    rng = np.random.default_rng(seed)
    gate, cpu = GateConfig(), torch.device("cpu")
    champion: Ranker | None = None
    promoted: list[bool] = []
    auc: list[float] = []
    for rows, fresh in zip(windows[:-1], windows[1:], strict=True):
        train_window(model, optimizer, rows, learner, batch_size=1024, rng=rng, device=cpu)
        new = metrics_from_logits(fresh["label"], score_rows(model, fresh, cpu))
        new["rows"] = len(fresh["label"])
        old = None
        if champion is not None:
            old = metrics_from_logits(fresh["label"], score_rows(champion, fresh, cpu))
            old["rows"] = len(fresh["label"])
        decision = evaluate_gate(new, old, gate)
        if decision.promote:
            champion = copy.deepcopy(model)
        promoted.append(decision.promote)
        auc.append(float(new["auc"]))
    return ColdStart(rate, tuple(promoted), tuple(auc), time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rates", default="0.003,0.01,0.02", help="Adam learning rates to compare")
    p.add_argument("--windows", type=int, default=25, help="windows trained (and gated)")
    p.add_argument("--window-shards", type=int, default=4)
    p.add_argument("--shard-events", type=int, default=1000)
    p.add_argument("--strategy", default=TrainConfig("unused", "unused").strategy)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.windows < 2:
        p.error("--windows must be >= 2")
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    if BASELINE_RATE not in rates:
        rates.insert(0, BASELINE_RATE)
    torch.set_num_threads(1)
    sim = Simulator(SimulatorConfig(seed=args.seed))
    requests = args.shard_events // sim.config.list_size * args.window_shards
    features = RankerConfig().features
    windows = [encode(sim.generate(requests), features) for _ in range(args.windows + 1)]
    results = [run(rate, windows, args.strategy, args.seed) for rate in rates]
    base = next(r for r in results if r.rate == BASELINE_RATE)
    print(
        f"{args.windows} windows of {args.window_shards} x {args.shard_events} events, "
        f"strategy {args.strategy}, simulator seed {args.seed}; the gate's decision per window "
        "(P promoted, r rejected):\n"
    )
    print("| Adam lr | rejected | longest run | windows to AUC 0.70 | to 0.74 | last AUC | s |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        note = " (baseline)" if r is base else ""
        print(
            f"| {r.rate:g}{note} | {r.promoted.count(False)} | {r.longest_rejection_run} | "
            f"{r.windows_to(0.70)} | {r.windows_to(0.74)} | {r.auc[-1]:.3f} | {r.seconds:.0f} |"
        )
    print()
    for r in results:
        print(f"lr {r.rate:g}: " + "".join("P" if ok else "r" for ok in r.promoted))
        ratio = r.longest_rejection_run / max(base.longest_rejection_run, 1)
        print(f"  longest rejection run / baseline's: {ratio:.2f}")


if __name__ == "__main__":
    main()
