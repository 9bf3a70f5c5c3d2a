"""`WindowSketch`: one window of encoded rows as exactly mergeable sketches.

What it holds (``features.encode`` keys): histograms of ``log1p(price)``, model scores and
labels (CTR), hashed count tables of the categorical features, Bloom filters of the ids it saw,
counters of ids the reference had never seen and the summed surprise of each row's conditional
pair (e.g. its category given its user). Trainer workers (or replicas) sketch their part of a
window; the parts merge into the sketch of the whole window, exactly.

>>> import numpy as np
>>> from freshrank.events.simulator import Simulator, SimulatorConfig
>>> from freshrank.features.encode import FeatureConfig, encode
>>> rows = encode(Simulator(SimulatorConfig(seed=1)).generate(10), FeatureConfig())
>>> doubled = {k: np.concatenate([v, v]) for k, v in rows.items()}
>>> a, b = WindowSketch.from_rows(rows), WindowSketch.from_rows(rows)
>>> a.merge(b) == WindowSketch.from_rows(doubled), a.merge(b).rows
(True, 200)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from freshrank.drift.config import LABEL, PRICE, SCORE, SketchConfig
from freshrank.drift.sketches import (
    BloomFilter,
    ConditionalCounts,
    HashedCounts,
    NumericHistogram,
    State,
)

if TYPE_CHECKING:
    from freshrank.drift.profile import ReferenceProfile

_NLL_SCALE = 1_000_000  # surprise sums are kept in micro-nats, as int64, so merging is exact


class WindowSketch:
    """Sketch of one window of encoded rows (or a part of it); parts merge exactly.

    Use `from_rows` (or `DriftMonitor.sketch`); ``rows`` are `features.encode` outputs.
    """

    def __init__(self, config: SketchConfig | None = None, track_ids: bool = True) -> None:
        self.config = config if config is not None else SketchConfig()
        self.track_ids = bool(track_ids)
        c = self.config
        self.rows = 0
        self.numeric: dict[str, NumericHistogram] = {
            PRICE: NumericHistogram(c.price_edges),
            SCORE: NumericHistogram(c.score_edges),
            LABEL: NumericHistogram((0.5,)),
        }
        self.categorical: dict[str, HashedCounts] = {
            f: HashedCounts(c.categorical_width, f) for f in c.categorical_features
        }
        self.ids: dict[str, BloomFilter] = (
            {f: BloomFilter(c.bloom_bits, c.bloom_hashes, f) for f in c.unseen_features}
            if track_ids
            else {}
        )
        self.unseen: dict[str, np.ndarray] = {
            f: np.zeros(2, dtype=np.int64) for f in c.unseen_features
        }  # [ids not in the reference, ids checked]
        self.conditional: dict[str, ConditionalCounts] = (
            {name: _conditional(c, name) for name in c.pair_names} if track_ids else {}
        )
        self.surprise: dict[str, np.ndarray] = {
            name: np.zeros(2, dtype=np.int64) for name in c.pair_names
        }  # [sum of -log p(value | key) in micro-nats, rows judged]

    @classmethod
    def from_rows(
        cls,
        rows: Mapping[str, np.ndarray],
        config: SketchConfig | None = None,
        *,
        scores: np.ndarray | None = None,
        labelled: bool = True,
        reference: ReferenceProfile | None = None,
        track_ids: bool = True,
    ) -> WindowSketch:
        """Sketch ``rows`` (see `update`)."""
        if config is None and reference is not None:
            config = reference.config
        out = cls(config, track_ids=track_ids)
        out.update(rows, scores=scores, labelled=labelled, reference=reference)
        return out

    def update(
        self,
        rows: Mapping[str, np.ndarray],
        *,
        scores: np.ndarray | None = None,
        labelled: bool = True,
        reference: ReferenceProfile | None = None,
    ) -> None:
        """Add encoded ``rows``; nothing in ``rows`` or ``scores`` is modified.

        Args:
            rows: encoded inputs (at least ``dense`` and the sketched id keys; ``label`` when
                ``labelled``).
            scores: relevance logits of the rows (``model(inputs, use_position=False)``), or
                None to leave the score histogram alone.
            labelled: whether ``label`` holds real clicks (False for served requests).
            reference: count ids it has never seen (``unseen``) and add up how surprising
                each conditional pair is to it (``surprise``); None skips both.
        """
        n = _num_rows(rows)
        if scores is not None:
            scores = np.asarray(scores, dtype=np.float64).ravel()
            if scores.size != n:
                raise ValueError(f"got {scores.size} scores for {n} rows")
        if reference is not None and reference.config != self.config:
            raise ValueError("the reference was built with another SketchConfig")
        if n == 0:
            return
        self.rows += n
        dense = np.asarray(rows["dense"], dtype=np.float64)
        price = np.where(dense[:, 1] > 0.5, np.nan, dense[:, 0])
        self.numeric[PRICE].update(price)
        if scores is not None:
            self.numeric[SCORE].update(scores)
        if labelled:
            self.numeric[LABEL].update(np.asarray(rows["label"], dtype=np.float64))
        for f, table in self.categorical.items():
            table.update(_present_ids(rows, f))
        for f in self.config.unseen_features:
            ids = _present_ids(rows, f)
            if self.track_ids:
                self.ids[f].add(ids)
            if reference is not None and reference.windows_absorbed > 0 and ids.size:
                known = reference.seen[f].contains(ids)
                self.unseen[f] += np.array([int((~known).sum()), int(ids.size)], dtype=np.int64)
        for (k, v), name in zip(self.config.conditional_pairs, self.config.pair_names, strict=True):
            keys, values = np.asarray(rows[k]).ravel(), np.asarray(rows[v]).ravel()
            present = (keys != 0) & (values != 0)
            keys, values = keys[present], values[present]
            if self.track_ids:
                self.conditional[name].update(keys, values)
            if reference is not None and reference.windows_absorbed > 0 and keys.size:
                nll, _known = reference.conditional[name].log_likelihood(
                    keys, values, self.config.conditional_alpha, self.config.conditional_min_count
                )
                micro = int(np.rint(nll * _NLL_SCALE).astype(np.int64).sum())
                self.surprise[name] += np.array([micro, int(nll.size)], dtype=np.int64)

    def with_scores(self, scores: np.ndarray | NumericHistogram) -> WindowSketch:
        """A copy whose score histogram holds ``scores`` instead (e.g. the model's scores after
        training on the window): raw scores, or a histogram on ``config.score_edges``."""
        out = self.copy()
        if isinstance(scores, NumericHistogram):
            hist = scores.copy()
            if not np.array_equal(hist.edges, np.asarray(self.config.score_edges)):
                raise ValueError("the score histogram is not on the config's score edges")
        else:
            hist = NumericHistogram(self.config.score_edges)
            hist.update(scores)
        out.numeric[SCORE] = hist
        return out

    def without_ids(self) -> WindowSketch:
        """A copy without the id filters and conditional tables (what a reference ring keeps)."""
        out = self.copy()
        out.track_ids = False
        out.ids = {}
        out.conditional = {}
        return out

    @property
    def ctr(self) -> float | None:
        """Clicks per labelled row, or None without labelled rows."""
        counts = self.numeric[LABEL].counts
        n = int(counts[1:].sum())
        return float(counts[2:].sum()) / n if n else None

    def unseen_rate(self, feature: str) -> float | None:
        """Share of ``feature`` ids the reference had never seen, or None if none checked."""
        unseen, checked = (int(x) for x in self.unseen[feature])
        return unseen / checked if checked else None

    def mean_surprise(self, pair: str) -> float | None:
        """Mean ``-log p(value | key)`` (nats) of ``pair`` under the reference, or None."""
        micro, rows = (int(x) for x in self.surprise[pair])
        return micro / _NLL_SCALE / rows if rows else None

    def same_layout(self, other: object) -> bool:
        """Whether ``other`` can be merged with this sketch."""
        return (
            isinstance(other, WindowSketch)
            and other.config == self.config
            and other.track_ids == self.track_ids
        )

    def merge(self, other: WindowSketch) -> WindowSketch:
        """A new sketch of both windows' rows (same config and id tracking required)."""
        if not self.same_layout(other):
            raise ValueError("cannot merge window sketches with different configs or id tracking")
        out = WindowSketch(self.config, self.track_ids)
        out.rows = self.rows + other.rows
        out.numeric = {k: v.merge(other.numeric[k]) for k, v in self.numeric.items()}
        out.categorical = {k: v.merge(other.categorical[k]) for k, v in self.categorical.items()}
        out.ids = {k: v.merge(other.ids[k]) for k, v in self.ids.items()}
        out.unseen = {k: v + other.unseen[k] for k, v in self.unseen.items()}
        out.conditional = {k: v.merge(other.conditional[k]) for k, v in self.conditional.items()}
        out.surprise = {k: v + other.surprise[k] for k, v in self.surprise.items()}
        return out

    def copy(self) -> WindowSketch:
        """An independent copy."""
        return self.merge(WindowSketch(self.config, self.track_ids))

    @staticmethod
    def merge_all(parts: Sequence[WindowSketch]) -> WindowSketch:
        """Merge any number of parts (at least one), e.g. one per trainer worker."""
        if not parts:
            raise ValueError("merge_all needs at least one sketch")
        out = parts[0].copy()
        for part in parts[1:]:
            out = out.merge(part)
        return out

    def state_dict(self) -> State:
        """Flat arrays: layout, ``rows``, and one entry per histogram, table, filter, counter."""
        state = self.config.state_dict()
        state["rows"] = np.array([self.rows], dtype=np.int64)
        state["track_ids"] = np.array([int(self.track_ids)], dtype=np.int64)
        for name, hist in self.numeric.items():
            state[f"numeric/{name}"] = hist.counts.copy()
        for name, table in self.categorical.items():
            state[f"categorical/{name}"] = table.counts.copy()
        for name, bloom in self.ids.items():
            state[f"ids/{name}"] = bloom.words.copy()
        for name, counter in self.unseen.items():
            state[f"unseen/{name}"] = counter.copy()
        for name, table in self.conditional.items():
            for part, arr in table.state_dict().items():
                if part != "salt":
                    state[f"conditional/{name}/{part}"] = arr
        for name, counter in self.surprise.items():
            state[f"surprise/{name}"] = counter.copy()
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray]) -> WindowSketch:
        """Inverse of `state_dict`."""
        config = SketchConfig.from_state(state)
        out = cls(config, track_ids=bool(int(np.asarray(state["track_ids"])[0])))
        out.rows = int(np.asarray(state["rows"])[0])
        for name, hist in out.numeric.items():
            hist.counts = _counts(state, f"numeric/{name}", hist.counts.shape)
        for name, table in out.categorical.items():
            table.counts = _counts(state, f"categorical/{name}", table.counts.shape)
        for name, bloom in out.ids.items():
            bloom.words = np.asarray(state[f"ids/{name}"], dtype=np.uint8).copy()
            if bloom.words.size * 8 != bloom.bits:
                raise ValueError(
                    f"ids/{name} has {bloom.words.size} bytes, expected {bloom.bits // 8}"
                )
        for name in out.unseen:
            out.unseen[name] = _counts(state, f"unseen/{name}", (2,))
        for name, table in out.conditional.items():
            _load_conditional(table, state, f"conditional/{name}")
        for name in out.surprise:
            out.surprise[name] = _counts(state, f"surprise/{name}", (2,))
        return out

    def __eq__(self, other: object) -> bool:
        if not self.same_layout(other):
            return False
        assert isinstance(other, WindowSketch)
        return (
            self.rows == other.rows
            and self.numeric == other.numeric
            and self.categorical == other.categorical
            and self.ids == other.ids
            and self.conditional == other.conditional
            and all(np.array_equal(v, other.unseen[k]) for k, v in self.unseen.items())
            and all(np.array_equal(v, other.surprise[k]) for k, v in self.surprise.items())
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"WindowSketch(rows={self.rows}, track_ids={self.track_ids})"


def _num_rows(rows: Mapping[str, np.ndarray]) -> int:
    for key in ("label", "dense", "item"):
        if key in rows:
            return int(len(rows[key]))
    raise KeyError(f"encoded rows need a 'label', 'dense' or 'item' array; got {sorted(rows)}")


def _present_ids(rows: Mapping[str, np.ndarray], feature: str) -> np.ndarray:
    """Non-missing id buckets of ``feature`` (query: non-padding tokens), flattened."""
    if feature not in rows:
        raise KeyError(f"encoded rows lack {feature!r}; got {sorted(rows)}")
    ids = np.asarray(rows[feature]).ravel()
    return ids[ids != 0]


def _conditional(config: SketchConfig, name: str) -> ConditionalCounts:
    return ConditionalCounts(config.pair_width, config.key_width, config.value_width, name)


def _load_conditional(
    table: ConditionalCounts, state: Mapping[str, np.ndarray], prefix: str
) -> None:
    table.pairs = _counts(state, f"{prefix}/pairs", table.pairs.shape)
    table.keys = _counts(state, f"{prefix}/keys", table.keys.shape)
    table.values = _counts(state, f"{prefix}/values", table.values.shape)


def _counts(state: Mapping[str, np.ndarray], key: str, shape: tuple[int, ...]) -> np.ndarray:
    counts = np.asarray(state[key], dtype=np.int64)
    if counts.shape != tuple(shape):
        raise ValueError(f"{key} has shape {counts.shape}, expected {tuple(shape)}")
    return counts.copy()


def _stack(rows: Sequence[np.ndarray], width: int) -> np.ndarray:
    if not rows:
        return np.zeros((0, width), dtype=np.int64)
    return np.stack([np.asarray(r, dtype=np.int64) for r in rows])


__all__ = ["WindowSketch"]
