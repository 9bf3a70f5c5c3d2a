"""The demo: the whole loop on a local Ray, from simulated shards to a hot-swapped endpoint.

It starts a local Ray (dashboard and metrics on 127.0.0.1), lands simulated event shards (with a
few corrupt shards and rows missing fields, to show quarantine), trains incrementally in one
long-lived Ray Train job, promotes each finished window, serves the champion through Ray Serve
over HTTP while a client sends real ranking requests, and prints a summary.

What the terminal shows is the loop's own story (`freshrank.ops.progress`): shards landing and
quarantined, versions trained, the gate's decisions, what each replica serves, freshness and
request counts, with one status line redrawn in place. What Ray's workers, actors and
controllers print stays in Ray's log files, and Ray's own driver lines go to ``ray-driver.log``
in the run directory; the summary names both. ``--verbose`` shows them on the terminal too.
"""

from __future__ import annotations

import io
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from freshrank.events.landing import LandingZone
from freshrank.events.produce import ProducerConfig, ProducerStats, run_producer
from freshrank.events.simulator import Simulator, SimulatorConfig
from freshrank.learn.config import TrainConfig
from freshrank.learn.train import TrainSummary, run_training
from freshrank.ops.progress import LoopCounts, LoopProgress, ProgressConfig
from freshrank.ops.runtime import (
    SERVE_INGRESS_MODES,
    ServeIngress,
    auth_token_path,
    current_metrics_url,
    init_ray,
    ray_logs_dir,
    route_ray_driver_logs,
)
from freshrank.ops.scrape import scrape_freshrank_metrics
from freshrank.ops.ui import start_status_page
from freshrank.registry.store import Registry
from freshrank.serving.client import RankingClient


@dataclass(frozen=True)
class DemoConfig:
    """Options of the demo run (each is also a ``--flag`` of ``freshrank demo``)."""

    workdir: str = ".freshrank/demo"
    """A fresh run directory (landing/ and registry/) is made under this one."""
    duration_s: float = 150.0
    """How long the producer lands events."""
    events_per_second: float = 2_000.0
    shard_events: int = 2_000
    bad_shard_every: int = 10
    """Land a corrupt shard after every k good ones (0: never)."""
    null_row_fraction: float = 0.002
    """Fraction of rows per shard with a required field missing (dropped and counted)."""
    num_workers: int = 2
    num_replicas: int = 2
    request_rate: float = 20.0
    """Ranking requests per second sent by the demo's HTTP client."""
    http_port: int = 8000
    dashboard_port: int = 8265
    status_port: int = 8266
    """The status page (freshrank ui) on 127.0.0.1; 0 picks a free port."""
    num_cpus: int = 8
    """Logical CPUs given to the local Ray (more than the cores, so everything can be placed)."""
    seed: int = 0
    address: str | None = None
    """Connect to this Ray cluster instead of starting a local one."""
    serve_ingress: ServeIngress = "proxy"
    """How requests reach the Serve replicas: Serve's Python proxy, or HAProxy forwarding
    straight to the replicas (Ray's high-throughput mode; docs/operating.md). Applies to the
    local Ray the demo starts; a joined cluster keeps the ingress it was started with."""
    verbose: bool = False
    """Also print what Ray's workers, controllers and driver log (kept in Ray's log files and
    the run directory's ray-driver.log otherwise)."""

    def __post_init__(self) -> None:
        if self.duration_s <= 0:
            raise ValueError(f"duration_s must be > 0, got {self.duration_s}")
        if not 0 < self.request_rate <= 500:
            raise ValueError(f"request_rate must be in (0, 500], got {self.request_rate}")
        if self.num_workers < 1 or self.num_replicas < 1:
            raise ValueError("num_workers and num_replicas must be >= 1")
        if self.serve_ingress not in SERVE_INGRESS_MODES:
            raise ValueError(
                f"serve_ingress must be one of {SERVE_INGRESS_MODES}, got {self.serve_ingress!r}"
            )


@dataclass
class ClientStats:
    """What the demo's HTTP client saw."""

    ok: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    first_seen: dict[int, float] = field(default_factory=dict)
    """Model version -> wall time of the first response it served."""
    latencies_s: list[float] = field(default_factory=list)

    @property
    def versions_served(self) -> list[int]:
        """Distinct versions that answered, in version order."""
        return sorted(self.first_seen)


