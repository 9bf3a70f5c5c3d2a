"""Collisionless id table (features/idtable.py) under a long-tail stream: memory, churn, speed.

Run: ``python bench/bench_idtable.py [--distinct 10000000] [--capacity 1000000] [--no-write]``.

A synthetic stream in windows of ``--window`` events (default 100,000): a Zipf-ish popular head
(``--head`` ids, exponent ``--zipf``) that repeats, fresh ids that arrive ``--fresh`` a window and
are seen for ``--fresh-life`` windows (new items), and a tail of ids that never repeat, until
``--distinct`` distinct ids (default 10 million) have gone by. Keys are a counter through a
bijective 64-bit mixer, so they look like the BLAKE2b keys of ``hash_keys`` without hashing ten
million strings (the hashing itself is measured on its own, last).

Each table configuration runs in a process of its own (so its VmRSS is its own) through a table
of ``--capacity`` rows (default 1 million): per window the resident memory (``/proc/self/status``
VmRSS), occupancy, admissions, evictions, expiries, candidates, fallback rate and the time of
``IdTable.observe``. Then lookups of 100 keys (a request) and 100,000 keys (a window) through
``IdTable.lookup``, through a numpy linear-probing hash table (the alternative to sorted arrays
weighed for the module) and through a Python dict of the same map (the baseline), all checked
equal. Prints side-by-side tables; writes ``bench/out/idtable/stream.png`` and ``run.json``, and
``bench/RESULTS.md`` under "Issue 15" unless ``--no-write``.

VmRSS is the whole process's; the table's own arrays are reported next to it (``IdTable.nbytes``).
Each ``observe`` frees and allocates arrays of a few MB, and glibc's dynamic mmap threshold then
serves them from the heap, whose fragments make VmRSS wander by tens of MB above the arrays;
``MALLOC_MMAP_THRESHOLD_=1048576 python bench/bench_idtable.py`` (inherited by the workers) pins
the threshold, and VmRSS stays flat to the MB, at some cost in page faults.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from freshrank.features.hashing import hash_keys
from freshrank.features.idtable import IdTable, IdTableConfig

OUT = Path(__file__).resolve().parent / "out" / "idtable"

CONFIGS: dict[str, dict] = {
    "admit1-lru": {"admit_after": 1, "eviction": "lru"},
    "admit2-lfu": {"admit_after": 2, "eviction": "lfu"},
    "admit2-lfu-expire20-cap20k": {
        "admit_after": 2,
        "eviction": "lfu",
        "expire_after_windows": 20,
        "max_admissions_per_window": 20_000,
    },
}
"""Table policies compared (capacity, fallback rows and candidates from the command line):
admit every id at first sight and evict the least recent; admit at the second sighting and
evict the least frequent; that, expiring ids unseen for 20 windows, admitting <= 20,000 a window."""


def vmrss_mb() -> float:
    """This process's resident memory (VmRSS), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def mix64(x: np.ndarray) -> np.ndarray:
    """The murmur3 64-bit finalizer: a bijection of uint64 (0 -> 0), distinct ids stay distinct."""
    x = x.astype(np.uint64)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(33)
        x *= np.uint64(0xFF51AFD7ED558CCD)
        x ^= x >> np.uint64(33)
        x *= np.uint64(0xC4CEB9FE1A85EC53)
        x ^= x >> np.uint64(33)
    return x


