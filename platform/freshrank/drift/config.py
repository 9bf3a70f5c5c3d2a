"""What the drift sketches look like and when they alarm: `SketchConfig` (the layout, fixed before
the first window and stored with every reference), `DriftThresholds`, the `Statistic` and
`DriftSource` modes, and the names of the sketched features.

>>> SketchConfig().pair_names
('user_category',)
>>> DriftThresholds(js=2.0)
Traceback (most recent call last):
...
ValueError: DriftThresholds.js is in bits and must be <= 1, got 2.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

import numpy as np

from freshrank.drift.sketches import State

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
    "DriftSource",
    "DriftThresholds",
    "SketchConfig",
    "Statistic",
]
