"""Feature, score and click-through drift of a window against the model's training reference.

The pieces, each exactly mergeable and stored as numpy arrays (see `freshrank.drift.sketches`):

* `WindowSketch`: one window of encoded rows (``features.encode`` keys), as
  histograms of ``log1p(price)``, model scores and labels (CTR), hashed count tables of the
  categorical features, Bloom filters of the ids it saw, and counters of ids the reference had
  never seen. Trainer workers (or replicas) sketch their part of a window; the parts merge
  into the sketch of the whole window, exactly.
* `ReferenceProfile`: what the model was trained on: the last ``reference_windows`` window
  sketches (a ring, so the reference follows the model after a shift) plus cumulative Bloom
  filters of every id seen in training, and (user, category) counts that slowly forget.
  ``state_dict()`` / ``from_state()`` give a flat ``dict[str, np.ndarray]``.
* `compare` judges a window against a reference: PSI for numeric features and the score,
  Jensen-Shannon (and L-infinity) on top-k + "other" for categorical ones, the unseen-id rate
  against the rate the reference itself had when its windows arrived, the relative CTR
  shift, and the mean surprise of each row's category given its user. `DriftMonitor` wraps it:
  it raises thresholds that a statistic's own noise would cross, judges small windows
  together, exports the values through a `Telemetry` facade, and its ``state_dict()`` (the
  reference plus the recent values) is what the trainer stores in each checkpoint as
  ``drift.npz`` (`freshrank.core.serialization.npz_bytes`, compressed).

>>> from freshrank.features.encode import FeatureConfig, encode
>>> from freshrank.events.simulator import Simulator, SimulatorConfig
>>> sim = Simulator(SimulatorConfig(seed=1, n_users=300))
>>> def window(reference):
...     rows = encode(sim.generate(200), FeatureConfig())
...     return WindowSketch.from_rows(rows, reference=reference)
>>> reference = ReferenceProfile()
>>> for _ in range(4):
...     reference = reference.absorb(window(reference))
>>> compare(reference, window(reference)).alarm
False
>>> sim.planted_shift()  # every user's interests move to other categories
>>> report = compare(reference, window(reference))
>>> [(e.feature, e.statistic.value) for e in report.alarms]
[('user_category', 'surprise')]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

import numpy as np

from freshrank.core.serialization import arrays_from_npz, npz_bytes
from freshrank.drift.sketches import (
    BloomFilter,
    ConditionalCounts,
    HashedCounts,
    NumericHistogram,
    State,
    js_divergence,
    linf_distance,
    psi,
    top_k_distributions,
)

if TYPE_CHECKING:
    import pyarrow as pa

    from freshrank.core.telemetry import Telemetry
    from freshrank.features.encode import FeatureConfig

FORMAT_VERSION = 1
"""Version of the state layout written by `ReferenceProfile.state_dict`."""

PRICE = "price"
"""Numeric feature: ``log1p(price)`` from ``dense[:, 0]`` (missing where ``dense[:, 1] == 1``)."""
SCORE = "score"
"""The model's relevance logit (serving's score, position bias left out)."""
LABEL = "label"
"""Clicks; its histogram gives the window's CTR."""
CTR = "ctr"
"""Name of the click-through-rate entry of a report."""

CATEGORICAL_FEATURES: tuple[str, ...] = ("category", "brand", "device", "query", "item")
"""Encoded keys judged as categorical distributions (``query``: its non-padding tokens)."""

UNSEEN_FEATURES: tuple[str, ...] = ("user", "item", "query")
"""Encoded id keys whose rate of never-trained-on values is tracked."""

CONDITIONAL_PAIRS: tuple[tuple[str, str], ...] = (("user", "category"),)
"""(key, value) pairs whose conditional ``p(value | key)`` is tracked: a user's interests."""

_NLL_SCALE = 1_000_000  # surprise sums are kept in micro-nats, as int64, so merging is exact

_ID_KEYS = ("user", "item", "category", "brand", "device", "query")


class Statistic(Enum):
    """What a `FeatureDrift` value measures."""

    PSI = "psi"
    JS = "js"
    LINF = "linf"
    UNSEEN_RATE = "unseen_rate"
    CTR_SHIFT = "ctr_shift"
    SURPRISE = "surprise"


