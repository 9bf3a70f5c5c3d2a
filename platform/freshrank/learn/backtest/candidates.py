"""What a strategy selection searches and how it reads noise: a :class:`Candidate` is a
strategy with the knobs ``freshrank train`` takes; a :class:`Spread` is one figure over seeds,
and two spreads differ beyond noise only when their ranges do not overlap."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from freshrank.learn.backtest.arms import Arm
from freshrank.learn.strategies import (
    CombinedConfig,
    StrategyConfig,
    StrategyKnobs,
    apply_knobs,
    parse_strategy,
)

__all__ = ["BASELINE", "REFERENCE", "Candidate", "Spread", "default_candidates"]

BASELINE = "finetune"
REFERENCE = "joint"
_KNOBS = ("lwf_alpha", "replay_ratio", "replay_capacity", "exemplar_negatives")
_SHORT = {"lwf_alpha": "a", "replay_ratio": "mix", "replay_capacity": "cap"}
_SHORT["exemplar_negatives"] = "neg"


@dataclass(frozen=True)
class Spread:
    """One figure over seeds: mean and range.

    >>> a, b = Spread.of([0.60, 0.62]), Spread.of([0.55, 0.59])
    >>> a.mean, a.compare(b), b.compare(a), a.compare(Spread.of([0.61]))
    (0.61, 'above', 'below', 'within noise')
    """

    mean: float
    low: float
    high: float
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        """The spread of ``values`` (NaNs ignored; all NaN: NaN)."""
        finite = [float(v) for v in values if v is not None and math.isfinite(v)]
        if not finite:
            nan = float("nan")
            return cls(nan, nan, nan, tuple(float(v) for v in values))
        return cls(float(np.mean(finite)), min(finite), max(finite), tuple(finite))

    def compare(self, other: Spread) -> Literal["above", "below", "within noise"]:
        """``above`` when every value lies above every value of ``other``, ``below`` when every
        value lies below, else ``within noise`` (the ranges overlap or touch)."""
        if self.low > other.high:
            return "above"
        if self.high < other.low:
            return "below"
        return "within noise"

    def to_dict(self) -> dict[str, Any]:
        """JSON form (NaN as null)."""
        return {
            k: (v if isinstance(v, float) and math.isfinite(v) else None)
            for k, v in (("mean", self.mean), ("low", self.low), ("high", self.high))
        } | {"values": [v if math.isfinite(v) else None for v in self.values]}


@dataclass(frozen=True)
class Candidate:
    """One configuration to try: a strategy name and the knobs ``freshrank train`` takes.

    >>> Candidate("exemplar-replay+lwf", lwf_alpha=0.25).name
    'exemplar-replay+lwf a0.25 neg3'
    >>> Candidate("lwf", lwf_alpha=0.5, learning_rate=0.01).train_flags(0.02)
    ('--strategy', 'lwf', '--lwf-alpha', '0.5', '--learning-rate', '0.01')
    >>> Candidate("dropout")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Candidate 'dropout': unknown strategy 'dropout'; choose from finetune, ...
    """

    strategy: str = BASELINE
    lwf_alpha: float = 1.0
    replay_ratio: float = 0.5
    replay_capacity: int = 50_000
    exemplar_negatives: int = 3
    learning_rate: float | None = None
    """Adam's step size (None: the backtest config's)."""

    def __post_init__(self) -> None:
        try:
            self.strategy_config()
        except ValueError as exc:
            raise ValueError(f"Candidate {self.strategy!r}: {exc}") from None
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(
                f"Candidate {self.strategy!r}: learning_rate must be > 0 or None, "
                f"got {self.learning_rate}"
            )

    def strategy_config(self) -> StrategyConfig:
        """The strategy config, with this candidate's knobs applied to every part."""
        knobs = StrategyKnobs(**{k: getattr(self, k) for k in _KNOBS})
        return apply_knobs(parse_strategy(self.strategy), knobs)

    def knobs(self) -> tuple[str, ...]:
        """The knobs some part of the strategy takes (the others do nothing)."""
        config = self.strategy_config()
        parts = config.parts if isinstance(config, CombinedConfig) else (config,)
        taken = {k for part in parts for k in type(part).knobs}
        return tuple(k for k in _KNOBS if k in taken)

    @property
    def name(self) -> str:
        """The strategy with the knobs it takes (mix and capacity only when not the default)."""
        defaults = Candidate()
        words = [self.strategy]
        for knob in self.knobs():
            value = getattr(self, knob)
            if knob in ("replay_ratio", "replay_capacity") and value == getattr(defaults, knob):
                continue
            words.append(f"{_SHORT[knob]}{value:g}")
        if self.learning_rate is not None:
            words.append(f"lr{self.learning_rate:g}")
        return " ".join(words)

    def arm(self) -> Arm:
        """The backtest arm of this candidate (named :attr:`name`)."""
        return Arm(self.name, strategy=self.strategy_config())

    def train_flags(self, learning_rate: float) -> tuple[str, ...]:
        """``freshrank train`` options that run this candidate live (``learning_rate``: the
        backtest's, used when the candidate has none of its own)."""
        flags = ["--strategy", self.strategy]
        for knob in self.knobs():
            value = getattr(self, knob)
            text = str(value) if isinstance(value, int) else f"{value:g}"
            flags += [f"--{knob.replace('_', '-')}", text]
        return (*flags, "--learning-rate", f"{self.learning_rate or learning_rate:g}")


def default_candidates() -> tuple[Candidate, ...]:
    """The search space of ``freshrank backtest --select`` (stage 1; the learning rate is
    refined in stage 2): the library's strategies at the knob values that earlier DIGINETICA
    and simulator rounds found competitive, and their neighbours."""
    out = [
        Candidate("replay"),
        Candidate("replay", replay_ratio=0.25),
        Candidate("ewc"),
        Candidate("replay+lwf", lwf_alpha=0.5),
    ]
    out += [Candidate("lwf", lwf_alpha=a) for a in (0.25, 0.5, 1.0)]
    out += [Candidate("exemplar-replay", exemplar_negatives=n) for n in (3, 5)]
    out += [Candidate("exemplar-replay+lwf", lwf_alpha=a) for a in (0.15, 0.25, 0.5)]
    return tuple(out)
