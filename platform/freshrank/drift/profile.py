"""`ReferenceProfile`: what a model was trained on, the side every window is judged against.

It keeps the last ``reference_windows`` window sketches (a ring, so the reference follows the
model after a shift), cumulative Bloom filters of every id seen in training, and (key, value)
counts, e.g. (user, category), that slowly forget. ``state_dict()`` / ``from_state()`` give a
flat ``dict[str, np.ndarray]``; `profile_npz_bytes` / `profile_from_npz_bytes` a compressed
``.npz`` (`freshrank.core.serialization`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from freshrank.core.serialization import arrays_from_npz, npz_bytes
from freshrank.drift.config import SketchConfig
from freshrank.drift.sketches import BloomFilter, ConditionalCounts, NumericHistogram, State
from freshrank.drift.window import (
    _NLL_SCALE,
    WindowSketch,
    _conditional,
    _counts,
    _load_conditional,
    _stack,
)


class ReferenceProfile:
    """What a model was trained on: its last windows' sketches and every id it has seen.

    Immutable in use: `absorb` and `merge` return new profiles.
    """

    def __init__(self, config: SketchConfig | None = None) -> None:
        self.config = config if config is not None else SketchConfig()
        self.windows: tuple[WindowSketch, ...] = ()
        self.seen: dict[str, BloomFilter] = {
            f: BloomFilter(self.config.bloom_bits, self.config.bloom_hashes, f)
            for f in self.config.unseen_features
        }
        self.conditional: dict[str, ConditionalCounts] = {
            name: _conditional(self.config, name) for name in self.config.pair_names
        }
        self.windows_absorbed = 0

    @classmethod
    def from_rows(
        cls,
        rows: Mapping[str, np.ndarray],
        config: SketchConfig | None = None,
        *,
        scores: np.ndarray | None = None,
        labelled: bool = True,
    ) -> ReferenceProfile:
        """A reference of one window of encoded training rows."""
        profile = cls(config)
        window = WindowSketch.from_rows(rows, profile.config, scores=scores, labelled=labelled)
        return profile.absorb(window)

    @property
    def rows(self) -> int:
        """Rows in the windows the reference keeps."""
        return sum(w.rows for w in self.windows)

    def absorb(self, window: WindowSketch) -> ReferenceProfile:
        """A new profile that has also trained on ``window`` (the oldest window drops out of the
        ring once it holds ``reference_windows``). An empty window changes nothing."""
        if window.config != self.config:
            raise ValueError("the window was sketched with another SketchConfig")
        if window.rows == 0:
            return self
        out = ReferenceProfile(self.config)
        out.windows = (*self.windows, window.without_ids())[-self.config.reference_windows :]
        out.seen = {
            f: (bloom.merge(window.ids[f]) if window.track_ids else bloom.copy())
            for f, bloom in self.seen.items()
        }
        out.windows_absorbed = self.windows_absorbed + 1
        halve = out.windows_absorbed % self.config.conditional_halve_every == 0
        out.conditional = {}
        for name, table in self.conditional.items():
            merged = table.merge(window.conditional[name]) if window.track_ids else table.copy()
            out.conditional[name] = merged.halve() if halve else merged
        return out

    def distribution(self) -> WindowSketch:
        """The reference's distributions: the kept windows merged into one sketch."""
        out = WindowSketch(self.config, track_ids=False)
        for window in self.windows:
            out = out.merge(window)
        return out

    def unseen_baseline(self, feature: str) -> float:
        """The unseen rate the reference's own windows had when they arrived (0 if unknown)."""
        unseen = sum(int(w.unseen[feature][0]) for w in self.windows)
        checked = sum(int(w.unseen[feature][1]) for w in self.windows)
        return unseen / checked if checked else 0.0

    def has_unseen_baseline(self, feature: str) -> bool:
        """Whether any kept window was checked for unseen ``feature`` ids when it arrived."""
        return any(int(w.unseen[feature][1]) > 0 for w in self.windows)

    def surprise_baseline(self, pair: str) -> float | None:
        """Mean surprise of ``pair`` the kept windows had when they arrived (None if unknown)."""
        micro = sum(int(w.surprise[pair][0]) for w in self.windows)
        rows = sum(int(w.surprise[pair][1]) for w in self.windows)
        return micro / _NLL_SCALE / rows if rows else None

    def with_model_scores(self, scores: np.ndarray | NumericHistogram) -> ReferenceProfile:
        """A copy whose score distribution is ``scores`` alone: the newest window carries them
        and the older windows none (their scores came from older models).

        The trainer calls this after each window with the new model's scores on the rows it
        has just trained on. Score drift then compares one model's scores on two sets of rows
        (what it trained on, what it sees now), not two models' scores: a model that is still
        learning moves its own score distribution, and that is not drift of the world.

        >>> from freshrank.events.simulator import Simulator, SimulatorConfig
        >>> from freshrank.features.encode import FeatureConfig, encode
        >>> rows = encode(Simulator(SimulatorConfig(seed=1)).generate(10), FeatureConfig())
        >>> ref = ReferenceProfile()
        >>> for _ in range(2):
        ...     ref = ref.absorb(WindowSketch.from_rows(rows, scores=np.zeros(100)))
        >>> ref.distribution().numeric["score"].total
        200
        >>> ref.with_model_scores(np.full(5, 2.0)).distribution().numeric["score"].total
        5
        """
        if not self.windows:
            return self
        empty = NumericHistogram(self.config.score_edges)
        out = ReferenceProfile(self.config)
        out.windows = (
            *(w.with_scores(empty) for w in self.windows[:-1]),
            self.windows[-1].with_scores(scores),
        )
        out.seen = self.seen
        out.conditional = self.conditional
        out.windows_absorbed = self.windows_absorbed
        return out

    def merge(self, other: ReferenceProfile) -> ReferenceProfile:
        """Merge two profiles built over parts of the same windows (window by window)."""
        if other.config != self.config:
            raise ValueError("cannot merge reference profiles with different configs")
        if (
            len(other.windows) != len(self.windows)
            or other.windows_absorbed != self.windows_absorbed
        ):
            raise ValueError(
                "reference profiles must cover the same windows to merge "
                f"({len(self.windows)}/{self.windows_absorbed} vs "
                f"{len(other.windows)}/{other.windows_absorbed} kept/absorbed)"
            )
        out = ReferenceProfile(self.config)
        out.windows = tuple(a.merge(b) for a, b in zip(self.windows, other.windows, strict=True))
        out.seen = {f: b.merge(other.seen[f]) for f, b in self.seen.items()}
        out.conditional = {k: v.merge(other.conditional[k]) for k, v in self.conditional.items()}
        out.windows_absorbed = self.windows_absorbed
        return out

    def state_dict(self) -> State:
        """Flat arrays for ``drift.npz``: layout, the ring stacked per sketch, the id filters."""
        state = self.config.state_dict()
        state["windows_absorbed"] = np.array([self.windows_absorbed], dtype=np.int64)
        state["ring/rows"] = np.array([w.rows for w in self.windows], dtype=np.int64)
        template = WindowSketch(self.config, track_ids=False)
        for name, hist in template.numeric.items():
            state[f"ring/numeric/{name}"] = _stack(
                [w.numeric[name].counts for w in self.windows], hist.counts.size
            )
        for name, table in template.categorical.items():
            state[f"ring/categorical/{name}"] = _stack(
                [w.categorical[name].counts for w in self.windows], table.width
            )
        for name in template.unseen:
            state[f"ring/unseen/{name}"] = _stack([w.unseen[name] for w in self.windows], 2)
        for name in template.surprise:
            state[f"ring/surprise/{name}"] = _stack([w.surprise[name] for w in self.windows], 2)
        for name, bloom in self.seen.items():
            state[f"seen/{name}"] = bloom.words.copy()
        for name, table in self.conditional.items():
            for part, arr in table.state_dict().items():
                if part != "salt":
                    state[f"conditional/{name}/{part}"] = arr
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray]) -> ReferenceProfile:
        """Inverse of `state_dict` (e.g. ``registry.load_npz(info, "drift.npz")``)."""
        out = cls(SketchConfig.from_state(state))
        out.windows_absorbed = int(np.asarray(state["windows_absorbed"])[0])
        rows = np.asarray(state["ring/rows"], dtype=np.int64)
        windows = []
        for i, n in enumerate(rows.tolist()):
            w = WindowSketch(out.config, track_ids=False)
            w.rows = int(n)
            for name, hist in w.numeric.items():
                hist.counts = np.asarray(state[f"ring/numeric/{name}"][i], dtype=np.int64).copy()
            for name, table in w.categorical.items():
                table.counts = np.asarray(
                    state[f"ring/categorical/{name}"][i], dtype=np.int64
                ).copy()
            for name in w.unseen:
                w.unseen[name] = np.asarray(state[f"ring/unseen/{name}"][i], dtype=np.int64).copy()
            for name in w.surprise:
                w.surprise[name] = _counts(state, f"ring/surprise/{name}", (len(rows), 2))[i]
            windows.append(w)
        out.windows = tuple(windows)
        for name, bloom in out.seen.items():
            bloom.words = np.asarray(state[f"seen/{name}"], dtype=np.uint8).copy()
            if bloom.words.size * 8 != bloom.bits:
                raise ValueError(f"seen/{name} has {bloom.words.size} bytes, not {bloom.bits // 8}")
        for name, table in out.conditional.items():
            _load_conditional(table, state, f"conditional/{name}")
        return out

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ReferenceProfile)
            and other.config == self.config
            and other.windows_absorbed == self.windows_absorbed
            and other.windows == self.windows
            and other.seen == self.seen
            and other.conditional == self.conditional
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"ReferenceProfile(windows={len(self.windows)}, absorbed={self.windows_absorbed}, "
            f"rows={self.rows})"
        )


def profile_npz_bytes(profile: ReferenceProfile) -> bytes:
    """``profile.state_dict()`` as a compressed ``.npz``."""
    return npz_bytes(profile.state_dict(), compressed=True)


def profile_from_npz_bytes(data: bytes) -> ReferenceProfile:
    """The reference of a ``drift.npz`` (monitor history, if any, is ignored)."""
    return ReferenceProfile.from_state(arrays_from_npz(data))


__all__ = ["ReferenceProfile", "profile_from_npz_bytes", "profile_npz_bytes"]
