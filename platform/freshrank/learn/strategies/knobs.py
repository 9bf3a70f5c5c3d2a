"""One way of applying tunables to a strategy config: a typed set of knobs, and tuned configs
of whole strategy types, applied to every part a config holds.

Each config class declares the knobs it takes (``ReplayConfig.knobs`` maps
``replay_capacity`` to its ``capacity`` field, ...), so a knob reaches every part of a type
that takes it (replay knobs reach exemplar replay too) and no other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from freshrank.learn.strategies.base import StrategyConfig
from freshrank.learn.strategies.combined import CombinedConfig

__all__ = ["StrategyKnobs", "apply_knobs"]


@dataclass(frozen=True)
class StrategyKnobs:
    """Tunables for strategy configs; ``None`` leaves a field as the config has it.

    >>> StrategyKnobs(overrides=("replay",))
    Traceback (most recent call last):
    ...
    ValueError: StrategyKnobs: overrides must be strategy configs (e.g. LwFConfig(alpha=0.5)), \
got 'replay'
    """

    replay_capacity: int | None = None
    replay_ratio: float | None = None
    replay_positive_fraction: float | None = None
    replay_seed: int | None = None
    exemplar_negatives: int | None = None
    ewc_lambda: float | None = None
    ewc_decay: float | None = None
    ewc_fisher_rows: int | None = None
    ewc_fisher_batch_size: int | None = None
    ewc_seed: int | None = None
    lwf_alpha: float | None = None
    lwf_temperature: float | None = None
    overrides: tuple[StrategyConfig, ...] = ()
    """Tuned configs of whole types: a part of exactly that type is replaced by it (keeping the
    fields its short name chose, e.g. the replay buffer kind) before the knobs apply. The last
    one of a type wins."""

    def __post_init__(self) -> None:
        overrides = tuple(self.overrides)
        object.__setattr__(self, "overrides", overrides)
        for o in overrides:
            if not isinstance(o, StrategyConfig):
                raise ValueError(
                    "StrategyKnobs: overrides must be strategy configs "
                    f"(e.g. LwFConfig(alpha=0.5)), got {o!r}"
                )

    @classmethod
    def from_configs(
        cls, *configs: StrategyConfig, overrides: Sequence[StrategyConfig] = ()
    ) -> StrategyKnobs:
        """Knobs set to the values ``configs`` hold for the knobs their types declare (e.g. a
        ``ReplayConfig`` sets the four replay knobs), plus ``overrides``.

        >>> from freshrank.learn.strategies.lwf import LwFConfig
        >>> StrategyKnobs.from_configs(LwFConfig(alpha=0.5)).lwf_alpha
        0.5
        """
        values = {
            knob: getattr(config, name)
            for config in configs
            for knob, name in type(config).knobs.items()
        }
        return cls(**values, overrides=tuple(overrides))


def apply_knobs(config: StrategyConfig, knobs: StrategyKnobs) -> StrategyConfig:
    """``config`` with ``knobs`` applied to it, or to each of its parts when it is combined.

    >>> from freshrank.learn.strategies.registry import parse_strategy
    >>> tuned = apply_knobs(parse_strategy("replay-balanced+lwf"),
    ...                     StrategyKnobs(replay_capacity=10, lwf_alpha=0.25))
    >>> [(p.capacity, p.buffer.value) for p in tuned.parts[:1]], tuned.parts[1].alpha
    ([(10, 'click_balanced')], 0.25)
    """
    if isinstance(config, CombinedConfig):
        return CombinedConfig(tuple(_apply_one(p, knobs) for p in config.parts))
    return _apply_one(config, knobs)


def _apply_one(config: StrategyConfig, knobs: StrategyKnobs) -> StrategyConfig:
    cls = type(config)
    override = next((o for o in reversed(knobs.overrides) if type(o) is cls), None)
    if override is not None:
        kept = {name: getattr(config, name) for name in cls.chosen_by_name}
        config = dataclasses.replace(override, **kept) if kept else override
    values = {
        name: getattr(knobs, knob)
        for knob, name in cls.knobs.items()
        if getattr(knobs, knob) is not None
    }
    return dataclasses.replace(config, **values) if values else config