@dataclass(frozen=True)
class DemoResult:
    """The figures the demo prints (and the end-to-end test asserts)."""

    run_dir: str
    producer: ProducerStats
    training: TrainSummary
    client: ClientStats
    quarantined_shards: int
    rows_dropped: int
    champion: int | None
    landing_to_served_s: list[float]
    freshness_s: float | None
    window_auc: list[tuple[int, float | None]]
    window_gauc: list[tuple[int, float | None]]
    drift_alarms: list[str]
    """Versions whose window raised a drift alarm, with the features and statistics."""
    promotions: list[dict[str, Any]]
    """The registry's promotion log: every promotion, rejection and rollback."""
    metrics_seen: dict[str, float]
    """Last value of each ``freshrank_`` series read back from Ray's Prometheus endpoint."""
    metrics_url: str | None
    endpoint: str
    dashboard: str | None
    elapsed_s: float
    counts: LoopCounts | None = None
    """Versions trained / kept, gate decisions and shards, as the progress display counted."""
    ray_logs: str | None = None
    """Ray's log directory of the session (the workers' and controllers' output)."""
    driver_log: str | None = None
    """Where Ray's own lines in the demo's process went (None: on the terminal)."""
    status_page: str | None = None
    """The status page's URL (freshrank ui, served by the demo while it ran)."""


