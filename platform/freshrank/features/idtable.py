"""Collisionless id tables: an id -> embedding row map with admission, expiry and eviction.

Hashing every id into a fixed number of rows (:func:`~freshrank.features.hashing.hash_buckets`)
makes ids share rows. An :class:`IdTable` instead gives each admitted id a row of its own, in the
manner of Monolith's collisionless embedding tables (admission after ``admit_after`` sightings,
expiry of ids not seen for a while) and TorchRec's managed-collision modules (LFU or LRU
eviction when the table is full). Rows are numbered::

    [0, fallback_rows)                          shared by every id not admitted: key % fallback_rows
    [fallback_rows, fallback_rows + capacity)   one admitted id each

so the embedding table has ``num_rows = fallback_rows + capacity`` rows.

**Keys** are uint64 hashes of the id strings (:func:`~freshrank.features.hashing.hash_keys`:
BLAKE2b, any length, any unicode). The table treats equal keys as the same id: of ``n`` distinct
ids, two share a key with probability about ``n**2 / 2**65`` (3e-6 for ten million ids), which
the table assumes away. Key 0 (``MISSING_KEY``) means missing: it is never admitted and always
maps to row 0.

**One call per window.** :meth:`IdTable.observe` takes the keys of a window (every occurrence):

1. admitted ids seen get their frequency raised by their count and their last-seen window (and
   time) set; ids not admitted are counted as *candidates* (bounded by ``candidate_capacity``);
2. admitted ids and candidates not seen for ``expire_after_windows`` windows (or, by event
   time, more than ``expire_after_s`` seconds before ``now_s``) are expired;
3. candidates with at least ``admit_after`` sightings are admitted, best first, into free rows,
   then in place of the worst admitted ids (LFU: fewest sightings, then least recent; LRU: least
   recent, then fewest), each only if it ranks strictly above the id it would replace; at most
   ``max_admissions_per_window`` admissions in a window (free rows included, so an empty table
   fills at that pace), so a burst cannot replace the table;
4. if more candidates are counted than fit, the least-seen, then oldest, are forgotten.

An id seen in the window is never expired by it; an evicted or expired id starts over as a
candidate when it comes back.

Every tie is broken by key and every step is vectorised numpy, so the same calls give the same
table, bit for bit, on every DDP rank (:meth:`IdTable.digest` to compare). The
:class:`TableUpdate` an observe returns says which rows changed owner (``recycled_rows``): the
trainer re-initialises those and resets their optimizer state. LFU without expiry keeps ids
that were popular once; pair it with ``expire_after_windows`` or ``expire_after_s``.

**Lookup** is a sorted key array and ``np.searchsorted`` (bench/bench_idtable.py measures it
against a numpy linear-probing table and a Python dict): on a 2-core VM, 20-100 us for a
request's 100 keys in a 1M-row table (0.7-1x a dict: memory latency), 5-9 million keys/s for a
window's 100k (3-7x a dict). The map rebuilds from the row arrays alone, so
:meth:`IdTable.state_dict` holds plain per-row arrays (``np.savez``, loaded without pickle).

>>> table = IdTable(IdTableConfig(capacity=2, admit_after=2, fallback_rows=4))
>>> table.num_rows
6
>>> update = table.observe([10, 11, 10], window=0)
>>> update.admitted_keys.tolist(), update.admitted_rows.tolist()
([10], [4])
>>> table.lookup([10, 11, 0]).tolist()  # 11 is not admitted yet: 11 % 4
[4, 3, 0]
>>> update.stats.fallback_rate  # of the three sightings, one got a fallback row
0.3333333333333333
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np

from freshrank.features.hashing import MISSING_KEY
from freshrank.features.idtable_config import (
    EVICTION_POLICIES,
    IdTableConfig,
    IdTableError,
    TableStats,
    TableUpdate,
)

__all__ = [
    "EVICTION_POLICIES",
    "IdTable",
    "IdTableConfig",
    "IdTableError",
    "TableStats",
    "TableUpdate",
]


_LIM = (1 << 31) - 1
"""Frequencies and ages are clipped here when ranked (packed into one int64 score)."""

_SORT_QUERIES_ABOVE = 256
"""Lookups of more keys sort them first: searchsorted then walks the key array in order."""

_FORMAT = 1
_ROW_ARRAYS = {
    "row_key": np.uint64,
    "row_freq": np.int64,
    "row_last_window": np.int64,
    "row_last_time": np.float64,
}
_CAND_ARRAYS = {
    "cand_key": np.uint64,
    "cand_count": np.int64,
    "cand_last_window": np.int64,
    "cand_last_time": np.float64,
}
_COUNTERS = ("window", "admissions", "evictions", "expiries", "observed", "fallback", "hits")


def _as_keys(keys: Any) -> np.ndarray:
    arr = np.asarray(keys)
    if arr.dtype == np.uint64:
        return arr
    if arr.size == 0:
        return arr.astype(np.uint64)
    if arr.dtype.kind not in "iu":
        raise IdTableError(f"keys must be uint64 (see hash_keys), got dtype {arr.dtype}")
    if arr.dtype.kind == "i" and arr.min() < 0:
        raise IdTableError("keys must be >= 0 (uint64 hashes, see hash_keys)")
    return arr.astype(np.uint64)


def _find(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(insertion position, found) of each key in a sorted unique array."""
    if len(sorted_keys) == 0:
        return np.zeros(len(keys), np.intp), np.zeros(len(keys), bool)
    pos = np.searchsorted(sorted_keys, keys)
    return pos, sorted_keys[np.minimum(pos, len(sorted_keys) - 1)] == keys