class Stream:
    """Windows of keys: Zipf head, fresh ids living a few windows, never-repeating tail."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = np.random.default_rng(args.seed)
        weights = 1.0 / np.arange(1, args.head + 1) ** args.zipf
        self.cdf = np.cumsum(weights) / weights.sum()
        n = args.window
        self.n_head = int(n * args.head_share)
        self.n_fresh = int(n * args.fresh_share)
        self.n_tail = n - self.n_head - self.n_fresh
        most_fresh = (args.distinct // self.n_tail + 2) * args.fresh  # windows <= distinct / tail
        self.seen = {"head": np.zeros(args.head, bool), "fresh": np.zeros(most_fresh, bool)}
        for a in self.seen.values():
            a[:] = False  # touch the pages now: VmRSS then measures the table, not this
        self.fresh_base = args.head + 1  # ids: head 1..head, then fresh, then tail
        self.tail_base = self.fresh_base + most_fresh
        self.fresh: list[np.ndarray] = []  # live fresh id blocks (indices), newest last
        self.n_fresh_ids = self.n_tail_ids = self.distinct = 0

    def _see(self, kind: str, idx: np.ndarray) -> None:
        self.distinct += int(np.count_nonzero(~self.seen[kind][idx]))
        self.seen[kind][idx] = True

    def window(self) -> np.ndarray:
        """The next window's keys (every occurrence, shuffled)."""
        a, rng = self.args, self.rng
        head = np.searchsorted(self.cdf, rng.random(self.n_head))
        self._see("head", head)
        self.fresh.append(np.arange(self.n_fresh_ids, self.n_fresh_ids + a.fresh))
        self.n_fresh_ids += a.fresh
        self.fresh = self.fresh[-a.fresh_life :]
        live = np.concatenate(self.fresh)
        fresh = live[rng.integers(0, len(live), self.n_fresh)]
        self._see("fresh", fresh)
        tail = np.arange(self.n_tail_ids, self.n_tail_ids + self.n_tail)
        self.n_tail_ids += self.n_tail
        self.distinct += self.n_tail
        ids = np.concatenate([head + 1, fresh + self.fresh_base, tail + self.tail_base])
        return mix64(rng.permutation(ids))


class LinearProbe:
    """A numpy open-addressing (linear probing) map, the alternative weighed for ``lookup``."""

    def __init__(self, keys: np.ndarray, rows: np.ndarray, fallback_rows: int) -> None:
        size = 1 << int(np.ceil(np.log2(max(2, 2 * len(keys)))))  # load <= 0.5
        self.mask, self.fb = size - 1, np.uint64(fallback_rows)
        self.keys = np.zeros(size, np.uint64)
        self.rows = np.full(size, -1, np.int64)
        pending, h = np.arange(len(keys)), self._home(keys)
        while len(pending):
            at = h[pending]
            empty = self.rows[at] < 0
            slots, first = np.unique(at[empty], return_index=True)
            won = pending[empty][first]
            self.keys[slots], self.rows[slots] = keys[won], rows[won]
            placed = np.zeros(len(keys), bool)
            placed[won] = True
            pending = pending[~placed[pending]]
            h[pending] = (h[pending] + 1) & self.mask

    def _home(self, keys: np.ndarray) -> np.ndarray:
        return (mix64(keys) & np.uint64(self.mask)).astype(np.int64)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        out = (keys % self.fb).astype(np.int64)
        h, idx = self._home(keys), np.arange(len(keys))
        while len(idx):
            at = h[idx]
            slot_rows = self.rows[at]
            hit = self.keys[at] == keys[idx]
            out[idx[hit]] = slot_rows[hit]
            more = ~hit & (slot_rows >= 0)
            idx = idx[more]
            h[idx] = (at[more] + 1) & self.mask
        return out