def run_demo(config: DemoConfig, out: Callable[[str], None] | None = None) -> DemoResult:
    """Run the whole loop once and return its figures; shuts Ray down when it started it.

    ``out`` receives the progress and summary lines (default: printed and flushed at once).
    """
    out = out or _say
    import ray
    from ray import serve

    from freshrank.serving.app import RankingAppConfig, build_ranking_app

    started = time.time()
    run_dir = Path(config.workdir) / datetime.now(UTC).strftime("run-%Y%m%dT%H%M%SZ")
    landing_dir, registry_dir = run_dir / "landing", run_dir / "registry"
    landing_dir.mkdir(parents=True, exist_ok=True)
    registry = Registry(registry_dir)
    out(f"freshrank demo: run directory {run_dir}")
    driver_log = None if config.verbose else route_ray_driver_logs(run_dir / "ray-driver.log")

    started_ray = not ray.is_initialized()
    if started_ray:
        out(f"starting a local Ray (dashboard on 127.0.0.1, {config.serve_ingress} ingress) ...")
        if config.serve_ingress == "haproxy" and not config.address:
            # Behind HAProxy a stopping replica keeps serving for Serve's direct-ingress drain
            # period (30 s) so load balancers can let go of it; the demo stops everything at
            # once at its end and need not wait that long.
            os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2")
        info = init_ray(
            config.address,
            config.num_cpus,
            config.dashboard_port,
            serve_ingress=config.serve_ingress,
            log_to_driver=config.verbose,
        )
        dashboard = info.dashboard_url
    else:
        dashboard = None
    metrics_url = current_metrics_url()
    metrics_seen: dict[str, float] = {}
    phase = ["starting"]
    client = ClientStats()

    def extra() -> str:
        if phase[0] != "running":
            return phase[0]
        return f"requests {client.ok} ok, {client.failed} failed"

    progress = LoopProgress(
        ProgressConfig(
            registry=str(registry_dir),
            landing=str(landing_dir),
            metrics_url=metrics_url,
            interval_s=1.0,
        ),
        out=sys.stdout if out is _say else _LineSink(out),
        extra=extra,
        clock=time.time,
    )

    def status() -> None:
        if metrics_url:  # keep what Prometheus would scrape while the processes are alive
            # Ray's agent can take seconds to answer on a loaded machine; Prometheus waits 10 s.
            metrics_seen.update(scrape_freshrank_metrics(metrics_url, timeout_s=10.0))

    endpoint = f"http://127.0.0.1:{config.http_port}"
    stop = threading.Event()
    client_stop = threading.Event()
    page = start_status_page(
        str(registry_dir), str(landing_dir), metrics_url, port=config.status_port
    )
    out(
        f"status page {page.url}/ (the loop as charts), Ray dashboard {dashboard or 'n/a'} "
        "(token: `.venv/bin/ray get-auth-token`)"
    )
    try:
        progress.start()
        # 1. The endpoint first: replicas answer 503 until a version is promoted.
        phase[0] = f"starting the ranking endpoint at {endpoint}/rank"
        serve.start(http_options={"host": "127.0.0.1", "port": config.http_port})
        serve.run(
            build_ranking_app(
                RankingAppConfig(
                    registry=str(registry_dir.resolve()),
                    num_replicas=config.num_replicas,
                    access_log=False,  # one line per request would drown the progress lines
                )
            ),
            name="ranking",
            route_prefix="/",
        )
        # 2. The long-lived trainer; events start landing once it is ready to consume them.
        phase[0] = f"starting the trainer ({config.num_workers} Ray Train workers)"
        train_cfg = TrainConfig(
            landing=str(landing_dir.resolve()),
            registry=str(registry_dir.resolve()),
            num_workers=config.num_workers,
            seed=config.seed,
        )
        training: dict[str, Any] = {}
        trainer = _thread(
            "trainer", lambda: training.setdefault("summary", run_training(train_cfg))
        )
        _wait_for(
            lambda: registry.trainer_status() is not None or not trainer.is_alive(),
            timeout_s=600,
            what="the trainer to start",
            tick=status,
        )
        if not trainer.is_alive():
            raise RuntimeError("the trainer failed to start; see its log above")
        # 3. Events land at a steady rate for duration_s.
        phase[0] = (
            f"landing events for {config.duration_s:.0f} s at {config.events_per_second:.0f}/s"
        )
        producer_cfg = ProducerConfig(
            landing_path=str(landing_dir),
            events_per_second=config.events_per_second,
            shard_events=config.shard_events,
            duration_s=config.duration_s,
            simulator=SimulatorConfig(seed=config.seed),
            bad_shard_every=config.bad_shard_every,
            null_row_fraction=config.null_row_fraction,
        )
        producer_stats: dict[str, ProducerStats] = {}
        producer = _thread(
            "producer",
            lambda: producer_stats.setdefault("final", run_producer(producer_cfg, stop=stop)),
        )
        # 4. Real HTTP traffic once the first version is live.
        _wait_for(
            lambda: _served_version(endpoint) is not None or not trainer.is_alive(),
            timeout_s=config.duration_s + 300,
            what="the first promoted version to be served",
            tick=status,
        )
        phase[0] = "running"
        client_thread = _thread(
            "client",
            lambda: run_http_client(
                endpoint, config.request_rate, client_stop, client, seed=config.seed + 1
            ),
        )
        _wait_for(
            lambda: not producer.is_alive() and not trainer.is_alive(),
            timeout_s=config.duration_s + 600,
            what="the producer and the trainer to finish",
            tick=status,
        )
        if "summary" not in training or "final" not in producer_stats:
            raise RuntimeError("the trainer or the producer failed; see the log above")
        champion = registry.champion_version()
        _wait_for(
            lambda: champion in client.first_seen,
            timeout_s=60,
            what=f"version {champion} to be served",
            tick=status,
        )
        client_stop.set()
        client_thread.join(30)
        status()
        progress.stop()
        result = _summarise(
            run_dir,
            registry,
            producer_stats["final"],
            training["summary"],
            client,
            endpoint,
            dashboard,
            started,
            metrics_seen,
            metrics_url,
            progress.counts(),
            driver_log,
            page.url,
        )
        _print_summary(result, out)
        return result
    finally:
        progress.stop()
        page.close()
        stop.set()
        client_stop.set()
        try:
            serve.shutdown()
        finally:
            if started_ray:
                ray.shutdown()


