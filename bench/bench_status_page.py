"""The status page against the size of the registry: load time and bytes for 100 and 1,000
versions.

Run: ``python bench/bench_status_page.py [--versions 100,1000] [--gets 5]``.

Each registry is built through the registry's own API, as the trainer writes it: one
``save_checkpoint`` per window (a trainer-shaped manifest: shards, landing times, watermark,
window metrics, timings, drift alarms; and the same real ``drift.npz`` the trainer writes, a
`DriftMonitor`'s state after simulated windows), each version after the first judged by the
real gate (`Promoter.decide`, logging promoted or rejected with its reasons and metrics), and
a landing zone with 20 quarantined shards. The weights are a one-element tensor: the page never
reads ``model.pt``/``optimizer.pt`` (about 11 and 23 MB a version for the default ranker), so
the registry's on-disk size is given as built and as it would be with real weights.

Measured, over HTTP from a `start_status_page` server on 127.0.0.1: the median and max of
``--gets`` GETs of ``/`` and of ``/status.json`` (every GET reads the registry afresh: manifests
of the newest ``PageConfig.history`` versions, the promotion log, one drift.npz, the
quarantine), and the bytes of each answer. Prints a table; nothing is written.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from freshrank.core import NullTelemetry
from freshrank.core.serialization import npz_bytes
from freshrank.drift import DriftMonitor, DriftThresholds
from freshrank.events.landing import LandingZone
from freshrank.events.simulator import Simulator, SimulatorConfig
from freshrank.features.encode import FeatureConfig, encode
from freshrank.model.config import RankerConfig
from freshrank.ops.page import PageConfig
from freshrank.ops.ui import start_status_page
from freshrank.registry.checkpoint import DRIFT_FILE, save_checkpoint
from freshrank.registry.promotion import Promoter
from freshrank.registry.store import Registry

REAL_WEIGHTS_BYTES = 11_291_248 + 22_585_802
"""model.pt + optimizer.pt of one version of the default ranker (a trainer run's files)."""


def drift_state() -> bytes:
    """A trainer's drift.npz: the monitor after six simulated windows of 200 requests."""
    sim = Simulator(SimulatorConfig(seed=1, n_users=300))
    monitor = DriftMonitor(thresholds=DriftThresholds(min_rows=1500, warmup_windows=2))
    for _ in range(6):
        window = monitor.sketch(encode(sim.generate(200), FeatureConfig()))
        monitor.check(window)
        monitor.absorb(window)
    return npz_bytes(monitor.state_dict(), compressed=True)


def build(root: Path, versions: int, drift: bytes, seed: int = 0) -> tuple[Registry, LandingZone]:
    """A registry of ``versions`` versions, each judged by the gate, and a landing zone."""
    rng = np.random.default_rng(seed)
    registry = Registry(root / "registry")
    gate = Promoter(registry, metrics=NullTelemetry())
    champion_auc, now = 0.70, time.time()
    for i in range(1, versions + 1):
        auc = float(np.clip(champion_auc + rng.normal(0.0, 0.01), 0.5, 0.95))
        manifest = {
            "parent": i - 1 or None,
            "cursor": 2 * i,
            "shards": [2 * i - 1, 2 * i],
            "shard_landed_at": {str(2 * i - 1): now - 8.0, str(2 * i): now - 6.0},
            "quarantined": [],
            "rows_dropped": 10,
            "window_events": 1980,
            "events_trained": 1980 * i,
            "window_index": i,
            "watermark": now - 10.0,
            "metrics": {
                "loss": 0.4,
                "eval_auc": auc,
                "eval_logloss": 0.4,
                "eval_ctr": 0.1,
                "eval_gauc": auc - 0.08,
                "eval_ndcg10": 0.3,
            },
            "timings": {"read_s": 0.1, "eval_s": 0.02, "drift_s": 0.01, "train_s": 1.0},
            "stage_times": {"read_at": now - 5.0, "trained_at": now - 3.0},
            "drift_alarms": ["user_category/surprise"] if i % 25 == 0 else [],
            "world_size": 2,
            "trained_at": now - 3.0,
        }
        info = save_checkpoint(
            registry,
            RankerConfig(),
            {"w": torch.zeros(1)},
            None,
            {},
            manifest,
            extra_files={DRIFT_FILE: drift},
        )
        champion = registry.champion_version()
        new = {"rows": 1980.0, "auc": auc, "logloss": 0.4}
        old = None if champion is None else {"rows": 1980.0, "auc": champion_auc, "logloss": 0.4}
        if gate.decide(info.version, new, old, champion).outcome.value == "promoted":
            champion_auc = auc
    zone = LandingZone(root / "landing")
    for seq in range(1, 21):
        zone.quarantine(zone.write_raw(b"not parquet", seq=seq), "not readable as parquet")
    return registry, zone


def disk_bytes(path: Path) -> int:
    """Bytes of every file under ``path``."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def measure(url: str, gets: int) -> tuple[float, float, float, int]:
    """Median and max wall seconds of ``gets`` GETs of ``url`` (after one warm-up), the median
    CPU seconds of this process per GET (server and client both run here: a figure a busy
    machine disturbs less than the wall time), and the answer's bytes."""
    times, cpu, size = [], [], 0
    with httpx.Client(timeout=60) as http:
        http.get(url).raise_for_status()
        for _ in range(gets):
            t0, c0 = time.perf_counter(), time.process_time()
            response = http.get(url)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            response.raise_for_status()
            size = len(response.content)
    return statistics.median(times), max(times), statistics.median(cpu), size


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms"


def main(argv: list[str] | None = None) -> int:
    """Build each registry, serve its page, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", default="100,1000", help="registry sizes, comma-separated")
    parser.add_argument("--gets", type=int, default=5, help="timed GETs per endpoint")
    args = parser.parse_args(argv)
    sizes = [int(v) for v in args.versions.split(",")]
    if any(n < 1 for n in sizes) or args.gets < 1:
        parser.error("--versions and --gets must be positive")
    drift = drift_state()
    history = PageConfig().history
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            registry, zone = build(Path(tmp), n, drift)
            built_s = time.perf_counter() - t0
            on_disk = disk_bytes(registry.root)
            log_bytes = os.path.getsize(registry.root / "promotions.jsonl")
            kinds = [e["kind"] for e in registry.promotions()]
            with start_status_page(str(registry.root), str(zone.root), None, port=0) as page:
                page_figures = measure(page.url + "/", args.gets)
                json_figures = measure(page.url + "/status.json", args.gets)
            rows.append(
                (
                    n,
                    kinds.count("promoted"),
                    kinds.count("rejected"),
                    on_disk,
                    on_disk + n * REAL_WEIGHTS_BYTES,
                    log_bytes,
                    *page_figures,
                    *json_figures,
                    built_s,
                )
            )
    print(
        f"status page: {args.gets} GETs each (median / max), page history {history} versions; "
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    print(
        "| versions | promoted / rejected | registry on disk (as built; with real weights) "
        "| promotion log | GET / wall (max), CPU | page bytes | GET /status.json wall (max), CPU "
        "| JSON bytes | build |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r[0]:,} | {r[1]} / {r[2]} | {r[3] / 1e6:.1f} MB; {r[4] / 1e9:.1f} GB "
            f"| {r[5] / 1e3:.0f} kB | {_ms(r[6])} ({_ms(r[7])}), {_ms(r[8])} | {r[9] / 1e3:.0f} kB "
            f"| {_ms(r[10])} ({_ms(r[11])}), {_ms(r[12])} | {r[13] / 1e3:.0f} kB | {r[14]:.0f} s |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
