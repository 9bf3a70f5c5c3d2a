"""Where a backtest's periods come from: the simulator, DIGINETICA, or any parquet event log.

Each source's ``load()`` returns the periods in time order, each a **train** table and a
disjoint **test** table (held-out requests or sessions) in the event schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from freshrank.events.adapters.diginetica import DigineticaConfig, load_periods
from freshrank.events.schema import drop_invalid_rows
from freshrank.events.simulator import Simulator, SimulatorConfig

__all__ = [
    "DataSource",
    "DigineticaData",
    "ParquetData",
    "Period",
    "SimulatorData",
    "split_by_request",
]


@dataclass(frozen=True)
class Period:
    """One period of the log: rows to train on and disjoint rows to test on (event schema)."""

    name: str
    train: pa.Table
    test: pa.Table


@dataclass(frozen=True)
class SimulatorData:
    """Periods from the simulator, optionally with a planted shift before period ``shift_at``.

    >>> SimulatorData(periods=3, shift_at=3)
    Traceback (most recent call last):
    ...
    ValueError: SimulatorData: shift_at must be in [1, periods - 1] = [1, 2] or None, got 3
    """

    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
    periods: int = 8
    requests_per_period: int = 5_000
    shift_at: int | None = None
    test_fraction: float = 0.1

    def __post_init__(self) -> None:
        if self.periods < 2:
            raise ValueError(f"SimulatorData: periods must be >= 2, got {self.periods}")
        if self.requests_per_period < 10:
            raise ValueError(
                f"SimulatorData: requests_per_period must be >= 10, got {self.requests_per_period}"
            )
        if self.shift_at is not None and not 1 <= self.shift_at < self.periods:
            raise ValueError(
                f"SimulatorData: shift_at must be in [1, periods - 1] = [1, {self.periods - 1}] "
                f"or None, got {self.shift_at}"
            )
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(
                f"SimulatorData: test_fraction must be in (0, 1), got {self.test_fraction}"
            )

    def load(self) -> list[Period]:
        """Generate the periods (deterministic for a given config)."""
        sim = Simulator(self.simulator)
        out = []
        for p in range(self.periods):
            if p == self.shift_at:
                sim.planted_shift()
            table = sim.generate(self.requests_per_period)
            train, test = split_by_request(table, self.test_fraction, seed=self.simulator.seed + p)
            out.append(Period(f"sim{p}", train, test))
        return out


@dataclass(frozen=True)
class DigineticaData:
    """DIGINETICA periods through the adapter (``events.adapters.diginetica``)."""

    adapter: DigineticaConfig = field(default_factory=DigineticaConfig)
    periods: tuple[int, ...] | None = None
    """Which periods, in order (None: every ``period_*.txt`` found)."""

    def load(self) -> list[Period]:
        """Read and convert the periods."""
        return [
            Period(f"p{pe.period}", pe.train, pe.test)
            for pe in load_periods(self.adapter, self.periods)
        ]


@dataclass(frozen=True)
class ParquetData:
    """Any event log: one parquet file (or directory of shards) per period, in time order."""

    paths: tuple[str, ...]
    test_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.paths) < 2:
            raise ValueError(f"ParquetData: give at least two periods, got {len(self.paths)}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(
                f"ParquetData: test_fraction must be in (0, 1), got {self.test_fraction}"
            )

    def load(self) -> list[Period]:
        """Read each period and split its requests into train and test."""
        out = []
        for i, path in enumerate(self.paths):
            table, _ = drop_invalid_rows(pq.read_table(path))
            train, test = split_by_request(table, self.test_fraction, seed=self.seed + i)
            out.append(Period(Path(path).stem, train, test))
        return out


DataSource = SimulatorData | DigineticaData | ParquetData


def split_by_request(
    table: pa.Table, test_fraction: float, seed: int = 0
) -> tuple[pa.Table, pa.Table]:
    """Split rows into (train, test) by request: a seeded ``test_fraction`` of requests is test.

    >>> t = pa.table({"request_id": ["a", "a", "b", "c", "c", "d"], "x": list(range(6))})
    >>> train, test = split_by_request(t, 0.5, seed=0)
    >>> train.num_rows + test.num_rows, sorted(set(train["request_id"].to_pylist())
    ...     & set(test["request_id"].to_pylist()))
    (6, [])
    """
    codes = _request_codes(table)
    n = int(codes.max()) + 1 if len(codes) else 0
    rng = np.random.default_rng(seed)
    is_test = rng.random(n) < test_fraction
    mask = is_test[codes] if n else np.zeros(0, dtype=bool)
    return table.filter(pa.array(~mask)), table.filter(pa.array(mask))


def _request_codes(table: pa.Table) -> np.ndarray:
    """Int code per row of its request, numbered in order of first appearance."""
    if table.num_rows == 0:
        return np.zeros(0, dtype=np.int64)
    encoded = pc.dictionary_encode(table.column("request_id")).combine_chunks()
    return np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