def run_http_client(
    endpoint: str,
    rate: float,
    stop: threading.Event,
    stats: ClientStats,
    seed: int = 1,
    max_requests: int = 1_000_000,
    max_seconds: float = 3_600.0,
) -> ClientStats:
    """Send simulated searches to ``POST /rank`` at ``rate`` per second until ``stop`` (bounded)."""
    sim = Simulator(SimulatorConfig(seed=seed))
    deadline = time.monotonic() + max_seconds
    next_at = time.monotonic()
    with RankingClient(endpoint) as client:
        for _ in range(max_requests):
            if stop.is_set() or time.monotonic() > deadline:
                break
            t0 = time.perf_counter()
            answer = client.rank(request_from_events(sim.generate(1)))
            if answer.ok and answer.model_version is not None:
                stats.first_seen.setdefault(answer.model_version, time.time())
                stats.ok += 1
                stats.latencies_s.append(time.perf_counter() - t0)
            else:
                stats.failed += 1
                stats.errors.append(
                    answer.error if answer.status == 0 else f"{answer.status}: {answer.error}"
                )
            next_at += 1.0 / rate
            stop.wait(max(0.0, next_at - time.monotonic()))
    return stats


def request_from_events(table: Any) -> dict[str, Any]:
    """A ``/rank`` request body from one simulated search (its shown items as candidates)."""
    rows = table.to_pylist()
    first = rows[0]
    return {
        "user_id": first["user_id"],
        "query": first["query"] or "",
        "device": first["device"],
        "candidates": [
            {
                "item_id": r["item_id"],
                "category": r["category"],
                "brand": r["brand"],
                "price": r["price"],
            }
            for r in rows
        ],
    }


def _say(line: str) -> None:
    print(line, flush=True)


def _served_version(endpoint: str) -> int | None:
    """The version ``GET /healthz`` reports, None when none is loaded or it does not answer."""
    with RankingClient(endpoint, timeout_s=2.0) as client:
        return client.served_version()


def _thread(name: str, target: Callable[[], Any]) -> threading.Thread:
    def run() -> None:
        try:
            target()
        except Exception as exc:  # surfaced by the waits that follow
            print(f"[freshrank demo] {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            raise

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def _wait_for(
    condition: Callable[[], bool],
    timeout_s: float,
    what: str,
    tick: Callable[[], None],
    poll_s: float = 0.5,
) -> None:
    deadline = time.monotonic() + timeout_s
    last_tick = 0.0
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout_s:.0f} s waiting for {what}")
        if time.monotonic() - last_tick >= 5.0:
            tick()
            last_tick = time.monotonic()
        time.sleep(poll_s)


class _LineSink(io.TextIOBase):
    """A text stream that hands each complete line to ``out`` (the demo's ``out`` callback)."""

    def __init__(self, out: Callable[[str], None]) -> None:
        self._out = out
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            self._out(line.rsplit("\r\x1b[K", 1)[-1])
        return len(text)


def _summarise(
    run_dir: Path,
    registry: Registry,
    producer: ProducerStats,
    training: TrainSummary,
    client: ClientStats,
    endpoint: str,
    dashboard: str | None,
    started: float,
    metrics_seen: dict[str, float],
    metrics_url: str | None,
    counts: LoopCounts | None,
    driver_log: str | None,
    status_page: str | None,
) -> DemoResult:
    manifests = [registry.get(v).manifest for v in registry.list_versions()]
    served = sorted(client.first_seen.items())
    latencies = []
    for m in manifests:
        # a shard is live once any version that includes its training answers
        live = [t for v, t in served if v >= m["version"]]
        if not live:
            continue
        first = min(live)
        latencies.extend(first - landed for landed in m["shard_landed_at"].values())
    champion = registry.champion_version()
    watermark = registry.get(champion).manifest["watermark"] if champion else None
    landing = LandingZone(run_dir / "landing")
    return DemoResult(
        run_dir=str(run_dir),
        producer=producer,
        training=training,
        client=client,
        quarantined_shards=len(landing.quarantined()),
        rows_dropped=sum(int(m.get("rows_dropped", 0)) for m in manifests),
        champion=champion,
        landing_to_served_s=latencies,
        freshness_s=(time.time() - watermark) if watermark else None,
        window_auc=[(m["version"], m["metrics"].get("eval_auc")) for m in manifests],
        window_gauc=[(m["version"], m["metrics"].get("eval_gauc")) for m in manifests],
        drift_alarms=[
            f"v{m['version']}: {', '.join(m['drift_alarms'])}"
            for m in manifests
            if m.get("drift_alarms")
        ],
        promotions=registry.promotions(),
        metrics_seen=dict(metrics_seen),
        metrics_url=metrics_url,
        endpoint=f"{endpoint}/rank",
        dashboard=dashboard,
        elapsed_s=time.time() - started,
        counts=counts,
        ray_logs=ray_logs_dir(),
        driver_log=driver_log,
        status_page=status_page,
    )


