"""Kinds to classes: which config builds which strategy, and which short names parse to what.

The library's kinds are in :func:`library_registry`; the default registry (what
:func:`build_strategy`, :func:`parse_strategy` and the trainer's config use) starts with them,
and code outside the library adds its own with :func:`register` (bench/experimental_strategies.py
does, before it parses arm names). Registering the same entry twice is a no-op; a different
entry under a kind or a short name already taken is an error.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from freshrank.learn.strategies.base import Strategy, StrategyConfig
from freshrank.learn.strategies.combined import Combined, CombinedConfig
from freshrank.learn.strategies.ewc import EWC, EWCConfig, EWCMode
from freshrank.learn.strategies.exemplar import ExemplarReplay, ExemplarReplayConfig
from freshrank.learn.strategies.finetune import FineTune, FineTuneConfig
from freshrank.learn.strategies.lwf import LwF, LwFConfig
from freshrank.learn.strategies.replay import BufferKind, Replay, ReplayConfig

__all__ = [
    "StrategyEntry",
    "StrategyRegistry",
    "build_strategy",
    "default_registry",
    "library_registry",
    "parse_strategy",
    "register",
]


@dataclass(frozen=True)
class StrategyEntry:
    """One kind: its config class, its strategy class and the short names that parse to it.

    >>> StrategyEntry("lwf", FineTuneConfig, FineTune)
    Traceback (most recent call last):
    ...
    ValueError: StrategyEntry 'lwf': FineTuneConfig.kind is 'finetune'; set the config's kind \
ClassVar to 'lwf'
    """

    kind: str
    config: type[StrategyConfig]
    strategy: type[Strategy]
    names: Mapping[str, StrategyConfig] = field(default_factory=dict)
    """Short name -> the config it parses to (``"replay-balanced"`` -> a click-balanced
    ``ReplayConfig``); lower case, no ``+`` (that joins parts)."""

    def __post_init__(self) -> None:
        where = f"StrategyEntry {self.kind!r}"
        if not isinstance(self.kind, str) or not self.kind:
            raise ValueError(f"{where}: kind must be a non-empty string (or a StrEnum member)")
        for cls, what in ((self.config, "config"), (self.strategy, "strategy")):
            own = getattr(cls, "kind", None)
            if own != self.kind:
                raise ValueError(
                    f"{where}: {cls.__name__}.kind is {str(own)!r}; set the {what}'s kind "
                    f"ClassVar to {str(self.kind)!r}"
                )
        if not (isinstance(self.config, type) and issubclass(self.config, StrategyConfig)):
            raise ValueError(f"{where}: config must subclass StrategyConfig")
        if not (isinstance(self.strategy, type) and issubclass(self.strategy, Strategy)):
            raise ValueError(f"{where}: strategy must subclass Strategy")
        names = dict(self.names)
        object.__setattr__(self, "names", names)
        for name, config in names.items():
            if name != name.strip().lower() or "+" in name or not name:
                raise ValueError(f"{where}: name {name!r} must be lower case without '+'")
            if type(config) is not self.config:
                raise ValueError(
                    f"{where}: name {name!r} parses to a {type(config).__name__}, "
                    f"not a {self.config.__name__}"
                )


class StrategyRegistry:
    """Kinds -> :class:`StrategyEntry`, and short names -> configs, in registration order."""

    def __init__(self, entries: Iterable[StrategyEntry] = ()) -> None:
        self._entries: dict[str, StrategyEntry] = {}
        self._names: dict[str, StrategyConfig] = {}
        for entry in entries:
            self.add(entry)

    def add(self, entry: StrategyEntry) -> None:
        """Register ``entry`` (again: a no-op). A kind or name taken by another entry fails."""
        held = self._entries.get(entry.kind)
        if held == entry:
            return
        if held is not None:
            raise ValueError(
                f"strategy kind {str(entry.kind)!r} is already registered for "
                f"{held.config.__name__}; choose another kind"
            )
        taken = sorted(set(entry.names) & set(self._names))
        if taken:
            raise ValueError(f"strategy names already registered: {', '.join(taken)}")
        self._entries[entry.kind] = entry
        self._names.update(entry.names)

    def copy(self) -> StrategyRegistry:
        """A registry of its own with the same entries (to add to without touching this one)."""
        return StrategyRegistry(self._entries.values())

    def kinds(self) -> frozenset[str]:
        """Every registered kind."""
        return frozenset(self._entries)

    def names(self) -> tuple[str, ...]:
        """Every short name :meth:`parse` understands, in registration order."""
        return tuple(self._names)

    def entry(self, kind: str) -> StrategyEntry:
        """The entry of ``kind`` (KeyError naming the registered kinds when there is none)."""
        try:
            return self._entries[kind]
        except KeyError:
            known = ", ".join(sorted(map(str, self._entries)))
            raise KeyError(f"no strategy kind {str(kind)!r} registered; known: {known}") from None

    def build(self, config: StrategyConfig, rank: int = 0) -> Strategy:
        """The strategy ``config`` describes, with a random stream of its own for ``rank``."""
        kind = getattr(type(config), "kind", None)
        entry = self._entries.get(kind) if isinstance(kind, str) else None
        if entry is None or type(config) is not entry.config:
            raise TypeError(f"not a strategy config of a registered kind: {config!r}")
        return entry.strategy.from_config(config, rank, self.build)

    def parse(self, text: str) -> StrategyConfig:
        """A default config from a short name, or a :class:`CombinedConfig` of names joined
        with ``+`` (see :func:`parse_strategy`)."""
        parts = [p.strip().lower() for p in text.split("+")]
        for p in parts:
            if p not in self._names:
                raise ValueError(
                    f"unknown strategy {p!r}; choose from {', '.join(self._names)}, "
                    "or join them with '+'"
                )
        if len(parts) == 1:
            return self._names[parts[0]]
        return CombinedConfig(tuple(self._names[p] for p in parts))


def library_registry() -> StrategyRegistry:
    """A new registry holding the library's kinds (:class:`~.base.StrategyKind`) only."""
    return StrategyRegistry(
        (
            StrategyEntry(
                FineTuneConfig.kind, FineTuneConfig, FineTune, {"finetune": FineTuneConfig()}
            ),
            StrategyEntry(
                ReplayConfig.kind,
                ReplayConfig,
                Replay,
                {
                    "replay": ReplayConfig(),
                    "replay-balanced": ReplayConfig(buffer=BufferKind.CLICK_BALANCED),
                },
            ),
            StrategyEntry(
                EWCConfig.kind,
                EWCConfig,
                EWC,
                {"ewc": EWCConfig(), "ewc-separate": EWCConfig(mode=EWCMode.SEPARATE)},
            ),
            StrategyEntry(LwFConfig.kind, LwFConfig, LwF, {"lwf": LwFConfig()}),
            StrategyEntry(
                ExemplarReplayConfig.kind,
                ExemplarReplayConfig,
                ExemplarReplay,
                {"exemplar-replay": ExemplarReplayConfig()},
            ),
            StrategyEntry(CombinedConfig.kind, CombinedConfig, Combined),
        )
    )