def _timed(fn, batches: list[np.ndarray], repeat: int) -> float:
    """Keys per second of ``fn`` over the batches (best of ``repeat`` passes)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for b in batches:
            fn(b)
        best = min(best, time.perf_counter() - t0)
    return sum(len(b) for b in batches) / best


def lookups(table: IdTable, probe_pool: np.ndarray, rng: np.random.Generator) -> dict:
    """Lookup keys/s for 100- and 100,000-key batches: IdTable, linear probing, Python dict."""
    keys = table.keys()
    rows = table.lookup(keys)
    fb = table.config.fallback_rows
    rss0 = vmrss_mb()
    as_dict = dict(zip(keys.tolist(), rows.tolist(), strict=True))
    dict_mb = vmrss_mb() - rss0
    probe = LinearProbe(keys, rows, fb)

    def by_dict(q: np.ndarray) -> np.ndarray:
        return np.fromiter(map(as_dict.get, q.tolist(), (q % np.uint64(fb)).tolist()), np.int64)

    out = {"dict_mb": dict_mb}
    for size, count, repeat in ((100, 2000, 3), (100_000, 10, 3)):
        batches = [probe_pool[rng.integers(0, len(probe_pool), size)] for _ in range(count)]
        for b in batches[:3]:
            want = table.lookup(b)
            assert np.array_equal(by_dict(b), want) and np.array_equal(probe.lookup(b), want)
        out[size] = {
            "idtable": _timed(table.lookup, batches, repeat),
            "linear probing": _timed(probe.lookup, batches, repeat),
            "python dict": _timed(by_dict, batches, repeat),
            "hit rate": float(np.mean(table.contains(np.concatenate(batches[:10])))),
        }
    return out


def worker(name: str, args: argparse.Namespace) -> dict:
    """Stream through one configuration; per-window rows, totals and lookups."""
    config = IdTableConfig(
        capacity=args.capacity,
        fallback_rows=args.fallback_rows,
        candidate_capacity=args.candidates,
        **CONFIGS[name],
    )
    table, stream = IdTable(config), Stream(args)
    rows, events, observe_s = [], 0, 0.0
    t_start = time.perf_counter()
    window = 0
    while stream.distinct < args.distinct:
        keys = stream.window()
        t0 = time.perf_counter()
        s = table.observe(keys, window=window).stats
        dt = time.perf_counter() - t0
        events += len(keys)
        observe_s += dt
        rows.append(
            {
                "window": window,
                "rss_mb": vmrss_mb(),
                "table_mb": table.nbytes / 2**20,
                "occupancy": s.occupancy,
                "admissions": s.admissions,
                "evictions": s.evictions,
                "expiries": s.expiries,
                "candidates": s.candidates,
                "fallback_rate": s.fallback_rate,
                "hit_rate": s.hit_rate,
                "observe_s": dt,
                "distinct": stream.distinct,
            }
        )
        window += 1
    stream_s = time.perf_counter() - t_start
    probe_pool = np.concatenate([stream.window() for _ in range(3)])
    buf = io.BytesIO()
    np.savez(buf, **table.state_dict())
    return {
        "name": name,
        "config": config.to_dict(),
        "windows": rows,
        "events": events,
        "distinct": stream.distinct,
        "observe_s": observe_s,
        "stream_s": stream_s,
        "state_mb": len(buf.getvalue()) / 2**20,
        "lookups": lookups(table, probe_pool, np.random.default_rng(args.seed + 1)),
    }


def summarise(run: dict, capacity: int) -> dict:
    """Totals, when the table filled, and resident memory after that."""
    w = run["windows"]
    full = next((r["window"] for r in w if r["occupancy"] >= capacity), None)
    # once full (5 windows to settle), or the second half of the stream if it never fills
    after = w[full + 5 :] if full is not None else w[len(w) // 2 :]
    rss = [r["rss_mb"] for r in after]
    return {
        "windows": len(w),
        "events": run["events"],
        "distinct": run["distinct"],
        "full_at": full,
        "admissions": sum(r["admissions"] for r in w),
        "evictions": sum(r["evictions"] for r in w),
        "expiries": sum(r["expiries"] for r in w),
        "admissions_after": statistics.median([r["admissions"] for r in after]),
        "recycled_after": statistics.median([r["evictions"] + r["expiries"] for r in after]),
        "occupancy_after": statistics.median([r["occupancy"] for r in after]),
        "fallback_rate": statistics.fmean(r["fallback_rate"] for r in w),
        "fallback_rate_last": statistics.fmean(r["fallback_rate"] for r in w[-20:]),
        "hit_rate_last": statistics.fmean(r["hit_rate"] for r in w[-20:]),
        "rss_full": w[full]["rss_mb"] if full is not None else None,
        "rss_min": min(rss) if rss else None,
        "rss_max": max(rss) if rss else None,
        "table_min": min(r["table_mb"] for r in after) if after else None,
        "table_max": max(r["table_mb"] for r in after) if after else None,
        "rss_last": w[-1]["rss_mb"],
        "observe_keys_s": run["events"] / run["observe_s"],
        "observe_ms_median": 1e3 * statistics.median(r["observe_s"] for r in w),
        "state_mb": run["state_mb"],
        "stream_s": run["stream_s"],
    }


def _n(v, fmt: str = ",.0f") -> str:
    return "-" if v is None else format(v, fmt)


def markdown(runs: list[dict], args: argparse.Namespace, hashing: dict, load: float) -> str:
    """The side-by-side tables."""
    sums = [summarise(r, args.capacity) for r in runs]
    names = [r["name"] for r in runs]
    head = "| | " + " | ".join(names) + " |\n|---|" + "---|" * len(names) + "\n"

    def line(label: str, key: str, fmt: str = ",.0f") -> str:
        return f"| {label} | " + " | ".join(_n(s[key], fmt) for s in sums) + " |\n"

    out = (
        f"Stream: windows of {args.window:,} events ({args.head_share:.0%} from a Zipf "
        f"{args.zipf} head of {args.head:,} ids, {args.fresh_share:.0%} from {args.fresh:,} fresh "
        f"ids a window each seen for {args.fresh_life} windows, the rest never repeating) until "
        f"{args.distinct:,} distinct ids; table capacity {args.capacity:,}, "
        f"{args.fallback_rows:,} fallback rows, candidates <= "
        f"{args.candidates or args.capacity:,}. Machine: 2-core VM, one process per column; "
        f"MALLOC_MMAP_THRESHOLD_ {os.environ.get('MALLOC_MMAP_THRESHOLD_', 'unset')}; "
        f"1-minute load average at the start {load:.1f} (other work shares the cores).\n\n"
    )
    out += head
    out += line("windows", "windows") + line("events", "events")
    out += line("distinct ids", "distinct") + line("table full after window", "full_at")
    out += line("admissions", "admissions") + line("evictions", "evictions")
    out += line("expiries", "expiries")
    out += line("fallback rate of events (mean, all windows)", "fallback_rate", ".3f")
    out += line("fallback rate of events (last 20 windows)", "fallback_rate_last", ".3f")
    out += line("hit rate: events whose id had a row before (last 20)", "hit_rate_last", ".3f")
    out += line("VmRSS when full (MB)", "rss_full", ",.1f")
    out += line("VmRSS last window (MB)", "rss_last", ",.1f")
    out += "| *from 5 windows after full (else the 2nd half):* |" + " |" * len(sums) + "\n"
    out += line("occupancy (median)", "occupancy_after")
    out += line("admissions / window (median)", "admissions_after")
    out += line("evicted + expired / window (median)", "recycled_after")
    rss = [f"{_n(s['rss_min'], ',.1f')} / {_n(s['rss_max'], ',.1f')}" for s in sums]
    out += "| VmRSS min / max (MB) | " + " | ".join(rss) + " |\n"
    arrays = [f"{_n(s['table_min'], ',.1f')} / {_n(s['table_max'], ',.1f')}" for s in sums]
    out += "| table arrays min / max (MB) | " + " | ".join(arrays) + " |\n"
    out += line("state, np.savez (MB)", "state_mb", ",.1f")
    out += line("observe: keys/s (all windows)", "observe_keys_s")
    out += line("observe: ms per window (median)", "observe_ms_median", ",.1f")
    out += (
        "\nFallback rate: share of a window's events whose id has a fallback row once the window "
        "is observed (what training then looks up). Hit rate: share whose id had a row of its "
        "own before the window (what serving saw). VmRSS is the whole process's.\n\n"
    )
    out += "Lookup (keys/s, best of 3; keys drawn from the stream's next windows):\n\n"
    out += "| table | batch | keys admitted | IdTable | numpy linear probing | Python dict | "
    out += "IdTable / dict | Python dict memory (MB) |\n|---|---|---|---|---|---|---|---|\n"
    for r in runs:
        lk = r["lookups"]
        for size in (100, 100_000):
            m = lk[size]
            out += (
                f"| {r['name']} | {size:,} | {m['hit rate']:.0%} | {m['idtable']:,.0f} | "
                f"{m['linear probing']:,.0f} | {m['python dict']:,.0f} | "
                f"{m['idtable'] / m['python dict']:.1f}x | {lk['dict_mb']:,.0f} |\n"
            )
    out += "\nVmRSS, the table's arrays (MB) and occupancy by window:\n\n"
    out += "| window | " + " | ".join(f"{n}: VmRSS | arrays | rows" for n in names) + " |\n"
    out += "|---|" + "---|---|---|" * len(names) + "\n"
    length = max(len(r["windows"]) for r in runs)
    for i in sorted({*range(0, length, max(1, length // 12)), length - 1}):
        cells = []
        for r in runs:
            w = r["windows"][i] if i < len(r["windows"]) else None
            cells += (
                ["-"] * 3
                if w is None
                else [f"{w['rss_mb']:,.1f}", f"{w['table_mb']:,.1f}", f"{w['occupancy']:,}"]
            )
        out += f"| {i} | " + " | ".join(cells) + " |\n"
    out += (
        f"\n`hash_keys` (BLAKE2b, memoised): {hashing['cold']:,.0f} ids/s for "
        f"{hashing['n']:,} new ids (Arrow column), {hashing['warm']:,.0f} ids/s once memoised.\n"
    )
    return out


def hashing_speed(n: int = 200_000, distinct: int = 50_000) -> dict:
    """``hash_keys`` ids/s over an Arrow column, first (hashing) and second time (memo hits)."""
    import pyarrow as pa

    ids = pa.array([f"item-{i % distinct}-{i // distinct}" for i in range(distinct)])
    t0 = time.perf_counter()
    hash_keys(ids, "bench-item")
    cold = distinct / (time.perf_counter() - t0)
    repeated = pa.array([f"item-{i % distinct}-0" for i in range(n)])
    hash_keys(repeated, "bench-warm")  # fill the memo
    t0 = time.perf_counter()
    hash_keys(repeated, "bench-warm")
    return {"n": distinct, "cold": cold, "warm": n / (time.perf_counter() - t0)}


def plot(runs: list[dict], capacity: int, path: Path) -> None:
    """VmRSS, occupancy and churn per window, one line per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    for r in runs:
        w = r["windows"]
        x = [row["window"] for row in w]
        (line,) = axes[0].plot(x, [row["rss_mb"] for row in w], lw=1.2, label=r["name"])
        axes[0].plot(x, [row["table_mb"] for row in w], lw=1, ls="--", c=line.get_color())
        axes[1].plot(x, [row["occupancy"] / capacity for row in w], lw=1.2, label=r["name"])
        (line,) = axes[2].plot(x, [row["admissions"] for row in w], lw=1, label=r["name"])
        axes[2].plot(x, [row["evictions"] for row in w], lw=1, ls="--", c=line.get_color())
        axes[2].plot(x, [row["expiries"] for row in w], lw=1, ls=":", c=line.get_color())
    axes[0].set_ylabel("MB (solid: VmRSS,\ndashed: table arrays)")
    axes[1].set_ylabel("occupancy / capacity")
    axes[2].set_ylabel("ids per window\n(solid: admitted,\ndashed: evicted,\ndotted: expired)")
    axes[2].set_xlabel("window (100k events each)")
    axes[0].set_ylim(bottom=0)
    for ax in axes:
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(alpha=0.3)
    fig.suptitle(f"IdTable, capacity {capacity:,}: memory and churn under a long-tail stream")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--distinct", type=int, default=10_000_000, help="distinct ids to stream")
    p.add_argument("--capacity", type=int, default=1_000_000)
    p.add_argument("--fallback-rows", type=int, default=4096)
    p.add_argument("--candidates", type=int, default=None, help="candidate_capacity")
    p.add_argument("--window", type=int, default=100_000, help="events per window")
    p.add_argument("--head", type=int, default=200_000, help="popular ids")
    p.add_argument("--zipf", type=float, default=1.1)
    p.add_argument("--head-share", type=float, default=0.4)
    p.add_argument("--fresh-share", type=float, default=0.4)
    p.add_argument("--fresh", type=int, default=20_000, help="fresh ids arriving per window")
    p.add_argument("--fresh-life", type=int, default=5, help="windows a fresh id is seen in")
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated names")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-write", action="store_true", help="do not write bench/RESULTS.md")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    return p


