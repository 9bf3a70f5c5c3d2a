"""Simulator throughput: events per second of ``Simulator.generate`` against the 200k/s goal.

Run: ``python bench/bench_simulator.py [--requests N] [--runs K]``. Each run builds a fresh
simulator with the default world (5,000 users, 2,000 items, arrivals and drift on), warms it up,
then times one ``generate`` call; the table reports the median and the spread over the runs.
"""

from __future__ import annotations

import argparse
import statistics
import time

from freshrank.events import Simulator, SimulatorConfig

GOAL_EVENTS_PER_S = 200_000


def measure(requests: int, runs: int, seed: int = 0) -> list[float]:
    """Events per second of ``runs`` timed ``generate(requests)`` calls (fresh world each)."""
    rates = []
    for run in range(runs):
        sim = Simulator(SimulatorConfig(seed=seed + run))
        sim.generate(1_000)  # warm-up: first-call allocations
        start = time.perf_counter()
        table = sim.generate(requests)
        elapsed = time.perf_counter() - start
        rates.append(table.num_rows / elapsed)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50_000, help="requests per timed call")
    parser.add_argument("--runs", type=int, default=7, help="timed runs (median reported)")
    args = parser.parse_args()

    rates = measure(args.requests, args.runs)
    median = statistics.median(rates)
    rows = [
        ("events per call", f"{args.requests * SimulatorConfig().list_size:,}"),
        ("runs", f"{args.runs}"),
        ("min events/s", f"{min(rates):,.0f}"),
        ("median events/s", f"{median:,.0f}"),
        ("max events/s", f"{max(rates):,.0f}"),
        ("goal events/s", f"{GOAL_EVENTS_PER_S:,}"),
        ("median / goal", f"{median / GOAL_EVENTS_PER_S:.1f}x"),
        ("meets goal", "yes" if median >= GOAL_EVENTS_PER_S else "NO"),
    ]
    width = max(len(name) for name, _ in rows)
    print("simulator throughput (Simulator.generate, default world)")
    for name, value in rows:
        print(f"  {name:<{width}}  {value:>14}")


if __name__ == "__main__":
    main()