_DEFAULT = library_registry()


def default_registry() -> StrategyRegistry:
    """The registry :func:`build_strategy`, :func:`parse_strategy` and ``TrainConfig`` use."""
    return _DEFAULT


def register(entry: StrategyEntry, registry: StrategyRegistry | None = None) -> None:
    """Add ``entry`` to ``registry`` (default: :func:`default_registry`); again is a no-op."""
    (registry or _DEFAULT).add(entry)


def build_strategy(
    config: StrategyConfig, rank: int = 0, *, registry: StrategyRegistry | None = None
) -> Strategy:
    """The strategy a config describes. ``rank`` derives a distinct random stream per worker.

    >>> build_strategy(parse_strategy("replay+lwf")).kind
    <StrategyKind.COMBINED: 'combined'>
    """
    return (registry or _DEFAULT).build(config, rank)


def parse_strategy(text: str, *, registry: StrategyRegistry | None = None) -> StrategyConfig:
    """A default config from a short name: ``finetune``, ``replay``, ``replay-balanced``,
    ``ewc``, ``ewc-separate``, ``lwf``, ``exemplar-replay`` (and whatever else is registered),
    or parts joined with ``+`` (``replay+lwf``).

    >>> parse_strategy("replay+lwf") == CombinedConfig((ReplayConfig(), LwFConfig()))
    True
    >>> parse_strategy("sgd")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown strategy 'sgd'; choose from finetune, replay, ...
    """
    return (registry or _DEFAULT).parse(text)