def main() -> None:
    p = _parser()
    args = p.parse_args()
    if args.worker:
        Path(args.json).write_text(json.dumps(worker(args.worker, args)))
        return
    names = [n for n in args.configs.split(",") if n]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        p.error(f"unknown --configs {unknown}; known: {list(CONFIGS)}")
    if args.head_share + args.fresh_share >= 1:
        p.error("--head-share + --fresh-share must leave a tail (< 1)")
    skip = ("configs", "no_write", "worker", "json")
    passthrough = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in skip]
    passthrough = [a for a in passthrough if not a.endswith("=None")]
    runs, load = [], os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(names):
            out = Path(tmp) / f"{i}.json"
            t0 = time.perf_counter()
            cmd = [sys.executable, __file__, *passthrough, "--worker", name, "--json", str(out)]
            subprocess.run(cmd, check=True)
            runs.append(json.loads(out.read_text(), object_hook=_int_keys))
            print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    report = markdown(runs, args, hashing_speed(), load)
    print("\n" + report)
    OUT.mkdir(parents=True, exist_ok=True)
    png = OUT / "stream.png"
    plot(runs, args.capacity, png)
    (OUT / "run.json").write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1))
    print(f"wrote {png} and {OUT / 'run.json'}")
    if not args.no_write:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _results import write_section

        body = report + f"\nPlot: `{png.relative_to(OUT.parent.parent.parent)}` (not committed).\n"
        print(f"wrote {write_section('Issue 15', 'Collisionless id table', body)}")


def _int_keys(d: dict) -> dict:
    return {int(k) if k.isdigit() else k: v for k, v in d.items()}


if __name__ == "__main__":
    main()
