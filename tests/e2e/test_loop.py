"""The whole loop on the session's local Ray: shards land, two workers train window after window,
versions are promoted and hot-swapped into the Serve endpoint while real HTTP requests flow, and
a real Prometheus scraping Ray's metrics endpoint serves the loop's freshrank_ series. Then the
status page of that same run in a real browser (headless Chromium)."""

import html
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from freshrank.apps.demo import DemoConfig, DemoResult, run_demo
from freshrank.events.landing import LandingZone
from freshrank.events.produce import ProducerConfig, run_producer
from freshrank.events.schema import drop_invalid_rows
from freshrank.features.encode import encode
from freshrank.ops.runtime import free_port
from freshrank.ops.ui import start_status_page
from freshrank.registry import Registry
from freshrank.registry.checkpoint import load_serving_model
from freshrank.registry.promotion import GateConfig, Promoter

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium")
BROWSER_TIMEOUT_S = 90


@dataclass(frozen=True)
class Loop:
    result: DemoResult
    lines: list[str]
    landed_before: float


def _total(prometheus, name: str) -> float | None:
    return prometheus.scalar(f"sum(max_over_time({name}[10m]))")


@pytest.fixture(scope="module")
def loop(ray_local, module_prometheus, tmp_path_factory) -> Loop:
    """One demo-sized run of the loop (the module's tests read it)."""
    lines: list[str] = []
    # Earlier tests in this process may have landed events: count from here.
    landed_before = _total(module_prometheus, "freshrank_events_landed_total") or 0.0
    result = run_demo(
        DemoConfig(
            workdir=str(tmp_path_factory.mktemp("loop")),
            duration_s=25,
            events_per_second=2000,
            shard_events=1000,
            bad_shard_every=6,
            null_row_fraction=0.004,
            request_rate=15,
            http_port=free_port(),
            status_port=0,
        ),
        out=lines.append,
    )
    return Loop(result, lines, landed_before)


