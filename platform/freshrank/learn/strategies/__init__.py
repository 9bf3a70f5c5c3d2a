"""Continual-learning strategies as small objects (one per file), their configs, the registry
that builds them by kind, the knobs that tune them, and their checkpoint-state helpers.

The trainer sums what the hooks return and calls them in order (see
:mod:`freshrank.learn.strategies.base`): ``before_window``, per step ``replay_rows`` /
``penalty`` / ``on_step``, ``after_window``, plus ``state_dict`` / ``load_state_dict``.

Library strategies: :class:`FineTune` (nothing), :class:`Replay` (a reservoir or click-balanced
buffer), :class:`ExemplarReplay` (past clicks against the current window's candidates; on
DIGINETICA the one strategy that matches joint retraining), :class:`EWC` (diagonal Fisher,
separate or online), :class:`LwF` (binary distillation from the model as it was before the
window) and :class:`Combined` (e.g. replay + LwF).

**Kinds.** A kind is a string: the library's are the members of :class:`StrategyKind` (a
``StrEnum``), and the registry is keyed by the string, so code outside the library adds kinds
of its own: ``bench/experimental_strategies.py`` registers the variants measured on DIGINETICA
that did not beat LwF (dark replay, weight averaging, anchor, shrink and perturb, pair
distillation) with :func:`register` before ``bench/bench_backtest.py`` parses its arm names.
A kind also names a part's state in a combined strategy (``0.replay/rows/label``), so it is
part of the checkpoint format. :func:`build_strategy` and :func:`parse_strategy` look the kind
and the short names up in the registry (:func:`default_registry` unless one is given).

**Knobs.** :func:`apply_knobs` with a :class:`StrategyKnobs` is the one way tunables reach a
config (the trainer's ``TrainConfig.strategy_config`` and the backtest's arm names use it);
each config class declares in ``knobs`` which it takes.
"""

from freshrank.learn.strategies.base import StateDict, Strategy, StrategyConfig, StrategyKind
from freshrank.learn.strategies.combined import Combined, CombinedConfig
from freshrank.learn.strategies.ewc import EWC, EWCConfig, EWCMode
from freshrank.learn.strategies.exemplar import ExemplarReplay, ExemplarReplayConfig
from freshrank.learn.strategies.finetune import FineTune, FineTuneConfig
from freshrank.learn.strategies.knobs import StrategyKnobs, apply_knobs
from freshrank.learn.strategies.lwf import LwF, LwFConfig, bernoulli_kl
from freshrank.learn.strategies.registry import (
    StrategyEntry,
    StrategyRegistry,
    build_strategy,
    default_registry,
    library_registry,
    parse_strategy,
    register,
)
from freshrank.learn.strategies.replay import BufferKind, Replay, ReplayConfig
from freshrank.learn.strategies.state import partition_state, reshard_state

__all__ = [
    "EWC",
    "BufferKind",
    "Combined",
    "CombinedConfig",
    "EWCConfig",
    "EWCMode",
    "ExemplarReplay",
    "ExemplarReplayConfig",
    "FineTune",
    "FineTuneConfig",
    "LwF",
    "LwFConfig",
    "Replay",
    "ReplayConfig",
    "StateDict",
    "Strategy",
    "StrategyConfig",
    "StrategyEntry",
    "StrategyKind",
    "StrategyKnobs",
    "StrategyRegistry",
    "apply_knobs",
    "bernoulli_kl",
    "build_strategy",
    "default_registry",
    "library_registry",
    "parse_strategy",
    "partition_state",
    "register",
    "reshard_state",
]