def _score(policy: str, freq: np.ndarray, last_w: np.ndarray, window: int) -> np.ndarray:
    """One int64 per id, higher = more worth keeping: LFU ``(frequency, recency)``, LRU
    ``(recency, frequency)`` packed in 31 + 32 bits (recency ``_LIM - age``: windows < 2**31)."""
    if policy == "lfu":
        score = np.minimum(freq, _LIM)
        score <<= 32
        score += last_w
        score += _LIM - window
        return score
    score = last_w + (_LIM - window)
    score <<= 32
    score += np.minimum(freq, _LIM)
    return score


def _smallest(score: np.ndarray, keys: np.ndarray, k: int, ordered: bool = True) -> np.ndarray:
    """Indices of the ``k`` smallest ``(score, key)``, in that order if ``ordered`` (no sort)."""
    n = len(score)
    if k <= 0:
        return np.zeros(0, np.intp)
    if k < n:
        cut = np.partition(score, k - 1)[k - 1]
        below = np.flatnonzero(score < cut)
        tied, need = np.flatnonzero(score == cut), k - len(below)
        if need < len(tied):  # the smallest keys of the tie (keys are unique: no more ties)
            tied = tied[np.argpartition(keys[tied], need - 1)[:need]]
        idx = np.concatenate([below, tied])
    else:
        idx = np.arange(n)
    return idx[np.lexsort((keys[idx], score[idx]))] if ordered else idx


def _stale(cfg: IdTableConfig, last_w: np.ndarray, last_t: np.ndarray, window: int, now: float):
    stale = np.zeros(len(last_w), bool)
    if cfg.expire_after_windows is not None:
        stale |= window - last_w >= cfg.expire_after_windows
    if cfg.expire_after_s is not None and not math.isnan(now):
        with np.errstate(invalid="ignore"):
            stale |= now - last_t > cfg.expire_after_s  # NaN (seen without a time): never
    return stale


def _checksum(arrays: dict[str, np.ndarray]) -> bytes:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.digest()


_EMPTY_KEYS = np.zeros(0, np.uint64)
_EMPTY_ROWS = np.zeros(0, np.int64)