def _print_summary(r: DemoResult, out: Callable[[str], None]) -> None:
    p = r.producer
    lat = np.array(r.landing_to_served_s) if r.landing_to_served_s else None
    out("")
    out("=== freshrank demo summary ===")
    out(f"run directory            {r.run_dir}")
    out(
        f"events produced          {p.events_written} in {p.shards_written} shards "
        f"(+{p.bad_shards_written} corrupt shards)"
    )
    out(f"valid events landed      {p.valid_events}")
    out(f"events trained           {r.training.events_trained}")
    out(f"shards quarantined       {r.quarantined_shards}")
    out(f"rows dropped (missing)   {r.rows_dropped}")
    kept, trained = len(r.training.versions), r.training.versions_trained
    pruned = f" ({trained - kept} older ones pruned by retention)" if trained > kept else ""
    out(
        f"versions                 {trained} trained, {kept} kept in the registry{pruned}; "
        f"champion v{r.champion}"
    )
    kinds = [e["kind"] for e in r.promotions]
    out(
        f"promotion gate           {kinds.count('promoted')} promoted, "
        f"{kinds.count('rejected')} rejected, {kinds.count('rollback')} rolled back "
        "(see `freshrank registry log`)"
    )
    out(f"versions served          {r.client.versions_served}")
    out(f"requests                 ok {r.client.ok}, failed {r.client.failed}")
    if r.client.latencies_s:
        q = np.percentile(np.array(r.client.latencies_s) * 1000, [50, 99])
        out(f"request latency          p50 {q[0]:.1f} ms, p99 {q[1]:.1f} ms")
    if lat is not None:
        q = np.percentile(lat, [50, 99])
        out(f"shard landed -> served   p50 {q[0]:.1f} s, p99 {q[1]:.1f} s (n={len(lat)})")
    if r.freshness_s is not None:
        out(f"freshness at the end     {r.freshness_s:.1f} s (now - served watermark)")
    aucs = ", ".join(f"v{v}:{a:.3f}" if a is not None else f"v{v}:n/a" for v, a in r.window_auc)
    out(f"window AUC (prequential) {aucs}")
    gaucs = [(v, g) for v, g in r.window_gauc if g is not None]
    if gaucs:
        out(f"window GAUC (last 5)     {', '.join(f'v{v}:{g:.3f}' for v, g in gaucs[-5:])}")
    if r.drift_alarms:
        out(f"drift alarms             {'; '.join(r.drift_alarms[-5:])}")
    shown = ("events_trained_total", "window_auc", "served_model_version", "freshness_seconds")
    seen = [
        f"{k}={r.metrics_seen['freshrank_' + k]:.4g}"
        for k in shown
        if "freshrank_" + k in r.metrics_seen
    ]
    out(f"metrics (Prometheus)     {', '.join(seen) or 'none read'} from {r.metrics_url}")
    out(f"endpoint                 {r.endpoint}")
    if r.status_page:
        out(
            f"status page              {r.status_page}/ (served while the demo ran; afterwards "
            f"`freshrank ui --registry {r.run_dir}/registry --landing {r.run_dir}/landing`)"
        )
    if r.dashboard:
        out(
            f"Ray dashboard            {r.dashboard} (it asks for the cluster token: "
            f"`.venv/bin/ray get-auth-token`, or the file {auth_token_path()})"
        )
    else:
        out("Ray dashboard            not started here (the joined cluster's)")
    if r.ray_logs:
        out(f"Ray's logs               {r.ray_logs} (workers, Serve, Train, Data)")
    if r.driver_log:
        out(f"Ray's driver lines       {r.driver_log} (--verbose prints them instead)")
    out(f"elapsed                  {r.elapsed_s:.1f} s")
