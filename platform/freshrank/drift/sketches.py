"""Compact, exactly mergeable sketches of a window of rows, stored as numpy arrays.

Four kinds, each a small class whose whole state is a ``dict[str, np.ndarray]`` (saved with
``np.savez``, loaded with ``allow_pickle=False``; no pickle anywhere):

* `NumericHistogram`: counts on fixed bin edges, plus a cell for missing values (NaN).
  Merging adds counts.
* `HashedCounts`: a count table of ``width`` cells indexed by a stable 64-bit hash of each key
  (`freshrank.features.hashing.stable_hash64`, salted per feature). The top-k cells plus
  "other" are picked when two tables are compared (`top_k_distributions`), not when counting,
  so merging stays an exact addition (a Misra-Gries / space-saving summary would not).
* `BloomFilter`: membership of ids (ids seen in training), ``bits`` bits and ``hashes`` probes
  by double hashing of the same stable hash. Merging is a bitwise OR. No false negatives;
  false positives at rate ``fill ** hashes`` make an unseen-id rate err on the low side.
* `ConditionalCounts`: hashed counts of (key, value) pairs, keys and values, e.g. (user,
  category), from which ``p(value | key)`` is read: how surprising a row is for its user.
  Merging adds counts.

Merging never mutates: ``a.merge(b)`` returns a new sketch and refuses sketches with another
layout (edges, width, salt, bits). Since every update only adds integers (or ORs bits), the
merge of sketches of parts equals the sketch of the whole, exactly.

>>> h = NumericHistogram((0.0, 1.0, 2.0))
>>> h.update([0.5, 1.5, 1.7, float("nan"), 9.0])
>>> h.counts.tolist()  # [missing, <0, [0,1), [1,2), >=2]
[1, 0, 1, 2, 1]
>>> b = BloomFilter(bits=1024, hashes=3, salt="item")
>>> b.add([7, 8])
>>> b.contains([7, 8, 9]).tolist()
[True, True, False]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from freshrank.features.hashing import stable_hash64

State = dict[str, np.ndarray]
"""The whole state of a sketch: named numpy arrays (no object arrays)."""

_MASK32 = np.uint64(0xFFFFFFFF)


def stable_key_hashes(keys: Iterable[Any] | np.ndarray, salt: str) -> np.ndarray:
    """Stable 64-bit hashes (uint64) of ``keys``, the same in every process and machine.

    Integer keys (encoded id buckets) are hashed through their decimal text, strings as they
    are; each distinct key is hashed once. ``None`` is not a key: filter it out first.

    >>> a = stable_key_hashes(np.array([3, 5, 3]), "item")
    >>> a.dtype, bool(a[0] == a[2]), bool(a[0] == a[1])
    (dtype('uint64'), True, False)
    >>> int(stable_key_hashes(["abc"], "")[0]) == stable_hash64("abc")
    True
    """
    arr = np.asarray(keys if isinstance(keys, np.ndarray) else list(keys))
    if arr.size == 0:
        return np.zeros(0, dtype=np.uint64)
    arr = arr.ravel()
    if arr.dtype.kind in "iub":
        arr = arr.astype(np.int64, copy=False)
        text = str
    elif arr.dtype.kind in "UO":
        text = _as_text
    else:
        raise TypeError(f"keys must be integers or strings, got dtype {arr.dtype}")
    uniques, inverse = np.unique(arr, return_inverse=True)
    table = np.fromiter(
        (stable_hash64(text(u), salt) for u in uniques.tolist()),
        dtype=np.uint64,
        count=len(uniques),
    )
    return table[inverse.ravel()]


def _as_text(value: Any) -> str:  # noqa: ANN401 - a numpy scalar or str
    if value is None:
        raise TypeError("None is not a key; drop missing ids before sketching them")
    return str(value)


def _check_state(state: Mapping[str, np.ndarray], keys: Sequence[str], what: str) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise KeyError(f"{what} state lacks {missing}; has {sorted(state)}")


class NumericHistogram:
    """Counts of values on fixed, strictly increasing bin edges.

    Cells (``len(edges) + 2``): ``[missing, (-inf, e0), [e0, e1), ..., [e_last, inf)]``.
    NaN is counted as missing; infinities land in the outer cells.

    Args:
        edges: strictly increasing finite bin edges (at least one).
    """

    def __init__(self, edges: Sequence[float] | np.ndarray) -> None:
        edges_arr = np.array(edges, dtype=np.float64).ravel()
        if edges_arr.size < 1:
            raise ValueError("NumericHistogram needs at least one bin edge, e.g. (0.0, 1.0)")
        if not np.all(np.isfinite(edges_arr)):
            raise ValueError(f"bin edges must be finite, got {edges_arr.tolist()}")
        if np.any(np.diff(edges_arr) <= 0):
            raise ValueError(f"bin edges must be strictly increasing, got {edges_arr.tolist()}")
        self._edges = edges_arr
        self._edges.setflags(write=False)
        self.counts = np.zeros(edges_arr.size + 2, dtype=np.int64)

    @property
    def edges(self) -> np.ndarray:
        """The bin edges (read-only)."""
        return self._edges

    @property
    def total(self) -> int:
        """Number of values counted, missing ones included."""
        return int(self.counts.sum())

    def update(self, values: Iterable[float] | np.ndarray) -> None:
        """Count ``values`` (any shape; flattened). The input is not modified."""
        v = np.asarray(values, dtype=np.float64).ravel()
        if v.size == 0:
            return
        missing = np.isnan(v)
        self.counts[0] += int(missing.sum())
        cells = np.searchsorted(self._edges, v[~missing], side="right") + 1
        self.counts += np.bincount(cells, minlength=self.counts.size).astype(np.int64)

    def same_layout(self, other: object) -> bool:
        """Whether ``other`` is a histogram on the same edges (so the two can be merged)."""
        return isinstance(other, NumericHistogram) and np.array_equal(self._edges, other._edges)

    def merge(self, other: NumericHistogram) -> NumericHistogram:
        """A new histogram with the counts of both (same edges required)."""
        if not self.same_layout(other):
            raise ValueError("cannot merge histograms with different bin edges")
        out = NumericHistogram(self._edges)
        out.counts = self.counts + other.counts
        return out

    def copy(self) -> NumericHistogram:
        """An independent copy."""
        return self.merge(NumericHistogram(self._edges))

    def state_dict(self) -> State:
        """``{"edges": float64, "counts": int64}``."""
        return {"edges": self._edges.copy(), "counts": self.counts.copy()}

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray]) -> NumericHistogram:
        """Inverse of `state_dict`."""
        _check_state(state, ("edges", "counts"), "NumericHistogram")
        out = cls(state["edges"])
        counts = np.asarray(state["counts"], dtype=np.int64)
        if counts.shape != out.counts.shape:
            raise ValueError(f"counts shape {counts.shape} does not fit {out.counts.shape}")
        out.counts = counts.copy()
        return out

    def __eq__(self, other: object) -> bool:
        return self.same_layout(other) and np.array_equal(self.counts, other.counts)  # type: ignore[union-attr]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"NumericHistogram(bins={self._edges.size + 1}, total={self.total})"


class HashedCounts:
    """Counts of categorical keys in a table of ``width`` cells, by stable hash.

    Keys are integers (encoded buckets) or strings. Two keys share a cell only when their
    salted 64-bit hashes agree modulo ``width``; with ``width`` well above the number of keys
    that matter (the top-k), the top cells are single keys.

    Args:
        width: number of cells (>= 2).
        salt: per-feature salt of the hash, so features do not share collisions.
    """

    def __init__(self, width: int, salt: str) -> None:
        if isinstance(width, bool) or not isinstance(width, int | np.integer) or width < 2:
            raise ValueError(f"HashedCounts width must be an int >= 2, got {width!r}")
        self.width = int(width)
        self.salt = str(salt)
        self.counts = np.zeros(self.width, dtype=np.int64)

    @property
    def total(self) -> int:
        """Number of keys counted."""
        return int(self.counts.sum())

    def cells(self, keys: Iterable[Any] | np.ndarray) -> np.ndarray:
        """The cell of each key (int64)."""
        hashes = stable_key_hashes(keys, self.salt)
        return (hashes % np.uint64(self.width)).astype(np.int64)

    def update(self, keys: Iterable[Any] | np.ndarray) -> None:
        """Count ``keys`` (flattened). The input is not modified."""
        cells = self.cells(keys)
        if cells.size:
            self.counts += np.bincount(cells, minlength=self.width).astype(np.int64)

    def same_layout(self, other: object) -> bool:
        """Whether ``other`` has the same width and salt (so the two can be merged)."""
        return (
            isinstance(other, HashedCounts)
            and other.width == self.width
            and other.salt == self.salt
        )

    def merge(self, other: HashedCounts) -> HashedCounts:
        """A new table with the counts of both (same width and salt required)."""
        if not self.same_layout(other):
            raise ValueError("cannot merge count tables with different width or salt")
        out = HashedCounts(self.width, self.salt)
        out.counts = self.counts + other.counts
        return out

    def copy(self) -> HashedCounts:
        """An independent copy."""
        return self.merge(HashedCounts(self.width, self.salt))

    def state_dict(self) -> State:
        """``{"counts": int64[width], "salt": uint8 (utf-8 bytes)}``."""
        return {"counts": self.counts.copy(), "salt": _text_array(self.salt)}

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray]) -> HashedCounts:
        """Inverse of `state_dict`."""
        _check_state(state, ("counts", "salt"), "HashedCounts")
        counts = np.asarray(state["counts"], dtype=np.int64)
        out = cls(int(counts.size), _array_text(state["salt"]))
        out.counts = counts.copy()
        return out

    def __eq__(self, other: object) -> bool:
        return self.same_layout(other) and np.array_equal(self.counts, other.counts)  # type: ignore[union-attr]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"HashedCounts(width={self.width}, salt={self.salt!r}, total={self.total})"


class BloomFilter:
    """A Bloom filter over stable 64-bit hashes of keys; merging is a bitwise OR.

    Probe ``i`` of a key with hash ``h`` is bit ``(h_lo + i * h_hi) mod bits`` (double
    hashing; ``h_lo``/``h_hi`` are the low and high 32 bits, ``h_hi`` forced odd).
    About 10 bits per distinct key with 4 probes keeps false positives near 1 %.

    Args:
        bits: size in bits, a multiple of 8 and >= 64.
        hashes: probes per key, 1 to 16.
        salt: per-feature salt of the hash.
    """

    def __init__(self, bits: int, hashes: int, salt: str) -> None:
        if isinstance(bits, bool) or not isinstance(bits, int | np.integer):
            raise ValueError(f"BloomFilter bits must be an int, got {bits!r}")
        if bits < 64 or bits % 8:
            raise ValueError(f"BloomFilter bits must be a multiple of 8 and >= 64, got {bits}")
        if isinstance(hashes, bool) or not isinstance(hashes, int | np.integer):
            raise ValueError(f"BloomFilter hashes must be an int, got {hashes!r}")
        if not 1 <= hashes <= 16:
            raise ValueError(f"BloomFilter hashes must be in [1, 16], got {hashes}")
        self.bits = int(bits)
        self.hashes = int(hashes)
        self.salt = str(salt)
        self.words = np.zeros(self.bits // 8, dtype=np.uint8)

    def _positions(self, keys: Iterable[Any] | np.ndarray) -> np.ndarray:
        h = stable_key_hashes(keys, self.salt)
        lo = h & _MASK32
        hi = (h >> np.uint64(32)) | np.uint64(1)
        probes = np.arange(self.hashes, dtype=np.uint64)
        return ((lo[:, None] + probes[None, :] * hi[:, None]) % np.uint64(self.bits)).astype(
            np.int64
        )  # (N, hashes)

    def add(self, keys: Iterable[Any] | np.ndarray) -> None:
        """Insert ``keys`` (flattened). The input is not modified."""
        pos = self._positions(keys).ravel()
        if pos.size:
            np.bitwise_or.at(self.words, pos >> 3, (1 << (pos & 7)).astype(np.uint8))

    def contains(self, keys: Iterable[Any] | np.ndarray) -> np.ndarray:
        """Boolean array: may each key have been inserted (False means certainly not)."""
        pos = self._positions(keys)
        if pos.size == 0:
            return np.zeros(pos.shape[0], dtype=bool)
        bit = (self.words[pos >> 3] >> (pos & 7).astype(np.uint8)) & 1
        return bit.astype(bool).all(axis=1)

    @property
    def fill(self) -> float:
        """Fraction of bits set."""
        return float(np.unpackbits(self.words).sum()) / self.bits

    def same_layout(self, other: object) -> bool:
        """Whether ``other`` has the same bits, probes and salt (so the two can be merged)."""
        return isinstance(other, BloomFilter) and (other.bits, other.hashes, other.salt) == (
            self.bits,
            self.hashes,
            self.salt,
        )

    def merge(self, other: BloomFilter) -> BloomFilter:
        """A new filter holding the keys of both (bitwise OR; same layout required)."""
        if not self.same_layout(other):
            raise ValueError("cannot merge Bloom filters with different bits, hashes or salt")
        out = BloomFilter(self.bits, self.hashes, self.salt)
        out.words = self.words | other.words
        return out

    def copy(self) -> BloomFilter:
        """An independent copy."""
        return self.merge(BloomFilter(self.bits, self.hashes, self.salt))

    def state_dict(self) -> State:
        """``{"words": uint8[bits/8], "hashes": int64[1], "salt": uint8}``."""
        return {
            "words": self.words.copy(),
            "hashes": np.array([self.hashes], dtype=np.int64),
            "salt": _text_array(self.salt),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray]) -> BloomFilter:
        """Inverse of `state_dict`."""
        _check_state(state, ("words", "hashes", "salt"), "BloomFilter")
        words = np.asarray(state["words"], dtype=np.uint8)
        out = cls(
            int(words.size) * 8, int(np.asarray(state["hashes"])[0]), _array_text(state["salt"])
        )
        out.words = words.copy()
        return out

    def __eq__(self, other: object) -> bool:
        return self.same_layout(other) and np.array_equal(self.words, other.words)  # type: ignore[union-attr]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"BloomFilter(bits={self.bits}, hashes={self.hashes}, fill={self.fill:.4f})"


class ConditionalCounts:
    """Counts of (key, value) pairs, e.g. (user, category), for ``p(value | key)``; merge adds.

    Three hashed count tables (stable hashes, salted): pairs, keys and values. The smoothed
    conditional ``(n(k, v) + alpha * p(v)) / (n(k) + alpha)`` (Dirichlet smoothing toward the
    value marginal) is what `log_likelihood` reads. Hash collisions only add counts, which
    blurs a key's distribution a little; keep ``pair_width`` above the pairs that matter.

    Args:
        pair_width: cells of the (key, value) table.
        key_width: cells of the key table.
        value_width: cells of the value table.
        salt: salt of the hashes (e.g. ``"user|category"``).
    """

    def __init__(self, pair_width: int, key_width: int, value_width: int, salt: str) -> None:
        for name, width in (
            ("pair_width", pair_width),
            ("key_width", key_width),
            ("value_width", value_width),
        ):
            if isinstance(width, bool) or not isinstance(width, int | np.integer) or width < 2:
                raise ValueError(f"ConditionalCounts {name} must be an int >= 2, got {width!r}")
        self.salt = str(salt)
        self.pairs = np.zeros(int(pair_width), dtype=np.int64)
        self.keys = np.zeros(int(key_width), dtype=np.int64)
        self.values = np.zeros(int(value_width), dtype=np.int64)

    @property
    def total(self) -> int:
        """Number of pairs counted."""
        return int(self.keys.sum())

    def _cells(
        self, keys: np.ndarray, values: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        k = np.asarray(keys).ravel()
        v = np.asarray(values).ravel()
        if k.shape != v.shape:
            raise ValueError(f"keys and values differ in length: {k.size} vs {v.size}")
        if k.dtype.kind not in "iu" or v.dtype.kind not in "iu":
            raise TypeError("ConditionalCounts takes integer keys and values (encoded buckets)")
        k = k.astype(np.int64, copy=False)
        v = v.astype(np.int64, copy=False)
        pair_keys = np.char.add(np.char.add(k.astype(str), "|"), v.astype(str))
        pair = stable_key_hashes(pair_keys, self.salt) % np.uint64(self.pairs.size)
        key = stable_key_hashes(k, self.salt + "|k") % np.uint64(self.keys.size)
        value = stable_key_hashes(v, self.salt + "|v") % np.uint64(self.values.size)
        return pair.astype(np.int64), key.astype(np.int64), value.astype(np.int64)

    def update(self, keys: np.ndarray, values: np.ndarray) -> None:
        """Count the pairs ``(keys[i], values[i])``. The inputs are not modified."""
        if np.asarray(keys).size == 0:
            return
        pair, key, value = self._cells(keys, values)
        self.pairs += np.bincount(pair, minlength=self.pairs.size).astype(np.int64)
        self.keys += np.bincount(key, minlength=self.keys.size).astype(np.int64)
        self.values += np.bincount(value, minlength=self.values.size).astype(np.int64)

    def log_likelihood(
        self, keys: np.ndarray, values: np.ndarray, alpha: float, min_count: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Negative log-likelihood (nats) of each value given its key, for known keys.

        Returns ``(nll, known)``: ``known`` marks pairs whose key has at least ``min_count``
        counts; ``nll`` holds their values only (in input order).
        """
        if np.asarray(keys).size == 0 or self.total == 0:
            return np.zeros(0), np.zeros(np.asarray(keys).size, dtype=bool)
        pair, key, value = self._cells(keys, values)
        n_key = self.keys[key]
        known = n_key >= min_count
        width = self.values.size
        p_value = (self.values[value[known]] + 0.5) / (self.total + 0.5 * width)
        p = (self.pairs[pair[known]] + alpha * p_value) / (n_key[known] + alpha)
        return -np.log(p), known

    def halve(self) -> ConditionalCounts:
        """A copy with every count halved (rounded down): exponential forgetting."""
        out = self.copy()
        out.pairs //= 2
        out.keys //= 2
        out.values //= 2
        return out

    def same_layout(self, other: object) -> bool:
        """Whether ``other`` has the same widths and salt (so the two can be merged)."""
        return (
            isinstance(other, ConditionalCounts)
            and other.salt == self.salt
            and (other.pairs.size, other.keys.size, other.values.size)
            == (self.pairs.size, self.keys.size, self.values.size)
        )

    def merge(self, other: ConditionalCounts) -> ConditionalCounts:
        """A new table with the counts of both (same layout required)."""
        if not self.same_layout(other):
            raise ValueError("cannot merge conditional counts with different widths or salt")
        out = ConditionalCounts(self.pairs.size, self.keys.size, self.values.size, self.salt)
        out.pairs = self.pairs + other.pairs
        out.keys = self.keys + other.keys
        out.values = self.values + other.values
        return out

    def copy(self) -> ConditionalCounts:
        """An independent copy."""
        return self.merge(
            ConditionalCounts(self.pairs.size, self.keys.size, self.values.size, self.salt)
        )

    def state_dict(self) -> State:
        """``{"pairs", "keys", "values": int64, "salt": uint8}``."""
        return {
            "pairs": self.pairs.copy(),
            "keys": self.keys.copy(),
            "values": self.values.copy(),
            "salt": _text_array(self.salt),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray]) -> ConditionalCounts:
        """Inverse of `state_dict`."""
        _check_state(state, ("pairs", "keys", "values", "salt"), "ConditionalCounts")
        arrays = [np.asarray(state[k], dtype=np.int64) for k in ("pairs", "keys", "values")]
        out = cls(*(int(a.size) for a in arrays), _array_text(state["salt"]))
        out.pairs, out.keys, out.values = (a.copy() for a in arrays)
        return out

    def __eq__(self, other: object) -> bool:
        return (
            self.same_layout(other)
            and np.array_equal(self.pairs, other.pairs)  # type: ignore[union-attr]
            and np.array_equal(self.keys, other.keys)  # type: ignore[union-attr]
            and np.array_equal(self.values, other.values)  # type: ignore[union-attr]
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ConditionalCounts(pairs={self.pairs.size}, salt={self.salt!r}, total={self.total})"


def _text_array(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()


def _array_text(arr: np.ndarray) -> str:
    return np.asarray(arr, dtype=np.uint8).tobytes().decode("utf-8")


__all__ = [
    "BloomFilter",
    "ConditionalCounts",
    "HashedCounts",
    "NumericHistogram",
    "State",
    "stable_key_hashes",
]