def test_whole_loop_trains_every_valid_event_and_swaps_without_failures(loop, module_prometheus):
    result, lines, landed_before = loop.result, loop.lines, loop.landed_before
    prometheus = module_prometheus

    def total(name: str) -> float | None:
        return _total(prometheus, name)

    producer = result.producer
    assert producer.shards_written >= 20 and producer.bad_shards_written >= 3
    # Nothing lost, nothing twice: every valid landed event is trained exactly once.
    assert result.training.events_trained == producer.valid_events
    assert result.quarantined_shards == producer.bad_shards_written
    assert result.rows_dropped == producer.null_rows_written
    registry = Registry(f"{result.run_dir}/registry")
    shards = [s for v in registry.list_versions() for s in registry.get(v).manifest["shards"]]
    assert len(shards) == len(set(shards)) == producer.shards_written
    # Several versions were swapped in while requests flowed, and none failed.
    assert len(result.client.versions_served) >= 2
    assert result.client.failed == 0, result.client.errors[:5]
    assert result.client.ok > 50
    assert result.champion == max(result.client.versions_served)
    assert result.landing_to_served_s and min(result.landing_to_served_s) > 0
    assert any("demo summary" in line for line in lines)
    assert result.status_page and any(f"status page {result.status_page}/" in x for x in lines)
    # The output tells the loop's story, in freshrank's own lines: a line per version trained
    # and per gate decision, and a summary that says what its counts count.
    trained = [line for line in lines if re.search(r"\] v\d+ trained: window \d+", line)]
    decided = [line for line in lines if "] gate: v" in line]
    assert len(trained) == result.training.versions_trained >= 2
    assert result.counts is not None
    assert result.counts.versions_trained == result.training.versions_trained
    assert len(decided) == result.counts.promoted + result.counts.rejected >= 1
    assert any(
        f"versions                 {result.training.versions_trained} trained, "
        f"{len(result.training.versions)} kept" in line
        for line in lines
    )
    # Read back from Ray's Prometheus endpoint while the loop ran: the replicas' series (they
    # live on). The trainer's series are checked through Prometheus below: Ray's metrics agent
    # may export a short-lived worker's series late on a loaded machine, and drops them once
    # the worker exits, while Prometheus keeps what it scraped.
    m = result.metrics_seen
    assert 1 <= m["freshrank_served_model_version"] <= result.champion
    assert 0.0 < m["freshrank_freshness_seconds"] < 600
    assert m["freshrank_requests_total"] >= 1

    # The same loop through a real Prometheus (the shipped relabel rule drops Ray's prefix).
    # Series of processes that ended (trainer workers) stay queryable over a range.
    expected = landed_before + producer.events_written
    landed = prometheus.wait(
        lambda: total("freshrank_events_landed_total") == expected or None,
        f"{expected:.0f} landed events counted in Prometheus (last {landed_before:.0f} before)",
    )
    assert landed
    trained = prometheus.wait(
        lambda: total("freshrank_events_trained_total") or None, "trained events in Prometheus"
    )
    assert trained > 0
    auc = prometheus.scalar("max(max_over_time(freshrank_window_auc[10m]))")
    assert auc is not None and 0.0 < auc < 1.0
    trainer_version = prometheus.scalar("max(max_over_time(freshrank_trainer_model_version[10m]))")
    assert trainer_version is not None and trainer_version >= 1
    stages = prometheus.query(
        "sum by (stage) (max_over_time(freshrank_stage_latency_seconds_count[10m]))"
    )
    counts = {s["metric"]["stage"]: float(s["value"][1]) for s in stages}
    for stage in ("landed_to_read", "read_to_trained", "trained_to_checkpointed"):
        assert counts.get(stage, 0) >= 1, counts
    assert counts.get("checkpointed_to_promoted", 0) >= 1, counts
    promoted = prometheus.scalar(
        'sum(max_over_time(freshrank_promotions_total{outcome="promoted"}[10m]))'
    )
    assert promoted is not None and promoted >= 1
    features = prometheus.query("max by (feature) (max_over_time(freshrank_drift_js[10m]))")
    assert {s["metric"]["feature"] for s in features} == {
        "category",
        "brand",
        "device",
        "query",
        "item",
    }
    assert prometheus.query('freshrank_score_psi{source="trainer"}[10m]')
    gauc = prometheus.scalar("max(max_over_time(freshrank_window_gauc[10m]))")
    assert gauc is not None and 0.0 < gauc <= 1.0
    ok = prometheus.scalar('sum(max_over_time(freshrank_requests_total{status="ok"}[10m]))')
    assert ok is not None and ok >= 1


# ------------------------------------------------------------------ the run's page in a browser


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
def test_a_browser_shows_the_loop(loop, ray_local, tmp_path):
    """Headless Chromium loads the status page of the loop above (two Ray Train workers, corrupt
    shards, the gate judging each version) and the test reads what a person would see. If the
    gate let every version through, the pending version is judged once more by the real gate
    (``Promoter.consider``) on a freshly landed shard with a ``min_rows`` that shard cannot meet,
    so the page always has a rejection to show; if the gate kept its first champion, one version
    is promoted by hand, so the freshness chart has two changes to draw."""
    run_dir = Path(loop.result.run_dir)
    landing, registry_dir = run_dir / "landing", run_dir / "registry"
    registry = Registry(registry_dir)
    zone = LandingZone(landing)
    assert len(zone.quarantined()) == loop.result.producer.bad_shards_written >= 1

    rejected = [e for e in registry.promotions() if e["kind"] == "rejected"]
    if not rejected:
        pending = registry.trainer_status().get("pending") or registry.latest_version()
        run_producer(
            ProducerConfig(
                landing_path=str(landing), events_per_second=1e9, shard_events=500, max_shards=1
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
    if len(changes) < 2:
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