class IdTable:
    """The id -> row map of one id feature (see the module docstring).

    >>> t = IdTable(IdTableConfig(capacity=1, fallback_rows=3, eviction="lru"))
    >>> t.observe([5], window=0).admitted_rows.tolist()
    [3]
    >>> u = t.observe([7], window=1)  # full: 7 (seen now) replaces 5 (least recently seen)
    >>> u.evicted_keys.tolist(), u.recycled_rows.tolist(), t.lookup([5, 7]).tolist()
    ([5], [3], [2, 3])
    """

    def __init__(self, config: IdTableConfig) -> None:
        if not isinstance(config, IdTableConfig):
            raise IdTableError(f"config must be an IdTableConfig, got {type(config).__name__}")
        self.config = config
        c = config.capacity
        self._row = {n: np.zeros(c, d) for n, d in _ROW_ARRAYS.items()}
        self._row["row_last_time"][:] = np.nan
        self._cand = {n: np.zeros(0, d) for n, d in _CAND_ARRAYS.items()}
        self._counters = np.array([-1, 0, 0, 0, 0, 0, 0], np.int64)
        self._map_keys, self._map_rows = _EMPTY_KEYS, _EMPTY_ROWS

    # -- reading ---------------------------------------------------------------------------
    @property
    def num_rows(self) -> int:
        """Rows of the embedding table: ``fallback_rows + capacity``."""
        return self.config.num_rows

    @property
    def occupancy(self) -> int:
        """Admitted ids."""
        return len(self._map_keys)

    @property
    def window(self) -> int:
        """The window of the last :meth:`observe` (-1 before the first)."""
        return int(self._counters[0])

    @property
    def nbytes(self) -> int:
        """Bytes held by the table's arrays (rows, candidates, the key -> row map)."""
        arrays = [*self._row.values(), *self._cand.values(), self._map_keys, self._map_rows]
        return sum(a.nbytes for a in arrays)

    def keys(self) -> np.ndarray:
        """The admitted keys, sorted (a copy)."""
        return self._map_keys.copy()

    def lookup(self, keys: Any) -> np.ndarray:
        """The row of each key (int64, same shape): its own row if admitted, else fallback.

        >>> t = IdTable(IdTableConfig(capacity=4, fallback_rows=10))
        >>> t.lookup(np.array([[3, 25], [0, 9]], np.uint64)).tolist()
        [[3, 5], [0, 9]]
        """
        arr = _as_keys(keys)
        flat = arr.reshape(-1)
        out = (flat % np.uint64(self.config.fallback_rows)).astype(np.int64)
        if len(self._map_keys) and len(flat):
            if len(flat) > _SORT_QUERIES_ABOVE:
                order = np.argsort(flat)
                pos, hit = _find(self._map_keys, flat[order])
                out[order[hit]] = self._map_rows[pos[hit]]
            else:
                pos, hit = _find(self._map_keys, flat)
                out[hit] = self._map_rows[pos[hit]]
        return out.reshape(arr.shape)

    def contains(self, keys: Any) -> np.ndarray:
        """Whether each key is admitted (bool, same shape)."""
        arr = _as_keys(keys)
        return _find(self._map_keys, arr.reshape(-1))[1].reshape(arr.shape)

    def stats(self) -> TableStats:
        """The current window's :class:`TableStats` so far."""
        w, *counts = (int(v) for v in self._counters)
        size = (self.occupancy, self.config.capacity, len(self._cand["cand_key"]))
        return TableStats(w, *size, *counts)

    # -- updating --------------------------------------------------------------------------
    def observe(self, keys: Any, window: int, now_s: float | None = None) -> TableUpdate:
        """Count a window's keys (every occurrence), admit, expire and evict (module docstring).

        ``window`` must not go back; several calls with one window share its admission cap and
        its stats. ``now_s`` (event time) is needed when ``expire_after_s`` is set.
        """
        cfg = self.config
        if (
            isinstance(window, bool)
            or not isinstance(window, int | np.integer)
            or not 0 <= window <= _LIM
        ):
            raise IdTableError(f"window must be an int in [0, 2**31), got {window!r}")
        window = int(window)
        if window < self.window:
            raise IdTableError(f"window {window} is before the last observed window {self.window}")
        if now_s is None:
            if cfg.expire_after_s is not None:
                raise IdTableError("now_s is needed: expire_after_s is set")
            now = math.nan
        else:
            now = float(now_s)
            if not math.isfinite(now):
                raise IdTableError(f"now_s must be finite, got {now_s!r}")
        if window != self.window:
            self._counters[:] = (window, 0, 0, 0, 0, 0, 0)
        flat = _as_keys(keys).reshape(-1)
        uniq, counts = np.unique(flat[flat != MISSING_KEY], return_counts=True)
        counts = counts.astype(np.int64)
        row, fb = self._row, cfg.fallback_rows

        # 1. sightings: admitted ids, then candidates
        pos, hit = _find(self._map_keys, uniq)
        seen = self._map_rows[pos[hit]] - fb
        row["row_freq"][seen] += counts[hit]
        row["row_last_window"][seen] = window
        row["row_last_time"][seen] = now
        appended_at = self._count_candidates(uniq[~hit], counts[~hit], window, now)

        # 2. expiry (candidates leave at the end, in one pass: ``drop``)
        occupied = row["row_key"] != MISSING_KEY
        stale = _stale(cfg, row["row_last_window"], row["row_last_time"], window, now)
        expired_rows = np.flatnonzero(occupied & stale)
        expired_keys = row["row_key"][expired_rows].copy()
        self._free(expired_rows)
        cand = self._cand
        drop = _stale(cfg, cand["cand_last_window"], cand["cand_last_time"], window, now)

        # 3. admission into free rows, then in place of worse ids
        admitted_idx, target_rows, victims = self._admit(window, drop)
        admitted_keys = cand["cand_key"][admitted_idx]
        evicted_keys = row["row_key"][victims].copy()
        self._free(victims)
        for n, a in zip(_ROW_ARRAYS, _CAND_ARRAYS, strict=True):
            row[n][target_rows] = cand[a][admitted_idx]
        drop[admitted_idx] = True
        self._update_map(np.concatenate([expired_keys, evicted_keys]), admitted_keys, target_rows)
        self._settle_candidates(drop, appended_at)  # 4. bounded, sorted by key again

        # sightings whose id has no row now: not admitted before nor now, or evicted now
        removed = np.sort(evicted_keys)
        owned = (hit & ~_find(removed, uniq)[1]) | _find(np.sort(admitted_keys), uniq)[1]
        fallback = int(counts[~owned].sum())
        self._counters[1:] += (
            len(admitted_keys),
            len(evicted_keys),
            len(expired_keys),
            int(counts.sum()),
            fallback,
            int(counts[hit].sum()),
        )
        recycled = np.union1d(expired_rows, victims).astype(np.int64) + fb
        return TableUpdate(
            window,
            admitted_keys,
            target_rows.astype(np.int64) + fb,
            evicted_keys,
            expired_keys,
            recycled,
            self.stats(),
        )

    def _count_candidates(
        self, keys: np.ndarray, counts: np.ndarray, window: int, now: float
    ) -> np.ndarray:
        """Count sightings of ids not admitted. New ones are appended, out of key order, until
        :meth:`_settle_candidates`; returns where they belong among the old ones."""
        cand = self._cand
        pos, hit = _find(cand["cand_key"], keys)
        at = pos[hit]
        cand["cand_count"][at] += counts[hit]
        cand["cand_last_window"][at] = window
        cand["cand_last_time"][at] = now
        new = ~hit
        m = int(np.count_nonzero(new))
        if m:
            values = {
                "cand_key": keys[new],
                "cand_count": counts[new],
                "cand_last_window": np.full(m, window, np.int64),
                "cand_last_time": np.full(m, now),
            }
            self._cand = {n: np.concatenate([a, values[n]]) for n, a in cand.items()}
        return pos[new]

    def _admit(self, window: int, gone: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(candidate indices admitted, their rows, rows taken from evicted ids), best first."""
        cfg, cand, row = self.config, self._cand, self._row
        none = np.zeros(0, np.intp)
        eligible = np.flatnonzero((cand["cand_count"] >= cfg.admit_after) & ~gone)
        want = len(eligible)
        if cfg.max_admissions_per_window is not None:
            want = min(want, max(0, cfg.max_admissions_per_window - int(self._counters[1])))
        if want == 0:
            return none, none, none
        score = _score(
            cfg.eviction, cand["cand_count"][eligible], cand["cand_last_window"][eligible], window
        )
        order = _smallest(-score, cand["cand_key"][eligible], want)
        best, score = eligible[order], score[order]
        is_free = row["row_key"] == MISSING_KEY
        free = np.flatnonzero(is_free)[:want]
        victims = none
        if len(best) > len(free):  # every free row is taken: the rest compete for rows
            kept = _score(cfg.eviction, row["row_freq"], row["row_last_window"], window)
            kept[is_free] = np.iinfo(np.int64).max  # never a victim
            k = min(len(best) - len(free), cfg.capacity - int(np.count_nonzero(is_free)))
            worst = _smallest(kept, row["row_key"], k)
            wins = score[len(free) : len(free) + len(worst)] > kept[worst]
            victims = worst[: len(wins) if wins.all() else int(np.argmin(wins))]
        taken = len(free) + len(victims)
        return best[:taken], np.concatenate([free, victims]), victims

    def _settle_candidates(self, drop: np.ndarray, appended_at: np.ndarray | None = None) -> None:
        """Drop the candidates marked and the least-seen, then oldest, beyond the limit; put
        the ``appended_at`` ones (the last ones, see :meth:`_count_candidates`) in key order."""
        cand = self._cand
        m = 0 if appended_at is None else len(appended_at)
        gone = int(np.count_nonzero(drop))
        excess = len(drop) - gone - self.config.candidate_limit
        if excess > 0:  # the marked ones rank lowest (-1), then the least-seen, then oldest
            score = _score("lfu", cand["cand_count"], cand["cand_last_window"], self.window)
            score[drop] = -1
            drop[_smallest(score, cand["cand_key"], gone + excess, ordered=False)] = True
        if not (gone or excess > 0 or m):
            return
        n = len(drop) - m
        keep = ~drop
        perm = np.flatnonzero(keep[:n])
        new = np.flatnonzero(keep[n:])
        if len(new):
            dest = np.searchsorted(perm, appended_at[new]) + np.arange(len(new))
            old = np.ones(len(perm) + len(new), bool)
            old[dest] = False
            merged = np.empty(len(old), np.intp)
            merged[old], merged[dest] = perm, n + new
            perm = merged
        self._cand = {k: a.take(perm) for k, a in cand.items()}

    def _free(self, rows: np.ndarray) -> None:
        if len(rows):
            for n in ("row_key", "row_freq", "row_last_window"):
                self._row[n][rows] = 0
            self._row["row_last_time"][rows] = np.nan

    def _update_map(self, removed: np.ndarray, added: np.ndarray, rows: np.ndarray) -> None:
        keys, out = self._map_keys, self._map_rows
        if len(removed):
            at = np.searchsorted(keys, removed)
            keys, out = np.delete(keys, at), np.delete(out, at)
        if len(added):
            order = np.argsort(added)
            at = np.searchsorted(keys, added[order])
            keys = np.insert(keys, at, added[order])
            out = np.insert(out, at, rows[order].astype(np.int64) + self.config.fallback_rows)
        self._map_keys, self._map_rows = keys, out

    def _rebuild_map(self) -> None:
        occ = np.flatnonzero(self._row["row_key"] != MISSING_KEY)
        order = np.argsort(self._row["row_key"][occ])
        self._map_keys = self._row["row_key"][occ][order]
        self._map_rows = occ[order].astype(np.int64) + self.config.fallback_rows

    # -- saving ----------------------------------------------------------------------------
    def _arrays(self) -> dict[str, np.ndarray]:
        meta = np.array([_FORMAT, self.config.capacity, self.config.fallback_rows], np.int64)
        return {**self._row, **self._cand, "counters": self._counters, "meta": meta}

    def state_dict(self) -> dict[str, np.ndarray]:
        """The table as numpy arrays (copies), with a sha256 ``checksum``: ``np.savez`` it."""
        arrays = {n: a.copy() for n, a in self._arrays().items()}
        arrays["checksum"] = np.frombuffer(_checksum(arrays), np.uint8).copy()
        return arrays

    def digest(self) -> str:
        """A short hex digest of the whole state, to compare tables across ranks."""
        return _checksum(self._arrays()).hex()[:16]

    @classmethod
    def from_state(
        cls, config: IdTableConfig, state: Any, *, num_rows: int | None = None
    ) -> IdTable:
        """A table from :meth:`state_dict` (or an ``np.load`` of it), validated.

        ``num_rows``, when given, is the embedding table's row count, which must equal
        ``config.num_rows``. Raises :class:`IdTableError` when the state does not match the
        config or the table size, or is corrupt. Candidates beyond ``candidate_capacity``
        (a smaller bound than when saved) are forgotten, least-seen first.
        """
        if num_rows is not None and num_rows != config.num_rows:
            raise IdTableError(
                f"the embedding table has {num_rows} rows but the id table config maps "
                f"fallback_rows + capacity = {config.fallback_rows} + {config.capacity} = "
                f"{config.num_rows}"
            )
        names = ("meta", "counters", "checksum", *_ROW_ARRAYS, *_CAND_ARRAYS)
        missing = [n for n in names if n not in state]
        if missing:
            raise IdTableError(f"id table state lacks {', '.join(missing)}")
        arrays = {n: np.asarray(state[n]) for n in names}
        meta = arrays["meta"]
        if meta.dtype != np.int64 or meta.shape != (3,) or int(meta[0]) != _FORMAT:
            raise IdTableError(f"id table state has an unknown format (meta {meta.tolist()})")
        saved_cap, saved_fb = int(meta[1]), int(meta[2])
        if (saved_cap, saved_fb) != (config.capacity, config.fallback_rows):
            raise IdTableError(
                f"id table state is for capacity {saved_cap}, fallback_rows {saved_fb} "
                f"({saved_cap + saved_fb} rows) but the config has capacity {config.capacity}, "
                f"fallback_rows {config.fallback_rows} ({config.num_rows} rows)"
            )
        want = {**_ROW_ARRAYS, **_CAND_ARRAYS, "counters": np.int64, "checksum": np.uint8}
        lengths = {**dict.fromkeys(_ROW_ARRAYS, config.capacity), "counters": len(_COUNTERS)}
        lengths |= {"checksum": 32, **dict.fromkeys(_CAND_ARRAYS, len(arrays["cand_key"]))}
        for n, dtype in want.items():
            a = arrays[n]
            if a.dtype != dtype or a.shape != (lengths[n],):
                raise IdTableError(
                    f"id table state {n}: want {np.dtype(dtype)} of shape ({lengths[n]},), "
                    f"got {a.dtype} of shape {a.shape}"
                )
        body = {n: a for n, a in arrays.items() if n != "checksum"}
        if _checksum(body) != arrays["checksum"].tobytes():
            raise IdTableError("id table state is corrupt: its checksum does not match")
        row_key, cand_key = arrays["row_key"], arrays["cand_key"]
        owned = row_key[row_key != MISSING_KEY]
        if len(np.unique(owned)) != len(owned):
            raise IdTableError("id table state is corrupt: a key owns two rows")
        if len(cand_key) and (
            np.any(np.diff(cand_key) == 0)
            or np.any(cand_key[1:] < cand_key[:-1])
            or cand_key[0] == MISSING_KEY
            or np.isin(cand_key, owned).any()
        ):
            raise IdTableError("id table state is corrupt: candidates not sorted, unique, new")
        table = cls(config)
        table._row = {n: arrays[n].copy() for n in _ROW_ARRAYS}
        table._cand = {n: arrays[n].copy() for n in _CAND_ARRAYS}
        table._counters = arrays["counters"].copy()
        table._rebuild_map()
        table._settle_candidates(np.zeros(len(cand_key), bool))
        return table