class DriftSource(Enum):
    """Who judges drift: the trainer (landed events) or a serving replica (served requests)."""

    TRAINER = "trainer"
    SERVING = "serving"


def _edges(lo: float, hi: float, n: int) -> tuple[float, ...]:
    return tuple(float(x) for x in np.round(np.linspace(lo, hi, n + 1), 6))


@dataclass(frozen=True)
class SketchConfig:
    """Layout of the sketches: fixed before the first window, stored with every reference.

    Args:
        price_edges: bin edges of ``log1p(price)`` (0.25 wide from 0 to 10: prices to ~22,000).
        score_edges: bin edges of the relevance logit (0.25 wide from -10 to 10).
        categorical_width: cells of each hashed count table; keep it well above ``top_k``.
        bloom_bits: bits of each id Bloom filter (about 10 per distinct id keeps false
            positives near 1 %; 2**20 bits = 128 KiB covers 100k ids).
        bloom_hashes: probes per id.
        reference_windows: how many recent windows the reference keeps; after a shift the
            reference has caught up once this many windows were trained on.
        categorical_features: encoded keys sketched as categorical distributions.
        unseen_features: encoded id keys whose unseen rate is tracked.
        conditional_pairs: (key, value) encoded keys whose conditional distribution is tracked
            (default: the category a user's rows are in, i.e. the user's interests).
        pair_width, key_width, value_width: cells of the conditional count tables.
        conditional_alpha: smoothing of ``p(value | key)`` toward the value marginal.
        conditional_min_count: rows of history a key needs before its rows are judged.
        conditional_halve_every: the reference halves its conditional counts every this many
            windows (exponential forgetting, so it follows the users after a shift).
    """

    price_edges: tuple[float, ...] = _edges(0.0, 10.0, 40)
    score_edges: tuple[float, ...] = _edges(-10.0, 10.0, 80)
    categorical_width: int = 512
    bloom_bits: int = 1 << 20
    bloom_hashes: int = 4
    reference_windows: int = 4
    categorical_features: tuple[str, ...] = CATEGORICAL_FEATURES
    unseen_features: tuple[str, ...] = UNSEEN_FEATURES
    conditional_pairs: tuple[tuple[str, str], ...] = CONDITIONAL_PAIRS
    pair_width: int = 1 << 16
    key_width: int = 1 << 15
    value_width: int = 1 << 10
    conditional_alpha: float = 5.0
    conditional_min_count: int = 20
    conditional_halve_every: int = 8

    def __post_init__(self) -> None:
        for name in ("price_edges", "score_edges"):
            edges = tuple(float(e) for e in getattr(self, name))
            object.__setattr__(self, name, edges)
            if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
                raise ValueError(
                    f"SketchConfig.{name} must hold >= 2 strictly increasing edges, got {edges}"
                )
            if not all(math.isfinite(e) for e in edges):
                raise ValueError(f"SketchConfig.{name} must be finite, got {edges}")
        for name, low in (
            ("categorical_width", 2),
            ("bloom_bits", 64),
            ("bloom_hashes", 1),
            ("reference_windows", 1),
            ("pair_width", 2),
            ("key_width", 2),
            ("value_width", 2),
            ("conditional_min_count", 1),
            ("conditional_halve_every", 1),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"SketchConfig.{name} must be an int >= {low}, got {value!r}")
        if self.bloom_bits % 8:
            raise ValueError(
                f"SketchConfig.bloom_bits must be a multiple of 8, got {self.bloom_bits}"
            )
        if self.bloom_hashes > 16:
            raise ValueError(f"SketchConfig.bloom_hashes must be <= 16, got {self.bloom_hashes}")
        for name, allowed in (
            ("categorical_features", _ID_KEYS),
            ("unseen_features", _ID_KEYS),
        ):
            keys = tuple(getattr(self, name))
            object.__setattr__(self, name, keys)
            bad = [k for k in keys if k not in allowed]
            if bad or len(set(keys)) != len(keys):
                raise ValueError(
                    f"SketchConfig.{name} must be distinct encoded id keys from {allowed}, "
                    f"got {keys}"
                )
        pairs = tuple((str(k), str(v)) for k, v in self.conditional_pairs)
        object.__setattr__(self, "conditional_pairs", pairs)
        single = _ID_KEYS[:-1]  # every id key but the multi-token query
        if any(k not in single or v not in single or k == v for k, v in pairs) or len(
            set(pairs)
        ) != len(pairs):
            raise ValueError(
                "SketchConfig.conditional_pairs must be distinct (key, value) pairs of two "
                f"different id keys from {single}, got {pairs}"
            )
        alpha = self.conditional_alpha
        if not (isinstance(alpha, int | float) and math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"SketchConfig.conditional_alpha must be > 0, got {alpha!r}")
        object.__setattr__(self, "conditional_alpha", float(alpha))

    @property
    def pair_names(self) -> tuple[str, ...]:
        """Names of the conditional pairs, ``key_value`` (e.g. ``user_category``)."""
        return tuple(f"{k}_{v}" for k, v in self.conditional_pairs)

    def state_dict(self) -> State:
        """The layout as arrays (``layout/...``), stored next to the sketches."""
        return {
            "layout/format": np.array([FORMAT_VERSION], dtype=np.int64),
            "layout/price_edges": np.array(self.price_edges, dtype=np.float64),
            "layout/score_edges": np.array(self.score_edges, dtype=np.float64),
            "layout/ints": np.array(
                [
                    self.categorical_width,
                    self.bloom_bits,
                    self.bloom_hashes,
                    self.reference_windows,
                    self.pair_width,
                    self.key_width,
                    self.value_width,
                    self.conditional_min_count,
                    self.conditional_halve_every,
                ],
                dtype=np.int64,
            ),
            "layout/floats": np.array([self.conditional_alpha], dtype=np.float64),
            "layout/categorical": _text(",".join(self.categorical_features)),
            "layout/unseen": _text(",".join(self.unseen_features)),
            "layout/pairs": _text(",".join(f"{k}:{v}" for k, v in self.conditional_pairs)),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray]) -> SketchConfig:
        """Inverse of `state_dict`; refuses a layout from a newer format."""
        if "layout/format" not in state:
            raise KeyError("not a freshrank drift state: no 'layout/format' array")
        fmt = int(np.asarray(state["layout/format"])[0])
        if fmt != FORMAT_VERSION:
            raise ValueError(
                f"drift state format {fmt} is not supported (expected {FORMAT_VERSION})"
            )
        ints = [int(x) for x in np.asarray(state["layout/ints"])]
        width, bits, hashes, windows, pair_w, key_w, value_w, min_count, halve = ints
        return cls(
            price_edges=tuple(np.asarray(state["layout/price_edges"]).tolist()),
            score_edges=tuple(np.asarray(state["layout/score_edges"]).tolist()),
            categorical_width=width,
            bloom_bits=bits,
            bloom_hashes=hashes,
            reference_windows=windows,
            categorical_features=_split(_untext(state["layout/categorical"])),
            unseen_features=_split(_untext(state["layout/unseen"])),
            conditional_pairs=tuple(
                tuple(p.split(":", 1)) for p in _split(_untext(state["layout/pairs"]))
            ),
            pair_width=pair_w,
            key_width=key_w,
            value_width=value_w,
            conditional_alpha=float(np.asarray(state["layout/floats"])[0]),
            conditional_min_count=min_count,
            conditional_halve_every=halve,
        )


