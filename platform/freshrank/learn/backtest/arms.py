"""The arms of a backtest: a schedule (what an arm trains on at each period) and, for
incremental arms, a strategy; :func:`arms_from_names` builds them from short names.

================  ==========================================================================
schedule          update at period ``p``
================  ==========================================================================
``STATIC``        train on period 0 once, never again
``INCREMENTAL``   continue training on period ``p-1`` with a strategy (fine-tune, replay,
                  EWC, LwF, replay + LwF, ...), optimizer state kept
``JOINT``         retrain from scratch on periods ``0 .. p-1``
``SLIDING``       retrain from scratch on the last ``window`` periods
================  ==========================================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

from freshrank.learn.strategies import (
    CombinedConfig,
    EWCConfig,
    FineTuneConfig,
    LwFConfig,
    ReplayConfig,
    StrategyConfig,
    StrategyKnobs,
    apply_knobs,
    parse_strategy,
)

__all__ = ["ARM_NAMES", "DEFAULT_ARM_NAMES", "Arm", "Schedule", "arms_from_names", "default_arms"]


class Schedule(Enum):
    """What an arm trains on at each period (see the module docstring)."""

    STATIC = "static"
    INCREMENTAL = "incremental"
    JOINT = "joint"
    SLIDING = "sliding"


@dataclass(frozen=True)
class Arm:
    """One line of the comparison: a schedule and, for incremental arms, a strategy.

    >>> Arm("joint", Schedule.JOINT, strategy=ReplayConfig())
    Traceback (most recent call last):
    ...
    ValueError: Arm 'joint': only INCREMENTAL arms take a strategy; use FineTuneConfig() here
    """

    name: str
    schedule: Schedule = Schedule.INCREMENTAL
    strategy: StrategyConfig = field(default_factory=FineTuneConfig)
    window: int = 3
    """SLIDING only: how many recent periods each retrain uses."""
    epochs: int | None = None
    """Passes over each update's rows (None: ``BacktestConfig.epochs``)."""
    reset_optimizer: bool = False
    """INCREMENTAL only: a fresh Adam (no moments, step count 0) at every update instead of
    keeping its state across updates (retraining schedules always start fresh)."""

    def __post_init__(self) -> None:
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"Arm {self.name!r}: epochs must be >= 1 or None, got {self.epochs}")
        if not self.name:
            raise ValueError("Arm: name must not be empty")
        if not isinstance(self.schedule, Schedule):
            raise ValueError(
                f"Arm {self.name!r}: schedule must be a Schedule, got {self.schedule!r}"
            )
        if self.schedule is not Schedule.INCREMENTAL and not isinstance(
            self.strategy, FineTuneConfig
        ):
            raise ValueError(
                f"Arm {self.name!r}: only INCREMENTAL arms take a strategy; "
                "use FineTuneConfig() here"
            )
        if self.window < 1:
            raise ValueError(f"Arm {self.name!r}: window must be >= 1, got {self.window}")
        if self.reset_optimizer and self.schedule is not Schedule.INCREMENTAL:
            raise ValueError(
                f"Arm {self.name!r}: reset_optimizer is for INCREMENTAL arms (retraining "
                "schedules always start with a fresh optimizer)"
            )


def default_arms(
    replay: ReplayConfig | None = None,
    ewc: EWCConfig | None = None,
    lwf: LwFConfig | None = None,
    window: int = 3,
) -> tuple[Arm, ...]:
    """static, fine-tune, replay, EWC, LwF, replay + LwF, joint and sliding-window retrain."""
    replay = replay or ReplayConfig()
    ewc = ewc or EWCConfig()
    lwf = lwf or LwFConfig()
    return (
        Arm("static", Schedule.STATIC),
        Arm("finetune"),
        Arm("replay", strategy=replay),
        Arm("ewc", strategy=ewc),
        Arm("lwf", strategy=lwf),
        Arm("replay+lwf", strategy=CombinedConfig((replay, lwf))),
        Arm("joint", Schedule.JOINT),
        Arm(f"sliding-{window}", Schedule.SLIDING, window=window),
    )


ARM_NAMES: tuple[str, ...] = (
    "static",
    "finetune",
    "replay",
    "replay-balanced",
    "ewc",
    "ewc-separate",
    "lwf",
    "replay+lwf",
    "joint",
    "sliding",
)
"""Arm names :func:`arms_from_names` understands (``+`` joins incremental strategies)."""

DEFAULT_ARM_NAMES: tuple[str, ...] = (
    "static",
    "finetune",
    "replay",
    "ewc",
    "lwf",
    "replay+lwf",
    "joint",
    "sliding",
)


def arms_from_names(
    names: Sequence[str],
    window: int = 3,
    replay: ReplayConfig | None = None,
    ewc: EWCConfig | None = None,
    lwf: LwFConfig | None = None,
    others: Sequence[StrategyConfig] = (),
    reset_optimizer: bool = False,
) -> tuple[Arm, ...]:
    """Arms from short names; ``replay`` / ``ewc`` / ``lwf`` carry the tunables every arm with
    that part uses (the buffer kind and EWC mode still come from the name; ``replay``'s
    capacity, mix ratio and seed apply to every replay part, exemplar replay included, through
    :func:`~freshrank.learn.strategies.apply_knobs`). ``others`` holds tuned configs
    of any other strategy type, used wherever a part has that type. A ``:N`` suffix gives the
    arm its own number of passes per update (``lwf:3``); ``reset_optimizer`` applies to every
    incremental arm.

    >>> [a.name for a in arms_from_names(["finetune", "replay+lwf", "sliding"], window=2)]
    ['finetune', 'replay+lwf', 'sliding-2']
    >>> arms_from_names(["lwf:3"])[0].epochs
    3
    >>> arms_from_names(["exemplar-replay"], replay=ReplayConfig(mix_ratio=0.25))[0].strategy
    ExemplarReplayConfig(capacity=50000, mix_ratio=0.25, buffer=<BufferKind.RESERVOIR: \
'reservoir'>, positive_fraction=0.5, seed=0, negatives=3)
    """
    replay, ewc, lwf = replay or ReplayConfig(), ewc or EWCConfig(), lwf or LwFConfig()
    knobs = StrategyKnobs.from_configs(replay, ewc, lwf, overrides=others)

    arms = []
    for full in names:
        full = full.strip().lower()
        name, _, passes = full.partition(":")
        epochs = int(passes) if passes else None
        suffix = f":{epochs}" if epochs else ""
        if name == "static":
            arms.append(Arm("static" + suffix, Schedule.STATIC, epochs=epochs))
        elif name == "joint":
            arms.append(Arm("joint" + suffix, Schedule.JOINT, epochs=epochs))
        elif name.startswith("sliding"):
            arms.append(
                Arm(f"sliding-{window}{suffix}", Schedule.SLIDING, window=window, epochs=epochs)
            )
        else:
            strategy = apply_knobs(parse_strategy(name), knobs)
            arms.append(
                Arm(
                    name + suffix,
                    strategy=strategy,
                    epochs=epochs,
                    reset_optimizer=reset_optimizer,
                )
            )
    return tuple(arms)
