"""A seeded, deterministic, vectorised e-commerce search world that emits impression events.

The world:

- **Users** have an activity weight (some search much more than others), a primary device, a
  preference logit per category, a small latent taste vector and a price sensitivity.
- **Items** have a category, a brand, a price (lognormal around a per-category level), a latent
  quality (brand level + item noise) and a latent vector. New items arrive on a schedule.
- **A search**: a user picks a category from their preferences and a query from that category's
  query pool (words from the category's vocabulary, e.g. ``"cat7 word87 word91"``). The engine
  shows ``list_size`` distinct candidates, mostly from the query's category, ordered by a noisy
  quality score (the logging policy).
- **A click** happens when the position is examined (probability ``1 / (1 + pos) ** eta``, eta a
  little steeper on small screens) *and* the item attracts the user (``sigmoid`` of category
  preference + taste · latent + quality + category match - price sensitivity · log relative
  price + ``click_bias``). A **purchase** can only follow a click.
- **Drift**: every ``drift_every_requests`` requests, user preferences and tastes move by
  ``drift_strength`` (a mean-reverting step, so their spread stays the same);
  :meth:`Simulator.planted_shift` applies a large abrupt change at once.

Everything is drawn from one ``numpy`` generator seeded by ``SimulatorConfig.seed``: the same
config and the same sequence of calls give identical tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from freshrank.events.schema import FILE_SCHEMA

DEVICES: tuple[str, ...] = ("mobile", "desktop", "tablet")
"""Device names, in the order ``n_devices`` takes them."""

_DEVICE_SHARE = np.array([0.6, 0.3, 0.1])  # share of users whose primary device it is
_DEVICE_ETA_SCALE = np.array([1.3, 1.0, 1.1])  # small screens: steeper position bias
_PRIMARY_DEVICE_PROB = 0.85  # a request uses the user's primary device with this probability
_PREF_SCALE = 1.5  # spread of users' category preference logits
_PRICE_LEVEL_SPREAD = 0.8  # spread of per-category log price levels
_PRICE_SIGMA = 0.5  # spread of log price within a category
_W_PREF, _W_TASTE, _W_QUALITY, _W_MATCH = 0.8, 1.0, 1.0, 1.0
_DEFAULT_START = datetime(2024, 1, 1, tzinfo=timezone.utc)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class SimulatorConfig:
    """Shape and dynamics of the simulated world. Every field is checked in ``__post_init__``.

    ``new_items_every_requests`` / ``drift_every_requests`` of 0 turn arrivals / drift off.
    Simulated time advances by ``1 / requests_per_second`` per search request.

    >>> SimulatorConfig(n_users=0)
    Traceback (most recent call last):
    ...
    ValueError: SimulatorConfig: n_users must be >= 1, got 0
    """

    seed: int = 0
    n_users: int = 5000
    n_items: int = 2000
    n_categories: int = 20
    n_brands: int = 50
    list_size: int = 10
    n_devices: int = 3
    words_per_category: int = 12
    queries_per_category: int = 30
    latent_dim: int = 8
    in_category_fraction: float = 0.8
    new_items_every_requests: int = 10_000
    new_items_per_arrival: int = 20
    drift_every_requests: int = 10_000
    drift_strength: float = 0.1
    start_time: datetime = field(default=_DEFAULT_START)
    requests_per_second: float = 100.0
    position_bias_eta: float = 1.0
    ranking_noise: float = 1.0
    click_bias: float = -2.5
    purchase_given_click: float = 0.1

    def __post_init__(self) -> None:
        def fail(msg: str) -> None:
            raise ValueError(f"SimulatorConfig: {msg}")

        ints = {
            "seed": 0,
            "n_users": 1,
            "n_items": 1,
            "n_categories": 1,
            "n_brands": 1,
            "list_size": 1,
            "n_devices": 1,
            "words_per_category": 1,
            "queries_per_category": 1,
            "latent_dim": 1,
            "new_items_every_requests": 0,
            "new_items_per_arrival": 0,
            "drift_every_requests": 0,
        }
        for name, low in ints.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                fail(f"{name} must be an int, got {type(value).__name__} {value!r}")
            if value < low:
                fail(f"{name} must be >= {low}, got {value}")
        if self.n_devices > len(DEVICES):
            names = ", ".join(DEVICES)
            fail(f"n_devices must be <= {len(DEVICES)} ({names}), got {self.n_devices}")
        if self.n_items < self.n_categories:
            fail(
                f"n_items ({self.n_items}) must be >= n_categories ({self.n_categories}) so that "
                "every category has an item; raise n_items or lower n_categories"
            )
        if self.n_items < self.list_size:
            fail(
                f"n_items ({self.n_items}) must be >= list_size ({self.list_size}) so a search "
                "can show distinct items; raise n_items or lower list_size"
            )
        for name in ("in_category_fraction", "drift_strength", "purchase_given_click"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                fail(f"{name} must be in [0, 1], got {value}")
        for name in ("position_bias_eta", "ranking_noise"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                fail(f"{name} must be a finite number >= 0, got {value}")
        if not math.isfinite(self.click_bias):
            fail(f"click_bias must be finite, got {self.click_bias}")
        if not (math.isfinite(self.requests_per_second) and self.requests_per_second > 0):
            fail(f"requests_per_second must be > 0, got {self.requests_per_second}")
        if not isinstance(self.start_time, datetime) or self.start_time.tzinfo is None:
            fail(
                f"start_time must be a timezone-aware datetime, got {self.start_time!r}; "
                "use e.g. datetime(2024, 1, 1, tzinfo=timezone.utc)"
            )


class Simulator:
    """The stateful world: each :meth:`generate` call continues where the last one stopped."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self._cfg = config if config is not None else SimulatorConfig()
        cfg = self._cfg
        self._rng = np.random.default_rng(cfg.seed)
        rng = self._rng
        n_u, n_c, d = cfg.n_users, cfg.n_categories, cfg.latent_dim

        # Users.
        activity = rng.lognormal(0.0, 1.0, n_u)
        self._user_cdf = np.cumsum(activity / activity.sum())
        share = _DEVICE_SHARE[: cfg.n_devices] / _DEVICE_SHARE[: cfg.n_devices].sum()
        self._user_device = rng.choice(cfg.n_devices, size=n_u, p=share).astype(np.int64)
        self._pref = rng.normal(0.0, _PREF_SCALE, (n_u, n_c))
        self._taste = rng.normal(0.0, 1.0, (n_u, d))
        self._price_sens = rng.gamma(2.0, 0.25, n_u)
        self._query_cdf = np.empty((n_u, n_c))
        self._update_query_cdf()

        # Categories, brands, queries.
        self._price_level = rng.normal(3.0, _PRICE_LEVEL_SPREAD, n_c)
        self._brand_quality = rng.normal(0.0, 0.5, cfg.n_brands)
        self._query_strings = self._make_queries()

        # Items (arrays grow as new items arrive).
        n_i = cfg.n_items
        cats = np.concatenate([np.arange(n_c), rng.integers(0, n_c, n_i - n_c)])
        self._item_cat = np.empty(0, dtype=np.int64)
        self._item_brand = np.empty(0, dtype=np.int64)
        self._item_price = np.empty(0)
        self._item_logprice_rel = np.empty(0)
        self._item_quality = np.empty(0)
        self._item_latent = np.empty((0, d))
        self._item_ids = pa.array([], pa.string())
        self._add_items(cats)

        # Id strings indexed with take().
        self._user_ids = pa.array([f"u{i}" for i in range(n_u)], pa.string())
        self._cat_ids = pa.array([f"c{i}" for i in range(n_c)], pa.string())
        self._brand_ids = pa.array([f"b{i}" for i in range(cfg.n_brands)], pa.string())
        self._device_ids = pa.array(list(DEVICES[: cfg.n_devices]), pa.string())

        self._start_us = _to_us(cfg.start_time)
        self._requests = 0
        self._events = 0
        self._n_arrivals = 0
        self._n_drifts = 0
        self._n_shifts = 0

    # ------------------------------------------------------------------------------ properties

    @property
    def config(self) -> SimulatorConfig:
        """The configuration the world was built with."""
        return self._cfg

    @property
    def n_users(self) -> int:
        """Number of users."""
        return self._cfg.n_users

    @property
    def n_items(self) -> int:
        """Number of items now, arrivals included."""
        return int(self._item_cat.size)

    @property
    def requests_generated(self) -> int:
        """Search requests generated so far."""
        return self._requests

    @property
    def events_generated(self) -> int:
        """Impression events (rows) generated so far."""
        return self._events

    @property
    def n_arrivals(self) -> int:
        """How many times new items have arrived."""
        return self._n_arrivals

    @property
    def n_drifts(self) -> int:
        """How many scheduled drift steps have been applied."""
        return self._n_drifts

    @property
    def n_planted_shifts(self) -> int:
        """How many times :meth:`planted_shift` has been called."""
        return self._n_shifts

    @property
    def now(self) -> datetime:
        """Simulated time of the next request (UTC)."""
        return _from_us(self._time_us(self._requests))

    # --------------------------------------------------------------------------------- public

    def generate(self, n_requests: int) -> pa.Table:
        """Simulate ``n_requests`` searches; return ``n_requests * list_size`` event rows.

        Arrivals and drift happen as the request counter passes their schedule. The table has
        ``FILE_SCHEMA``; every row has every required field.
        """
        if isinstance(n_requests, bool) or not isinstance(n_requests, (int, np.integer)):
            raise TypeError(f"n_requests must be an int, got {type(n_requests).__name__}")
        if n_requests < 0:
            raise ValueError(f"n_requests must be >= 0, got {n_requests}")
        parts = []
        remaining = int(n_requests)
        while remaining > 0:
            self._apply_schedule()
            n = min(remaining, self._requests_until_next_event())
            parts.append(self._generate_segment(n))
            remaining -= n
        if not parts:
            return FILE_SCHEMA.empty_table()
        if len(parts) == 1:
            return parts[0]
        return pa.concat_tables(parts)

    def planted_shift(self) -> None:
        """Apply a large, abrupt preference shift now.

        Every user's category preferences are rotated to other categories (what they liked they
        now ignore, and vice versa) and their taste vectors are reversed, so click behaviour
        and the query mix both change at once.
        """
        cfg = self._cfg
        if cfg.n_categories > 1:
            shift = int(self._rng.integers(1, cfg.n_categories))
            self._pref = np.roll(self._pref, shift, axis=1)
        self._taste = -self._taste
        self._update_query_cdf()
        self._n_shifts += 1

    def catalog(self) -> pa.Table:
        """The items as they are now: ``item_id``, ``category``, ``brand``, ``price``."""
        return pa.table(
            {
                "item_id": self._item_ids,
                "category": self._cat_ids.take(self._item_cat),
                "brand": self._brand_ids.take(self._item_brand),
                "price": pa.array(self._item_price, pa.float64()),
            }
        )

    # ----------------------------------------------------------------------------- schedule

    def _requests_until_next_event(self) -> int:
        """Requests that can be generated before the next arrival or drift is due."""
        cfg = self._cfg
        gaps = []
        for every in (cfg.new_items_every_requests, cfg.drift_every_requests):
            if every > 0:
                gaps.append(every - self._requests % every)
        return min(gaps, default=1 << 62)

    def _apply_schedule(self) -> None:
        """Apply arrivals and drift that are due at the current request counter."""
        cfg, r = self._cfg, self._requests
        if r == 0:
            return
        if cfg.new_items_every_requests and r % cfg.new_items_every_requests == 0:
            if cfg.new_items_per_arrival:
                self._add_items(self._rng.integers(0, cfg.n_categories, cfg.new_items_per_arrival))
            self._n_arrivals += 1
        if cfg.drift_every_requests and r % cfg.drift_every_requests == 0:
            self._drift(cfg.drift_strength)
            self._n_drifts += 1

    def _drift(self, strength: float) -> None:
        """Mean-reverting step: ``x <- sqrt(1 - s^2) x + s * noise`` (spread unchanged)."""
        if strength <= 0:
            return
        keep = math.sqrt(1.0 - strength**2)
        rng = self._rng
        self._pref = keep * self._pref + strength * rng.normal(0.0, _PREF_SCALE, self._pref.shape)
        self._taste = keep * self._taste + strength * rng.normal(0.0, 1.0, self._taste.shape)
        self._update_query_cdf()

    # --------------------------------------------------------------------------------- world

    def _update_query_cdf(self) -> None:
        """Per-user cumulative distribution over the category a search is about."""
        z = self._pref - self._pref.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        np.cumsum(p, axis=1, out=self._query_cdf)

    def _make_queries(self) -> pa.Array:
        """``queries_per_category`` query strings per category, category-major."""
        cfg, rng = self._cfg, self._rng
        v = cfg.words_per_category
        out = []
        for c in range(cfg.n_categories):
            for _ in range(cfg.queries_per_category):
                k = int(rng.integers(1, min(3, v) + 1))
                words = [f"word{c * v + int(w)}" for w in rng.choice(v, size=k, replace=False)]
                if rng.random() < 0.5:
                    words.insert(0, f"cat{c}")
                out.append(" ".join(words))
        return pa.array(out, pa.string())

    def _add_items(self, cats: np.ndarray) -> None:
        """Append items of the given categories and rebuild the per-category index."""
        cfg, rng = self._cfg, self._rng
        n = int(cats.size)
        first = self._item_cat.size
        brands = rng.integers(0, cfg.n_brands, n)
        log_rel = rng.normal(0.0, _PRICE_SIGMA, n)
        price = np.round(np.exp(self._price_level[cats] + log_rel), 2)
        quality = self._brand_quality[brands] + rng.normal(0.0, 1.0, n)
        latent = rng.normal(0.0, 1.0, (n, cfg.latent_dim))
        self._item_cat = np.concatenate([self._item_cat, cats.astype(np.int64)])
        self._item_brand = np.concatenate([self._item_brand, brands])
        self._item_price = np.concatenate([self._item_price, price])
        self._item_logprice_rel = np.concatenate([self._item_logprice_rel, log_rel])
        self._item_quality = np.concatenate([self._item_quality, quality])
        self._item_latent = np.concatenate([self._item_latent, latent])
        new_ids = pa.array([f"i{i}" for i in range(first, first + n)], pa.string())
        self._item_ids = pa.concat_arrays([self._item_ids, new_ids])
        self._cat_order = np.argsort(self._item_cat, kind="stable")
        self._cat_counts = np.bincount(self._item_cat, minlength=cfg.n_categories)
        self._cat_offsets = np.concatenate([[0], np.cumsum(self._cat_counts)[:-1]])

    def _time_us(self, request_index: np.ndarray | int) -> np.ndarray | int:
        """Event time (unix microseconds) of the given request index (or indices)."""
        step = 1e6 / self._cfg.requests_per_second
        if isinstance(request_index, np.ndarray):
            return self._start_us + (request_index * step).astype(np.int64)
        return self._start_us + int(request_index * step)

    # ------------------------------------------------------------------------------ requests

    def _candidates(self, cat: np.ndarray) -> np.ndarray:
        """``(R, L)`` distinct item indices per request, mostly from the request's category.

        In-category and out-of-category slots are stratified samples of their pools (one item
        per stratum, strata rotated at random), so no item repeats within a list.
        """
        cfg, rng = self._cfg, self._rng
        r, size = cat.size, cfg.list_size
        n_items = self.n_items
        cnt = self._cat_counts[cat]
        off = self._cat_offsets[cat]
        rest = n_items - cnt
        k_in = rng.binomial(size, cfg.in_category_fraction, r)
        k_in = np.minimum(k_in, cnt)
        k_in = np.maximum(k_in, size - rest)
        k_out = size - k_in
        j = np.arange(size)[None, :]
        is_in = j < k_in[:, None]
        jitter = rng.random((r, size))
        # In-category slots j in [0, k_in): stratum j of the category's items.
        pos_in = _stratum(j, k_in, cnt, jitter, rng.integers(0, 1 << 30, r))
        # Out-of-category slots: stratum (j - k_in) of the other items, skipping the category.
        pos_out = _stratum(j - k_in[:, None], k_out, rest, jitter, rng.integers(0, 1 << 30, r))
        pos_out = pos_out + (pos_out >= off[:, None]) * cnt[:, None]
        order_pos = np.where(is_in, off[:, None] + pos_in, pos_out)
        return self._cat_order[order_pos]

    def _generate_segment(self, n: int) -> pa.Table:
        """``n`` requests with no arrival or drift in between."""
        cfg, rng = self._cfg, self._rng
        size = cfg.list_size
        rows = n * size

        # Who searches, for what, on which device.
        user = np.searchsorted(self._user_cdf, rng.random(n) * self._user_cdf[-1], side="right")
        user = np.minimum(user, cfg.n_users - 1)
        u = rng.random(n)[:, None]
        qcat = (self._query_cdf[user] < u).sum(axis=1)
        qcat = np.minimum(qcat, cfg.n_categories - 1)
        query = qcat * cfg.queries_per_category + rng.integers(0, cfg.queries_per_category, n)
        device = np.where(
            rng.random(n) < _PRIMARY_DEVICE_PROB,
            self._user_device[user],
            rng.integers(0, cfg.n_devices, n),
        )

        # What is shown, in which order (logging policy: noisy quality).
        items = self._candidates(qcat)
        score = self._item_quality[items] + cfg.ranking_noise * rng.gumbel(size=items.shape)
        items = np.take_along_axis(items, np.argsort(-score, axis=1), axis=1)

        # What is clicked and bought.
        icat = self._item_cat[items]
        logit = (
            cfg.click_bias
            + _W_PREF * np.take_along_axis(self._pref[user], icat, axis=1)
            + _W_TASTE
            * np.einsum("rd,rld->rl", self._taste[user], self._item_latent[items])
            / math.sqrt(cfg.latent_dim)
            + _W_QUALITY * self._item_quality[items]
            + _W_MATCH * (icat == qcat[:, None])
            - self._price_sens[user][:, None] * self._item_logprice_rel[items]
        )
        attract = 1.0 / (1.0 + np.exp(-logit))
        eta = cfg.position_bias_eta * _DEVICE_ETA_SCALE[device]
        examine = (1.0 + np.arange(size)[None, :]) ** -eta[:, None]
        clicked = (rng.random((n, size)) < examine) & (rng.random((n, size)) < attract)
        p_buy = np.minimum(1.0, 2.0 * cfg.purchase_given_click * attract)
        purchased = clicked & (rng.random((n, size)) < p_buy)

        # Columns.
        req_index = np.arange(self._requests, self._requests + n)
        row_req = np.repeat(np.arange(n), size)
        flat_items = items.ravel()
        times = np.repeat(self._time_us(req_index), size)
        prefix = f"{cfg.seed}-"
        event_ids = pc.binary_join_element_wise(
            prefix, pc.cast(pa.array(np.arange(self._events, self._events + rows)), pa.string()), ""
        )
        request_ids = pc.binary_join_element_wise(
            prefix + "r", pc.cast(pa.array(req_index), pa.string()), ""
        ).take(row_req)
        table = pa.Table.from_arrays(
            [
                event_ids,
                pa.array(times, pa.timestamp("us", tz="UTC")),
                request_ids,
                self._user_ids.take(np.repeat(user, size)),
                self._query_strings.take(np.repeat(query, size)),
                self._item_ids.take(flat_items),
                pa.array(np.tile(np.arange(size, dtype=np.int32), n)),
                self._cat_ids.take(icat.ravel()),
                self._brand_ids.take(self._item_brand[flat_items]),
                pa.array(self._item_price[flat_items]),
                self._device_ids.take(np.repeat(device, size)),
                pa.array(clicked.ravel()),
                pa.array(purchased.ravel()),
            ],
            schema=FILE_SCHEMA,
        )
        self._requests += n
        self._events += rows
        return table


def _stratum(
    j: np.ndarray, k: np.ndarray, pool: np.ndarray, jitter: np.ndarray, rotation: np.ndarray
) -> np.ndarray:
    """Position in a pool of ``pool`` items for slot ``j`` of ``k`` stratified draws per row.

    Slot ``j`` draws from the integer stratum ``[j*pool//k, (j+1)*pool//k)``, shifted by a
    per-row rotation modulo ``pool``: distinct slots get distinct positions when ``pool >= k``.
    Values for slots outside ``[0, k)`` are meaningless (the caller masks them).
    """
    k_ = np.maximum(k, 1)[:, None]
    pool_ = np.maximum(pool, 1)[:, None]
    lo = (j * pool_) // k_
    hi = ((j + 1) * pool_) // k_
    pos = lo + np.floor(jitter * (hi - lo)).astype(np.int64)
    return (pos + rotation[:, None]) % pool_


def _to_us(t: datetime) -> int:
    """Unix microseconds of an aware datetime."""
    delta = t - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_us(us: int) -> datetime:
    """Aware UTC datetime of unix microseconds."""
    return _EPOCH + timedelta(microseconds=int(us))