@dataclass(frozen=True)
class DriftThresholds:
    """When a statistic raises an alarm, and how much data it needs to be judged at all.

    Calibrated with ``bench/bench_drift.py`` (see bench/RESULTS.md). The Prometheus alert
    rules in ``cluster/prometheus/alerts.yml`` page on the alarms these produce.

    Args:
        psi: PSI of a numeric feature (``price``) above which it alarms.
        js: Jensen-Shannon divergence (bits) of a categorical feature above which it alarms.
        score_psi: PSI of the score distribution above which it alarms.
        ctr_shift: relative CTR change ``|ctr / ctr_ref - 1|`` above which it alarms.
        unseen_excess: how far the unseen-id rate may rise above the reference's own rate.
        surprise: how far (nats per row) the mean surprise of the conditional pairs (a value
            given its key, e.g. a category given the user) may rise above the reference's own.
        noise_z: every alarm threshold is raised to the statistic's typical value plus this
            many times its own noise, both estimated robustly (median, 1.4826 x median absolute
            deviation) from its values in the monitor's recent windows, so small or noisy
            windows (whose JS, PSI and surprise are inflated by sampling) do not page on noise;
            0 keeps the fixed thresholds.
        noise_windows: how many recent values of each statistic the monitor keeps.
        noise_min_windows: values needed before the noise estimate is used.
        top_k: categorical cells kept on each side before the rest is pooled as "other".
        min_rows: a window (or reference) with fewer rows is not judged; `DriftMonitor` keeps
            such a window and judges it together with the next ones once they reach this many
            rows (the statistics are too noisy below ~2,000 rows: see bench/RESULTS.md).
        warmup_windows: no alarm until the reference has absorbed this many windows (values
            are still reported): a reference of one or two windows estimates each user's
            interests from a handful of rows, and the live loop's third and fourth windows
            alarmed on that alone.
    """

    psi: float = 0.2
    js: float = 0.05
    score_psi: float = 0.2
    ctr_shift: float = 0.25
    unseen_excess: float = 0.05
    surprise: float = 0.4
    noise_z: float = 3.0
    noise_windows: int = 32
    noise_min_windows: int = 8
    top_k: int = 20
    min_rows: int = 2000
    warmup_windows: int = 4

    def __post_init__(self) -> None:
        for name in ("psi", "js", "score_psi", "ctr_shift", "unseen_excess", "surprise"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(
                    f"DriftThresholds.{name} must be a finite number > 0, got {value!r}"
                )
        if self.js > 1:
            raise ValueError(f"DriftThresholds.js is in bits and must be <= 1, got {self.js}")
        z = self.noise_z
        if not (isinstance(z, int | float) and math.isfinite(z) and z >= 0):
            raise ValueError(f"DriftThresholds.noise_z must be a finite number >= 0, got {z!r}")
        if not 2 <= self.noise_min_windows <= self.noise_windows:
            raise ValueError(
                "DriftThresholds needs 2 <= noise_min_windows <= noise_windows, got "
                f"{self.noise_min_windows} and {self.noise_windows}"
            )
        for name, low in (
            ("top_k", 1),
            ("min_rows", 1),
            ("noise_windows", 2),
            ("warmup_windows", 0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"DriftThresholds.{name} must be an int >= {low}, got {value!r}")


# ---------------------------------------------------------------------------------------------
# The window sketch


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

    @classmethod
    def from_table(
        cls,
        table: pa.Table,
        features: FeatureConfig,
        config: SketchConfig | None = None,
        **kwargs: Any,  # noqa: ANN401 - passed to from_rows
    ) -> WindowSketch:
        """Encode an event table with the one encoder, then sketch it."""
        from freshrank.features.encode import encode

        return cls.from_rows(encode(table, features), config, **kwargs)

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


# ---------------------------------------------------------------------------------------------
# The reference profile


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

    @classmethod
    def from_table(
        cls,
        table: pa.Table,
        features: FeatureConfig,
        config: SketchConfig | None = None,
        *,
        scores: np.ndarray | None = None,
    ) -> ReferenceProfile:
        """A reference of one window of training events (an event-schema Arrow table)."""
        from freshrank.features.encode import encode

        return cls.from_rows(encode(table, features), config, scores=scores)

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
        >>> ref.distribution().numeric[SCORE].total
        200
        >>> ref.with_model_scores(np.full(5, 2.0)).distribution().numeric[SCORE].total
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


# ---------------------------------------------------------------------------------------------
# Judging a window


@dataclass(frozen=True)
class FeatureDrift:
    """One statistic of one feature for one window.

    ``value`` is None when there was too little data to judge. For ``UNSEEN_RATE`` the
    threshold is the reference's own unseen rate plus the allowed excess; for ``CTR_SHIFT`` the
    value is signed and its magnitude is compared. ``alarm`` is False for non-alarming
    statistics (``LINF`` is reported beside ``JS`` and alarms never).
    """

    feature: str
    statistic: Statistic
    value: float | None
    threshold: float | None
    alarm: bool = False

    @property
    def severity(self) -> float:
        """``value / threshold`` (``|value|`` for the two-sided CTR shift): above 1 means over
        the threshold; 0 when not judged."""
        if self.value is None or not self.threshold:
            return 0.0
        value = abs(self.value) if self.statistic is Statistic.CTR_SHIFT else self.value
        return value / self.threshold

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "feature": self.feature,
            "statistic": self.statistic.value,
            "value": self.value,
            "threshold": self.threshold,
            "alarm": self.alarm,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureDrift:
        """Inverse of `to_dict`."""
        return cls(
            feature=str(data["feature"]),
            statistic=Statistic(data["statistic"]),
            value=None if data.get("value") is None else float(data["value"]),
            threshold=None if data.get("threshold") is None else float(data["threshold"]),
            alarm=bool(data.get("alarm", False)),
        )


@dataclass(frozen=True)
class DriftReport:
    """Drift of one window against a reference: one `FeatureDrift` per feature and statistic."""

    rows: int
    reference_rows: int
    entries: tuple[FeatureDrift, ...] = field(default=())

    @property
    def alarm(self) -> bool:
        """Whether any statistic is over its threshold."""
        return any(e.alarm for e in self.entries)

    @property
    def alarms(self) -> tuple[FeatureDrift, ...]:
        """The entries over their thresholds."""
        return tuple(e for e in self.entries if e.alarm)

    def get(self, feature: str, statistic: Statistic) -> FeatureDrift | None:
        """The entry for ``feature`` and ``statistic``, if the report has one."""
        for e in self.entries:
            if e.feature == feature and e.statistic is statistic:
                return e
        return None

    def value(self, feature: str, statistic: Statistic) -> float | None:
        """The value for ``feature`` and ``statistic`` (None if absent or not judged)."""
        entry = self.get(feature, statistic)
        return entry.value if entry is not None else None

    def leaders(self, n: int = 3) -> list[FeatureDrift]:
        """The ``n`` judged entries closest to (or furthest over) their thresholds."""
        judged = [e for e in self.entries if e.value is not None and e.threshold]
        judged.sort(key=lambda e: (-e.severity, e.feature, e.statistic.value))
        return judged[:n]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, for the manifest's ``drift`` section."""
        return {
            "rows": self.rows,
            "reference_rows": self.reference_rows,
            "alarm": self.alarm,
            "entries": [e.to_dict() for e in self.entries],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DriftReport:
        """Inverse of `to_dict`."""
        return cls(
            rows=int(data.get("rows", 0)),
            reference_rows=int(data.get("reference_rows", 0)),
            entries=tuple(FeatureDrift.from_dict(e) for e in data.get("entries", ())),
        )


Noise = Mapping[tuple[str, Statistic], tuple[float, float]]
"""Per (feature, statistic): its typical value and noise (robust centre and spread)."""


def compare(
    reference: ReferenceProfile,
    current: WindowSketch,
    thresholds: DriftThresholds | None = None,
    noise: Noise | None = None,
) -> DriftReport:
    """Judge ``current`` against ``reference``. Pure: neither argument is modified.

    Statistics without enough data on either side (``min_rows``) come back with value None
    and never alarm, so an empty window, or the first window before any reference, is judged
    as "nothing to say". With ``noise`` (what `DriftMonitor` keeps), each threshold becomes
    ``max(fixed threshold, centre + noise_z * spread)`` (magnitudes for the CTR shift).
    """
    t = thresholds if thresholds is not None else DriftThresholds()
    if current.config != reference.config:
        raise ValueError("the window and the reference were sketched with different configs")
    ref = reference.distribution()
    judged = current.rows >= t.min_rows and ref.rows >= t.min_rows
    warm = reference.windows_absorbed >= t.warmup_windows
    entries: list[FeatureDrift] = []

    def add(feature: str, stat: Statistic, value: float | None, threshold: float | None) -> None:
        if value is not None and not math.isfinite(value):
            value = None
        if not judged:
            value = None
        guard = (noise or {}).get((feature, stat))
        if guard is not None and threshold is not None and t.noise_z > 0:
            centre, spread = guard
            if stat is Statistic.CTR_SHIFT:
                centre = abs(centre)
            threshold = max(threshold, centre + t.noise_z * spread)
        magnitude = abs(value) if stat is Statistic.CTR_SHIFT and value is not None else value
        alarm = magnitude is not None and threshold is not None and magnitude > threshold
        alarm = alarm and warm
        if stat is Statistic.LINF:
            alarm = False
        entries.append(FeatureDrift(feature, stat, value, threshold, alarm))

    add(PRICE, Statistic.PSI, psi(ref.numeric[PRICE].counts, current.numeric[PRICE].counts), t.psi)
    score_ref, score_cur = ref.numeric[SCORE].counts, current.numeric[SCORE].counts
    add(SCORE, Statistic.PSI, psi(score_ref, score_cur), t.score_psi)
    ctr_ref, ctr_cur = ref.ctr, current.ctr
    shift = (ctr_cur / ctr_ref - 1.0) if ctr_ref and ctr_cur is not None else None
    add(CTR, Statistic.CTR_SHIFT, shift, t.ctr_shift)
    for f in current.config.categorical_features:
        p, q = top_k_distributions(
            ref.categorical[f].counts, current.categorical[f].counts, t.top_k
        )
        add(f, Statistic.JS, js_divergence(p, q), t.js)
        add(f, Statistic.LINF, linf_distance(p, q), None)
    for f in current.config.unseen_features:
        threshold = (
            reference.unseen_baseline(f) + t.unseen_excess
            if reference.has_unseen_baseline(f)
            else None  # no baseline yet: report the rate, raise no alarm
        )
        add(f, Statistic.UNSEEN_RATE, current.unseen_rate(f), threshold)
    for name in current.config.pair_names:
        baseline = reference.surprise_baseline(name)
        now = current.mean_surprise(name)
        excess = now - baseline if now is not None and baseline is not None else None
        add(name, Statistic.SURPRISE, excess, t.surprise)
    return DriftReport(rows=current.rows, reference_rows=ref.rows, entries=tuple(entries))


# ---------------------------------------------------------------------------------------------
# The monitor: sketch, judge, export


class DriftMonitor:
    """Sketch windows against a reference, judge them, and export the statistics.

    The trainer keeps one (source ``TRAINER``): per window it sketches (each worker its part),
    ``check``s the merged sketch before training on it and ``absorb``s it afterwards; the
    reference goes into the checkpoint. A serving replica keeps one per loaded model (source
    ``SERVING``, reference from the model's checkpoint) and exports only the score drift of
    what it served: feature drift is judged by the trainer on the landed events.

    The monitor also remembers each statistic's values over its recent windows, to raise a
    threshold that the statistic's own noise would cross (`DriftThresholds.noise_z`); its
    `state_dict` (the reference plus that history) is what the trainer stores as ``drift.npz``.

    Exports (through ``metrics``, skipped for statistics not judged):
    ``freshrank_drift_psi{feature}``, ``freshrank_drift_js{feature}``,
    ``freshrank_drift_linf{feature}``, ``freshrank_drift_unseen_rate{feature}``,
    ``freshrank_drift_surprise{feature}``, ``freshrank_ctr_shift``,
    ``freshrank_score_psi{source}`` and ``freshrank_drift_alarm{feature,statistic}`` (1 when
    over the threshold, else 0; what the Prometheus alert pages on).
    """

    def __init__(
        self,
        reference: ReferenceProfile | None = None,
        metrics: Telemetry | None = None,
        thresholds: DriftThresholds | None = None,
        source: DriftSource = DriftSource.TRAINER,
    ) -> None:
        from freshrank.core.telemetry import NullTelemetry

        if not isinstance(source, DriftSource):
            raise TypeError(f"source must be a DriftSource, got {source!r}")
        self._reference = reference if reference is not None else ReferenceProfile()
        self._metrics = metrics if metrics is not None else NullTelemetry()
        self.thresholds = thresholds if thresholds is not None else DriftThresholds()
        self.source = source
        self.last_report: DriftReport | None = None
        self._history: dict[tuple[str, Statistic], np.ndarray] = {}
        self._pending: WindowSketch | None = None
        self._pending_reference: ReferenceProfile | None = None

    def state_dict(self) -> State:
        """The reference's arrays plus ``monitor/history/<feature>/<statistic>`` (float64)."""
        state = self._reference.state_dict()
        for (feature, stat), values in self._history.items():
            state[f"monitor/history/{feature}/{stat.value}"] = values.copy()
        return state

    @classmethod
    def from_state(
        cls,
        state: Mapping[str, np.ndarray],
        metrics: Telemetry | None = None,
        thresholds: DriftThresholds | None = None,
        source: DriftSource = DriftSource.TRAINER,
    ) -> DriftMonitor:
        """A monitor continuing from `state_dict` (e.g. the latest checkpoint's ``drift.npz``)."""
        monitor = cls(ReferenceProfile.from_state(state), metrics, thresholds, source)
        prefix = "monitor/history/"
        for key, values in state.items():
            if key.startswith(prefix):
                feature, _, stat = key[len(prefix) :].rpartition("/")
                history = np.asarray(values, dtype=np.float64).ravel()
                monitor._history[(feature, Statistic(stat))] = history.copy()
        return monitor

    def noise(self) -> dict[tuple[str, Statistic], tuple[float, float]]:
        """Centre and spread (median, 1.4826 x MAD) of each statistic's recent values."""
        out = {}
        for key, values in self._history.items():
            if len(values) >= self.thresholds.noise_min_windows:
                centre = float(np.median(values))
                out[key] = (centre, 1.4826 * float(np.median(np.abs(values - centre))))
        return out

    @property
    def reference(self) -> ReferenceProfile:
        """The current reference profile (checkpoint `state_dict`, which includes it)."""
        return self._reference

    @property
    def config(self) -> SketchConfig:
        """The sketch layout of the reference."""
        return self._reference.config

    def sketch(
        self,
        rows: Mapping[str, np.ndarray],
        scores: np.ndarray | None = None,
        labelled: bool | None = None,
    ) -> WindowSketch:
        """Sketch encoded ``rows`` against the reference (labelled unless serving)."""
        serving = self.source is DriftSource.SERVING
        return WindowSketch.from_rows(
            rows,
            self.config,
            scores=scores,
            labelled=(not serving) if labelled is None else labelled,
            reference=self._reference,
            track_ids=not serving,
        )

    def empty_sketch(self) -> WindowSketch:
        """An empty sketch to `WindowSketch.update` as requests arrive (serving)."""
        return WindowSketch(self.config, track_ids=self.source is DriftSource.TRAINER)

    @property
    def pending_rows(self) -> int:
        """Rows of windows kept for judging together with the next ones (see ``min_rows``)."""
        return self._pending.rows if self._pending is not None else 0

    def check(self, window: WindowSketch) -> DriftReport:
        """Judge ``window`` against the reference, export what was judged, and remember the
        values (they make the noise estimate of the following windows).

        A window smaller than ``thresholds.min_rows`` is kept and judged together with the
        next windows once they add up to that many rows; meanwhile the report says "not
        judged" (values None) and nothing is exported. An empty window changes nothing.
        """
        if window.rows == 0:
            return compare(self._reference, window, self.thresholds)
        if self._pending is None:
            # Judge the kept windows against the reference from before the first of them.
            self._pending, self._pending_reference = window, self._reference
        else:
            self._pending = self._pending.merge(window)
        reference = self._pending_reference or self._reference
        if self._pending.rows < self.thresholds.min_rows:
            return compare(reference, self._pending, self.thresholds)
        pending, self._pending, self._pending_reference = self._pending, None, None
        report = compare(reference, pending, self.thresholds, self.noise())
        self.last_report = report
        self._export(report)
        keep = self.thresholds.noise_windows
        for e in report.entries:
            if e.value is not None and e.threshold is not None:
                key = (e.feature, e.statistic)
                values = np.append(self._history.get(key, np.zeros(0)), e.value)
                self._history[key] = values[-keep:]
        return report

    def absorb(self, window: WindowSketch) -> None:
        """Make ``window`` part of the reference (after the model trained on it)."""
        self._reference = self._reference.absorb(window)

    def replace_reference(self, reference: ReferenceProfile) -> None:
        """Judge against another reference from now on (e.g. a newly loaded model's)."""
        self._reference = reference

    def score_histogram(self) -> NumericHistogram:
        """An empty histogram on the reference's score edges: cheap to `update` per request."""
        return NumericHistogram(self.config.score_edges)

    def check_scores(self, scores: NumericHistogram) -> FeatureDrift:
        """Judge a score histogram alone against the reference and export its PSI.

        The serving path: a replica updates a `score_histogram` with every response's scores
        (microseconds) and checks it now and then, instead of sketching whole requests.
        """
        t = self.thresholds
        reference = self._reference.distribution().numeric[SCORE]
        if not reference.same_layout(scores):
            raise ValueError("the score histogram is not on the reference's score edges")
        judged = scores.total >= t.min_rows and reference.total >= t.min_rows
        value = psi(reference.counts, scores.counts) if judged else None
        if value is not None and not math.isfinite(value):
            value = None
        threshold = t.score_psi
        guard = self.noise().get((SCORE, Statistic.PSI))
        if guard is not None and t.noise_z > 0:
            threshold = max(threshold, guard[0] + t.noise_z * guard[1])
        entry = FeatureDrift(
            SCORE, Statistic.PSI, value, threshold, value is not None and value > threshold
        )
        if value is not None:
            key = (SCORE, Statistic.PSI)
            values = np.append(self._history.get(key, np.zeros(0)), value)
            self._history[key] = values[-t.noise_windows :]
        self._export(
            DriftReport(rows=scores.total, reference_rows=reference.total, entries=(entry,))
        )
        return entry

    def _export(self, report: DriftReport) -> None:
        m = self._metrics
        serving = self.source is DriftSource.SERVING
        for e in report.entries:
            if e.value is None:
                continue
            if e.feature == SCORE and e.statistic is Statistic.PSI:
                m.set("freshrank_score_psi", e.value, tags={"source": self.source.value})
            elif serving:
                continue  # feature drift is the trainer's to judge
            elif e.statistic is Statistic.CTR_SHIFT:
                m.set(_METRIC_OF[e.statistic], e.value)
            else:
                m.set(_METRIC_OF[e.statistic], e.value, tags={"feature": e.feature})
            if not serving and e.threshold is not None and e.statistic is not Statistic.LINF:
                tags = {"feature": e.feature, "statistic": e.statistic.value}
                m.set("freshrank_drift_alarm", 1.0 if e.alarm else 0.0, tags=tags)


_METRIC_OF = {
    Statistic.PSI: "freshrank_drift_psi",
    Statistic.JS: "freshrank_drift_js",
    Statistic.LINF: "freshrank_drift_linf",
    Statistic.UNSEEN_RATE: "freshrank_drift_unseen_rate",
    Statistic.CTR_SHIFT: "freshrank_ctr_shift",
    Statistic.SURPRISE: "freshrank_drift_surprise",
}


# ---------------------------------------------------------------------------------------------
# Helpers


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


def _text(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()


def _untext(arr: np.ndarray) -> str:
    return np.asarray(arr, dtype=np.uint8).tobytes().decode("utf-8")


def _split(text: str) -> tuple[str, ...]:
    return tuple(p for p in text.split(",") if p)


__all__ = [
    "CATEGORICAL_FEATURES",
    "CONDITIONAL_PAIRS",
    "CTR",
    "FORMAT_VERSION",
    "LABEL",
    "PRICE",
    "SCORE",
    "UNSEEN_FEATURES",
    "DriftMonitor",
    "DriftReport",
    "DriftSource",
    "DriftThresholds",
    "FeatureDrift",
    "ReferenceProfile",
    "SketchConfig",
    "Statistic",
    "WindowSketch",
    "Noise",
    "compare",
    "profile_from_npz_bytes",
    "profile_npz_bytes",
]
