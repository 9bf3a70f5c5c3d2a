"""Backtests: replay a time-ordered log, period by period, through a list of update policies.

A :class:`BacktestConfig` names the data (:class:`SimulatorData`, :class:`DigineticaData`,
:class:`ParquetData`), the arms (:class:`Arm`: a :class:`Schedule` and, for incremental arms,
a strategy; :func:`default_arms`, :func:`arms_from_names`), the model and the training
settings. :func:`run_backtest` runs every arm in this process (no Ray) and returns a
:class:`BacktestReport`: per arm the prequential metrics of every tested period, the accuracy
matrix and backward transfer, recovery after a shift, recall by item age and the events
trained; ``to_dict()`` is its JSON form. Progress goes to an optional callback. Writing
reports and plots is the caller's business (``bench/backtest_harness.py`` does it for the
benchmarks; ``freshrank backtest`` prints a JSON summary). :func:`run_selection` chooses a
strategy on early periods and reports it once on later ones (``freshrank backtest --select``).
"""

from freshrank.learn.backtest.arms import (
    ARM_NAMES,
    DEFAULT_ARM_NAMES,
    Arm,
    Schedule,
    arms_from_names,
    default_arms,
)
from freshrank.learn.backtest.candidates import Candidate, Spread, default_candidates
from freshrank.learn.backtest.config import BacktestConfig
from freshrank.learn.backtest.data import (
    DataSource,
    DigineticaData,
    ParquetData,
    Period,
    SimulatorData,
    split_by_request,
)
from freshrank.learn.backtest.report import (
    ITEM_AGE_CLASSES,
    ArmResult,
    BacktestReport,
    backward_transfer,
    recovery_windows,
)
from freshrank.learn.backtest.run import (
    BacktestProgress,
    ProgressCallback,
    reseeded,
    run_backtest,
    run_periods,
)
from freshrank.learn.backtest.selection import (
    MIN_PERIODS,
    CandidateResult,
    SelectionConfig,
    SelectionReport,
    half_figures,
    run_seeds,
    run_selection,
    split_tested_periods,
)

__all__ = [
    "ARM_NAMES",
    "MIN_PERIODS",
    "DEFAULT_ARM_NAMES",
    "ITEM_AGE_CLASSES",
    "Arm",
    "ArmResult",
    "BacktestConfig",
    "BacktestProgress",
    "BacktestReport",
    "Candidate",
    "CandidateResult",
    "DataSource",
    "DigineticaData",
    "ParquetData",
    "Period",
    "ProgressCallback",
    "Schedule",
    "SelectionConfig",
    "SelectionReport",
    "SimulatorData",
    "Spread",
    "arms_from_names",
    "backward_transfer",
    "default_arms",
    "default_candidates",
    "half_figures",
    "recovery_windows",
    "reseeded",
    "run_backtest",
    "run_periods",
    "run_seeds",
    "run_selection",
    "split_by_request",
    "split_tested_periods",
]
