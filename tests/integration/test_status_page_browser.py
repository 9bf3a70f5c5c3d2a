"""The status page in a real browser: headless Chromium loads the page of a loop that ran.

The registry comes from the trainer itself (a producer lands shards, some corrupt; two Ray
Train workers train window after window on the session's local Ray; the gate judges each
version on the next window). If the gate let every version through, the pending version is
judged once more by the real gate (`Promoter.consider`) on a freshly landed shard, with a
``min_rows`` that shard cannot meet, so the page always has a rejection to show. Chromium
(Debian's, `cluster/browser/install.sh`) dumps the DOM as it rendered it and takes a
screenshot; the test reads what a person would see there.
"""

from __future__ import annotations

import html
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from freshrank.events.landing import LandingZone
from freshrank.events.produce import ProducerConfig, run_producer
from freshrank.events.schema import drop_invalid_rows
from freshrank.features.encode import encode
from freshrank.learn import TrainConfig, run_training
from freshrank.ops.ui import start_status_page
from freshrank.registry import Registry
from freshrank.registry.checkpoint import load_serving_model
from freshrank.registry.promotion import GateConfig, Promoter

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium")
BROWSER_TIMEOUT_S = 90
SHARDS = 8


def chromium(url: str, profile: Path, *extra: str) -> str:
    """Run headless Chromium on ``url``; returns its stdout (the DOM with ``--dump-dom``)."""
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *extra,
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def text_of(fragment: str) -> str:
    """What a person reads in a piece of DOM: tags dropped, entities decoded, spaces collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed: bash cluster/browser/install.sh (as root), or "
    "apt-get install -y chromium fonts-liberation",
)
def test_a_browser_shows_the_loop(ray_local, tmp_path):
    landing, registry_dir = tmp_path / "landing", tmp_path / "registry"
    run_producer(
        ProducerConfig(
            landing_path=str(landing),
            events_per_second=1e9,
            shard_events=1000,
            max_shards=SHARDS,
            bad_shard_every=4,
            null_row_fraction=0.01,
        )
    )
    run_training(
        TrainConfig(
            landing=str(landing),
            registry=str(registry_dir),
            num_workers=2,
            max_shards_per_window=1,
            replay_capacity=500,
            gate_min_rows=100,
        )
    )
    registry = Registry(registry_dir)
    zone = LandingZone(landing)
    assert len(zone.quarantined()) == SHARDS // 4

    rejected = [e for e in registry.promotions() if e["kind"] == "rejected"]
    if not rejected:  # the gate promoted every version: judge the pending one on a fresh shard
        pending = registry.trainer_status()["pending"]
        run_producer(
            ProducerConfig(
                landing_path=str(landing),
                events_per_second=1e9,
                shard_events=500,
                max_shards=1,
            )
        )
        shard = zone.list_shards()[-1]
        table, _ = drop_invalid_rows(pq.read_table(shard.path))
        features = load_serving_model(registry, pending).model.config.features
        rows = encode(table, features)
        gate = Promoter(registry, GateConfig(min_rows=len(rows["label"]) + 1))
        assert gate.consider(pending, rows).outcome.value == "rejected"
        rejected = [e for e in registry.promotions() if e["kind"] == "rejected"]
    changes = [e for e in registry.promotions() if e["kind"] in ("promoted", "rolled_back")]
    if len(changes) < 2:  # the gate kept its first champion: promote one by hand, as an
        # operator would (`freshrank registry promote`), so the chart has two changes to draw
        other = [v for v in registry.list_versions() if v != registry.champion_version()]
        registry.set_champion(other[-1], reason="promoted by hand")
        changes = [e for e in registry.promotions() if e["kind"] in ("promoted", "rolled_back")]
    champion = registry.champion_version()
    assert champion is not None and len(changes) >= 2

    with start_status_page(str(registry_dir), str(landing), ray_local.metrics_url, port=0) as page:
        dom = chromium(page.url + "/", tmp_path / "profile", "--dump-dom")
        shot = tmp_path / "status-page.png"
        chromium(
            page.url + "/",
            tmp_path / "profile",
            f"--screenshot={shot}",
            "--window-size=1280,2000",
        )

    # The champion's number, in its card.
    card = re.search(r'<div class="card" id="champion">.*?</div></div>', dom, flags=re.S)
    assert card and text_of(card.group(0)).startswith(f"champion v{champion} promoted")
    # One point per champion change on the freshness chart.
    fresh = re.search(r'<svg id="chart-freshness".*?</svg>', dom, flags=re.S).group(0)
    assert fresh.count('data-series="promoted"') == len(changes)
    # Per-window AUC, one point per version the registry keeps.
    quality = re.search(r'<svg id="chart-quality".*?</svg>', dom, flags=re.S).group(0)
    assert quality.count('data-series="auc"') == len(registry.list_versions())
    # The rejected version with the gate's reason, as the timeline shows it.
    rows = [text_of(r) for r in re.findall(r'<tr class="ev-rejected">.*?</tr>', dom, flags=re.S)]
    last = rejected[-1]
    expected = f"rejected v{last['to_version']} (from v{last['from_version']})"
    assert any(expected in r and " ".join(last["reason"].split()) in r for r in rows), rows
    # The quarantined shards with their reasons.
    quarantine = text_of(re.search(r'<table id="quarantine">.*?</table>', dom, flags=re.S)[0])
    for name, reason in zone.quarantined():
        assert name in quarantine and " ".join(reason.split()) in quarantine

    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (1280, 2000)
    assert len(data) > 60_000, len(data)  # charts and tables, not a blank page
