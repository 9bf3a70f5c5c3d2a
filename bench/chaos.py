"""Chaos: the whole loop under faults, one at a time, with requests and events flowing.

Modelled on Ray's ``serve_workloads`` chaos test (a pinger that sends requests the whole time, a
reaper that kills) and ``release/nightly_tests/setup_chaos.py`` (a scheduler that injects one
fault at a time): a local Ray (``init_ray``), the ranking app (``build_ranking_app``, 2
replicas), the trainer as its own process (``freshrank train --address 127.0.0.1:PORT``, so a
driver SIGKILL is a real one; a supervisor restarts it, as a job retry would), a producer
landing simulated shards, and an open-loop pinger (``bench/loadgen.py``). A scheduler then
injects each fault, waits for the loop to heal (or a timeout), restores what the fault broke,
and lets the loop settle before the next one. At the end the producer stops, the trainer
drains, and the events are counted.

Per fault: requests sent and failed (by status) while it lasted, seconds to heal (from the
injection to the start of the last run of only-200 answers lasting ``heal_window_s`` and,
for trainer and data faults, to the first version published after the injection, whichever is
later), and what the fault's own check said. Over the run: events lost and
duplicated, counted by event id (``U`` = distinct event ids among the valid rows of every
landed shard that was not quarantined, less the rows the platform refused *and counted*, e.g.
out of time or duplicate; ``T`` = rows trained, the newest manifest's ``events_trained``;
lost = max(0, U - T), duplicated = max(0, T - U)).

The registry lives on a small tmpfs when this process may mount one (root on Linux), so the
full-disk and read-only faults are real; otherwise they are skipped with the reason.

Run it: ``python bench/chaos.py`` (all faults, the long form) or ``--faults replica-kill,...``;
``--markdown FILE`` writes the table. ``tests/e2e/test_chaos.py`` runs a bounded form.
This harness only drives the platform from outside (HTTP, files, signals), so it measures any
commit: ``PYTHONPATH=<old checkout>/platform python bench/chaos.py`` gives the "before".
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from loadgen import LoadConfig, LoadGenerator, Sample

REFUSED_COUNT_KEYS = ("rows_out_of_time", "rows_duplicate")
PINGER_CONCURRENCY = 4
"""Requests the pinger keeps in flight at most: a killed replica can take no more with it."""
"""Manifest keys of rows the trainer refused with a counted reason (not lost, not trained)."""


@dataclass(frozen=True)
class ChaosConfig:
    """One chaos run."""

    workdir: str
    faults: tuple[str, ...] = ()
    """Fault names in order (empty: every fault in `FAULTS`)."""
    request_rate: float = 20.0
    events_per_second: float = 1000.0
    shard_events: int = 1000
    num_replicas: int = 2
    num_workers: int = 2
    settle_s: float = 6.0
    """Quiet time between faults (requests keep flowing)."""
    hold_s: float = 8.0
    """How long a fault that is undone by hand (a corrupt file, a full disk) is held."""
    heal_window_s: float = 3.0
    fault_timeout_s: float = 90.0
    """A fault that has not healed by then is reported as not healed."""
    registry_tmpfs_mb: int = 1536
    """Size of the registry's tmpfs (0: a plain directory; disk faults are then skipped)."""
    keep_versions: int = 20
    """The trainer's retention (a version is ~44 MB: weights, optimizer, replay)."""
    max_seconds: float = 1800.0
    """Bound on the whole run (the pinger stops then at the latest)."""

    def __post_init__(self) -> None:
        unknown = [f for f in self.faults if f not in FAULTS]
        if unknown:
            raise ValueError(f"unknown faults {unknown}; known: {sorted(FAULTS)}")
        if not 0 < self.request_rate <= 200:
            raise ValueError(f"request_rate must be in (0, 200], got {self.request_rate}")
        if self.max_seconds <= 0 or self.fault_timeout_s <= 0:
            raise ValueError("max_seconds and fault_timeout_s must be > 0")


@dataclass
class FaultResult:
    """What one fault did."""

    name: str
    sent: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    heal_s: float | None = None
    """None: did not heal within the timeout."""
    checks: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())


@dataclass
class ChaosReport:
    """The run: per fault, then the events."""

    faults: list[FaultResult]
    events_unique: int = 0
    events_trained: int = 0
    refused_counted: int = 0
    trainer_restarts: int = 0
    final_checks: dict[str, Any] = field(default_factory=dict)

    @property
    def events_lost(self) -> int:
        return max(0, self.events_unique - self.events_trained)

    @property
    def events_duplicated(self) -> int:
        return max(0, self.events_trained - self.events_unique)


# ---------------------------------------------------------------------------------------------
# The stack under test.


class Stack:
    """Ray, the ranking app, the trainer process (supervised), the producer, the pinger."""

    def __init__(self, config: ChaosConfig) -> None:
        self.config = config
        self.root = Path(config.workdir).resolve()
        self.landing = self.root / "landing"
        self.registry = self.root / "registry"
        self.logs = self.root / "logs"
        self.tmpfs = False
        self.trainer: subprocess.Popen[bytes] | None = None
        self.trainer_restarts = 0
        self.trainer_exits: list[int] = []
        self._stopping = threading.Event()
        self._producing = threading.Event()
        self.restart_allowed = threading.Event()
        self.restart_allowed.set()
        self._threads: list[threading.Thread] = []
        self.pinger: LoadGenerator | None = None
        self.endpoint = ""
        self.gcs = ""
        self.metrics_url: str | None = None
        self.injected: dict[str, int] = Counter()

    # ----- start and stop ---------------------------------------------------------------------
    def start(self) -> None:
        from freshrank.events.landing import LandingZone
        from freshrank.ops.runtime import current_metrics_url, free_port, init_ray

        self.root.mkdir(parents=True, exist_ok=True)
        self.landing.mkdir(exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        self.registry.mkdir(exist_ok=True)
        if self.config.registry_tmpfs_mb > 0:
            self.tmpfs = _mount_tmpfs(self.registry, self.config.registry_tmpfs_mb)
        self.zone = LandingZone(self.landing)
        kwargs: dict[str, Any] = {"num_cpus": 8, "dashboard_port": None}
        if "log_to_driver" in inspect.signature(init_ray).parameters:
            kwargs["log_to_driver"] = False
        info = init_ray(**kwargs)
        self.gcs = info.gcs_address
        import ray
        from ray import serve

        from freshrank.serving.app import RankingAppConfig, build_ranking_app

        self.ray, self.serve = ray, serve
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(
            build_ranking_app(
                RankingAppConfig(
                    registry=str(self.registry),
                    num_replicas=self.config.num_replicas,
                    access_log=False,
                    poll_interval_s=0.1,
                )
            ),
            name="ranking",
            route_prefix="/",
        )
        self.endpoint = f"http://127.0.0.1:{port}"
        self.metrics_url = current_metrics_url()
        self._start_trainer()
        self._thread("supervisor", self._supervise)
        self._producing.set()
        self._thread("producer", self._produce)
        _until(lambda: self.champion() is not None, 300, "a first champion")
        from freshrank.apps.demo import request_from_events
        from freshrank.events.simulator import Simulator, SimulatorConfig

        body = request_from_events(Simulator(SimulatorConfig(seed=7)).generate(1))
        _until(lambda: self._rank_ok(body), 120, "the first answered request")
        self.pinger = LoadGenerator(
            LoadConfig(
                url=self.endpoint,
                body=body,
                concurrency=PINGER_CONCURRENCY,
                rate_rps=self.config.request_rate,
                max_seconds=self.config.max_seconds,
                timeout_s=10.0,
            )
        ).start()

    def stop(self) -> None:
        self._stopping.set()
        self._producing.clear()
        if self.pinger is not None:
            self.pinger.stop()
        if self.trainer is not None and self.trainer.poll() is None:
            self.trainer.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.trainer.wait(60)
            if self.trainer.poll() is None:
                self.trainer.kill()
        with contextlib.suppress(Exception):
            self.serve.shutdown()
        with contextlib.suppress(Exception):
            self.ray.shutdown()
        if self.tmpfs:
            subprocess.run(["mount", "-o", "remount,rw", str(self.registry)], check=False)
            subprocess.run(["umount", "-l", str(self.registry)], check=False)

    def drain(self, timeout_s: float = 180.0) -> None:
        """Stop producing, mark the landing zone done, wait for the trainer to finish it."""
        self._producing.clear()
        self.zone.mark_done()
        _until(
            lambda: self.trainer is not None and self.trainer.poll() == 0,
            timeout_s,
            "the trainer to finish the landing zone",
        )

    # ----- the trainer process ------------------------------------------------------------------
    def _start_trainer(self) -> None:
        exe = Path(sys.executable).with_name("freshrank")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "freshrank.apps.cli"]
        cmd += [
            "train",
            "--address",
            self.gcs,
            "--landing",
            str(self.landing),
            "--registry",
            str(self.registry),
            "--num-workers",
            str(self.config.num_workers),
            "--keep-versions",
            str(self.config.keep_versions),
        ]
        log = open(self.logs / f"trainer-{self.trainer_restarts}.log", "wb")  # noqa: SIM115
        self.trainer = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.root)

    def _supervise(self) -> None:
        """Restart the trainer when it dies (what a job retry or systemd would do)."""
        while not self._stopping.wait(0.5):
            t = self.trainer
            if t is None or t.poll() is None:
                continue
            if t.returncode == 0 and self.zone.is_done():
                return  # finished the landing zone
            if not self.restart_allowed.is_set():
                continue
            self.trainer_exits.append(int(t.returncode))
            self.trainer_restarts += 1
            self._start_trainer()

    def kill_trainer_driver(self) -> None:
        assert self.trainer is not None
        self.trainer.send_signal(signal.SIGKILL)

    # ----- the producer ------------------------------------------------------------------------
    def _produce(self) -> None:
        from freshrank.events.simulator import Simulator, SimulatorConfig

        per_request = 10  # impressions per simulated search (the simulator's list_size)
        sim = Simulator(  # events dated from now, as the producer of the demo dates them
            SimulatorConfig(
                seed=0,
                start_time=datetime.now(UTC),
                requests_per_second=self.config.events_per_second / per_request,
            )
        )
        period = self.config.shard_events / self.config.events_per_second
        next_at = time.monotonic()
        while not self._stopping.is_set():
            if not self._producing.wait(0.2):
                continue
            table = sim.generate(max(1, self.config.shard_events // per_request))
            with contextlib.suppress(OSError):  # the landing zone is on a disk of its own
                self.zone.write_shard(table)
            next_at += period
            self._stopping.wait(max(0.0, next_at - time.monotonic()))

    # ----- reading state ---------------------------------------------------------------------
    def champion(self) -> int | None:
        from freshrank.registry.store import Registry

        try:
            return Registry(self.registry).champion_version()
        except Exception:
            return None

    def latest(self) -> int:
        from freshrank.registry.store import Registry

        try:
            return Registry(self.registry).latest_version() or 0
        except Exception:
            return 0

    def version_dir(self, version: int) -> Path:
        return self.registry / "versions" / f"v{version:06d}"

    def _rank_ok(self, body: dict[str, Any]) -> bool:
        import httpx

        try:
            return httpx.post(f"{self.endpoint}/rank", json=body, timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def replica_pids(self) -> list[int]:
        from ray.util.state import list_actors

        actors = list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
        return [
            int(a.pid) for a in actors if a.class_name.startswith("ServeReplica:ranking") and a.pid
        ]

    def train_worker_pids(self) -> list[int]:
        from ray.util.state import list_actors

        actors = list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
        return [int(a.pid) for a in actors if "RayTrainWorker" in a.class_name and a.pid]

    def freshness(self) -> list[float]:
        from freshrank.ops.scrape import scrape_series

        if not self.metrics_url:
            return []
        try:
            series = scrape_series(self.metrics_url, timeout_s=3.0)
        except Exception:
            return []
        return [s.value for s in series if s.name == "freshrank_freshness_seconds"]

    def _thread(self, name: str, target: Callable[[], None]) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)


# ---------------------------------------------------------------------------------------------
# Faults: each injects, may hold and undo, and says when the loop has healed from it.


@dataclass(frozen=True)
class Fault:
    name: str
    what: str
    run: Callable[[Stack, dict[str, Any]], None]
    """Inject (and, for faults undone by hand, hold then undo); fill checks."""
    needs_new_version: bool = False
    """Healed only once a version newer than the one at injection is published."""
    needs_tmpfs: bool = False


def _replica_kill(stack: Stack, checks: dict[str, Any]) -> None:
    pids = stack.replica_pids()
    checks["replicas"] = len(pids)
    if pids:
        checks["killed_at"] = time.monotonic()
        os.kill(pids[0], signal.SIGKILL)
        checks["killed_pid"] = pids[0]


def _kill_replica_and_wait_for_its_successor(stack: Stack, checks: dict[str, Any]) -> None:
    """SIGKILL a replica, then wait until Serve has started the one that replaces it (the
    fault is about what that new replica serves)."""
    _replica_kill(stack, checks)
    killed = checks.get("killed_pid")
    started = time.monotonic()
    _until(
        lambda: len([p for p in stack.replica_pids() if p != killed]) >= stack.config.num_replicas,
        120,
        "Serve to replace the killed replica",
    )
    checks["replaced_after_s"] = round(time.monotonic() - started, 1)


def _flip(path: Path, n: int = 16) -> bytes:
    data = bytearray(path.read_bytes())
    at = len(data) // 2
    old = bytes(data[at : at + n])
    data[at : at + n] = bytes(b ^ 0xFF for b in old)
    path.write_bytes(bytes(data))
    return old


def _hold_training(stack: Stack) -> Iterator[int]:
    """Pause the producer so the champion stays put while a serving fault is held."""
    stack._producing.clear()
    _until(lambda: _quiet(stack), 60, "the trainer to finish what has landed")
    try:
        champion = stack.champion()
        assert champion is not None
        yield champion
    finally:
        stack._producing.set()


def _quiet(stack: Stack, for_s: float = 3.0) -> bool:
    before = stack.latest()
    time.sleep(for_s)  # a window of no new version is the condition itself
    return stack.latest() == before


def _corrupt_champion_and_kill(stack: Stack, checks: dict[str, Any]) -> None:
    hold = _hold_training(stack)
    champion = next(hold)
    try:
        model = stack.version_dir(champion) / "model.pt"
        old = _flip(model)
        checks["champion"] = champion
        _kill_replica_and_wait_for_its_successor(stack, checks)
        time.sleep(stack.config.hold_s)  # the fault is held for hold_s while requests flow
        data = bytearray(model.read_bytes())
        at = len(data) // 2
        data[at : at + len(old)] = old
        model.write_bytes(bytes(data))
    finally:
        with contextlib.suppress(StopIteration):
            next(hold)


def _delete_champion_and_kill(stack: Stack, checks: dict[str, Any]) -> None:
    hold = _hold_training(stack)
    champion = next(hold)
    try:
        model = stack.version_dir(champion) / "model.pt"
        saved = model.with_name("model.pt.chaos")
        model.rename(saved)
        checks["champion"] = champion
        _kill_replica_and_wait_for_its_successor(stack, checks)
        time.sleep(stack.config.hold_s)
        saved.rename(model)
    finally:
        with contextlib.suppress(StopIteration):
            next(hold)


def _champion_pointer(content: bytes) -> Callable[[Stack, dict[str, Any]], None]:
    def run(stack: Stack, checks: dict[str, Any]) -> None:
        hold = _hold_training(stack)
        next(hold)
        pointer = stack.registry / "CHAMPION"
        try:
            old = pointer.read_bytes()
            restarts = stack.trainer_restarts
            workers = set(stack.train_worker_pids())
            tmp = pointer.with_name(".CHAMPION.chaos")
            tmp.write_bytes(content)
            tmp.replace(pointer)
            stack._producing.set()  # the trainer reads CHAMPION at its next gate
            time.sleep(stack.config.hold_s)
            current = pointer.read_bytes()
            if current == content:  # nobody promoted over it: put it back
                tmp.write_bytes(old)
                tmp.replace(pointer)
            checks["trainer_restarted"] = stack.trainer_restarts - restarts
            checks["train_workers_replaced"] = bool(workers - set(stack.train_worker_pids()))
        finally:
            with contextlib.suppress(StopIteration):
                next(hold)

    return run


def _kill_train_worker(stack: Stack, checks: dict[str, Any]) -> None:
    pids = stack.train_worker_pids()
    checks["workers"] = len(pids)
    if pids:
        os.kill(pids[-1], signal.SIGKILL)


def _kill_trainer_driver(stack: Stack, checks: dict[str, Any]) -> None:
    from freshrank.registry.store import Registry

    restarts = stack.trainer_restarts
    stack.restart_allowed.clear()  # hold the restart: what does TRAINER say meanwhile?
    killed = time.monotonic()
    stack.kill_trainer_driver()
    try:
        from freshrank.registry.control import trainer_health
    except ImportError:  # before the heartbeat: the record as written is all a reader has

        def trainer_health(record: Any) -> Any:  # noqa: ANN401
            return record

    said = None
    while time.monotonic() - killed < 40:
        record = trainer_health(Registry(stack.registry).trainer_status()) or {}
        said = record.get("state")
        if said not in ("ready", "training", "starting"):
            checks["not_live_after_s"] = round(time.monotonic() - killed, 1)
            break
        time.sleep(0.5)
    checks["trainer_state_after_kill"] = said
    stack.restart_allowed.set()
    _until(lambda: stack.trainer_restarts > restarts, 30, "the supervisor to restart it")


def _full_disk(stack: Stack, checks: dict[str, Any]) -> None:
    filler = stack.registry / ".chaos-filler"
    with open(filler, "wb") as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
    checks["free_bytes_when_full"] = shutil.disk_usage(stack.registry).free
    time.sleep(stack.config.hold_s)
    filler.unlink()
    checks["free_mb_after"] = shutil.disk_usage(stack.registry).free >> 20
    checks["promotion_log_readable"] = _log_readable(stack)


def _read_only(stack: Stack, checks: dict[str, Any]) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(stack.registry)], check=True)
    try:
        time.sleep(stack.config.hold_s)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(stack.registry)], check=True)
    checks["promotion_log_readable"] = _log_readable(stack)


def _log_readable(stack: Stack) -> bool | str:
    from freshrank.registry.store import Registry

    try:
        Registry(stack.registry).promotions()
        return True
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:120]


def _bad_shards(stack: Stack, checks: dict[str, Any]) -> None:
    from freshrank.events.simulator import Simulator, SimulatorConfig

    zone = stack.zone
    sim = Simulator(SimulatorConfig(seed=99))
    landed = zone.list_shards()  # the producer's: one of them lands a second time below
    zone.write_raw(b"PAR1 this is not parquet")
    wrong = sim.generate(50)
    idx = wrong.schema.get_field_index("clicked")
    wrong = wrong.set_column(idx, "clicked", pc.cast(wrong["clicked"], pa.int64()))
    _write_raw_table(zone, wrong)
    nulls = sim.generate(200)
    n = nulls.num_rows
    for name in ("event_id", "user_id", "item_id"):
        idx = nulls.schema.get_field_index(name)
        nulls = nulls.set_column(idx, name, pa.nulls(n, pa.string()))
    zone.write_shard(nulls)
    stack.injected["null_rows"] += n
    future = sim.generate(50)
    idx = future.schema.get_field_index("event_time")
    far = pa.array([datetime(9999, 1, 1, tzinfo=UTC)] * future.num_rows, future["event_time"].type)
    future = future.set_column(idx, "event_time", far)
    zone.write_shard(future)
    stack.injected["future_rows"] += future.num_rows
    if landed:
        again = zone.read_shard(landed[-1]).table  # the same events, landed twice
        zone.write_shard(again)
        stack.injected["duplicate_rows"] += again.num_rows
    checks["landed"] = 5


def _write_raw_table(zone: Any, table: pa.Table) -> None:
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    zone.write_raw(sink.getvalue().to_pybytes())


FAULTS: dict[str, Fault] = {
    f.name: f
    for f in (
        Fault("replica-kill", "SIGKILL one Serve replica", _replica_kill),
        Fault(
            "corrupt-champion",
            "flip 16 bytes of the champion's model.pt, SIGKILL a replica; restore after hold_s",
            _corrupt_champion_and_kill,
        ),
        Fault(
            "deleted-champion",
            "remove the champion's model.pt, SIGKILL a replica; restore after hold_s",
            _delete_champion_and_kill,
        ),
        Fault("garbage-champion", "CHAMPION holds garbage for hold_s", _champion_pointer(b"%$#")),
        Fault(
            "dangling-champion",
            "CHAMPION names a version that does not exist, for hold_s",
            _champion_pointer(b"999999\n"),
        ),
        Fault(
            "train-worker-kill",
            "SIGKILL one Ray Train worker",
            _kill_train_worker,
            needs_new_version=True,
        ),
        Fault(
            "trainer-driver-kill",
            "SIGKILL the trainer's driver process (the supervisor restarts it)",
            _kill_trainer_driver,
            needs_new_version=True,
        ),
        Fault(
            "full-disk",
            "fill the registry's filesystem for hold_s",
            _full_disk,
            needs_new_version=True,
            needs_tmpfs=True,
        ),
        Fault(
            "read-only",
            "remount the registry read-only for hold_s",
            _read_only,
            needs_new_version=True,
            needs_tmpfs=True,
        ),
        Fault(
            "bad-shards",
            "land a non-parquet shard, a wrong-schema shard, a shard of null required fields, "
            "a shard dated 9999-01-01 and a shard landed twice",
            _bad_shards,
            needs_new_version=True,
        ),
    )
}


# ---------------------------------------------------------------------------------------------
# The scheduler.


def run_chaos(config: ChaosConfig, say: Callable[[str], None] = print) -> ChaosReport:
    """Start the stack, inject each fault in turn, drain, count; always tears the stack down."""
    stack = Stack(config)
    results: list[FaultResult] = []
    report = ChaosReport(faults=results)
    try:
        stack.start()
        say(f"chaos: stack up ({stack.endpoint}); registry on tmpfs: {stack.tmpfs}")
        _wait(config.settle_s)
        for name in config.faults or tuple(FAULTS):
            fault = FAULTS[name]
            result = FaultResult(name)
            results.append(result)
            if fault.needs_tmpfs and not stack.tmpfs:
                result.skipped = "the registry is not on a tmpfs this process could mount"
                say(f"chaos: {name}: skipped ({result.skipped})")
                continue
            _inject(stack, fault, result, config)
            say(
                f"chaos: {name}: {result.sent} requests, {result.failed_total} failed "
                f"{dict(result.failed)}, heal {_secs(result.heal_s)}, {result.checks}"
            )
            _wait(config.settle_s)
        stack.drain()
        _count_events(stack, report)
        report.trainer_restarts = stack.trainer_restarts
        report.final_checks = _final_checks(stack)
    finally:
        stack.stop()
    return report


def _inject(stack: Stack, fault: Fault, result: FaultResult, config: ChaosConfig) -> None:
    assert stack.pinger is not None
    version_before = stack.latest()
    started = time.monotonic()
    fault.run(stack, result.checks)
    deadline = started + config.fault_timeout_s
    healed_at = None
    new_version_at = None
    while time.monotonic() < deadline:
        if fault.needs_new_version and stack.latest() <= version_before:
            time.sleep(0.2)
            continue
        if new_version_at is None:
            new_version_at = time.monotonic()
        samples = [s for s in stack.pinger.samples() if s.sent >= started]
        healed_at = _heal_start(samples, started, config.heal_window_s)
        if healed_at is not None and time.monotonic() - healed_at >= config.heal_window_s:
            break
        time.sleep(0.2)
    ended = time.monotonic()
    samples = [s for s in stack.pinger.samples() if started <= s.sent < ended]
    result.sent = len(samples)
    result.failed = Counter(_outcome(s) for s in samples if not s.ok)
    if healed_at is not None and ended - healed_at >= config.heal_window_s:
        result.heal_s = max(0.0, healed_at - started)
        if fault.needs_new_version and new_version_at is not None:  # the trainer is back
            result.heal_s = max(result.heal_s, new_version_at - started)
    result.checks["versions"] = f"{version_before}->{stack.latest()}"
    killed_at = result.checks.pop("killed_at", None)
    if killed_at is not None:  # when each failed request was sent, from the replica's kill
        result.checks["failed_sent_s_from_kill"] = sorted(
            round(s.sent - killed_at, 2) for s in samples if not s.ok
        )


def _heal_start(samples: list[Sample], started: float, window_s: float) -> float | None:
    """Start of the trailing run of only-ok answers (None when the last answer failed)."""
    if not samples:
        return None
    ordered = sorted(samples, key=lambda s: s.sent)
    if not ordered[-1].ok:
        return None
    last_bad = max((s.sent for s in ordered if not s.ok), default=None)
    if last_bad is None:
        return started
    after = [s.sent for s in ordered if s.sent > last_bad]
    return after[0] if after else None


def _outcome(s: Sample) -> str:
    return str(s.status) if s.status else (s.error or "error").split(":")[0]


def _count_events(stack: Stack, report: ChaosReport) -> None:
    from freshrank.registry.store import Registry

    zone = stack.zone
    ids: set[str] = set()
    for ref in zone.list_shards():
        try:
            table = zone.read_shard(ref).table
        except Exception:
            continue  # quarantined on read
        ids.update(str(v) for v in table["event_id"].to_pylist())
    registry = Registry(stack.registry)
    latest = registry.latest_version()
    trained = int(registry.get(latest).manifest["events_trained"]) if latest else 0  # cumulative
    out_of_time = refused = 0
    for version in registry.list_versions():  # the faults that refuse rows come last: kept
        manifest = registry.get(version).manifest
        out_of_time += int(manifest.get(REFUSED_COUNT_KEYS[0]) or 0)
        refused += sum(int(manifest.get(k) or 0) for k in REFUSED_COUNT_KEYS)
    # Rows refused as out of time carry ids of their own: they leave the distinct count. Rows
    # refused as duplicates repeat ids already counted once: the count stays.
    report.events_unique = len(ids) - out_of_time
    report.events_trained = trained
    report.refused_counted = refused


def _final_checks(stack: Stack) -> dict[str, Any]:
    from freshrank.registry.store import Registry

    registry = Registry(stack.registry)
    latest = registry.latest_version()
    watermark = registry.get(latest).manifest.get("watermark") if latest else None
    freshness = stack.freshness()
    return {
        "latest_watermark_minus_now_s": round(float(watermark) - time.time(), 1)
        if watermark
        else None,
        "freshness_gauges_min_s": round(min(freshness), 1) if freshness else None,
        "promotion_log_readable": _log_readable(stack),
        "quarantined": len(stack.zone.quarantined()),
        "trainer_exit_codes": stack.trainer_exits,
        "registry_mb": _du_mb(stack.registry),
    }


def _du_mb(root: Path) -> dict[str, int]:
    """Megabytes under each top-level entry of the registry (what fills a small disk)."""
    out: dict[str, int] = {}
    for entry in root.iterdir():
        files = [entry] if entry.is_file() else [p for p in entry.rglob("*") if p.is_file()]
        out[entry.name] = sum(p.stat().st_size for p in files) >> 20
    return out


# ---------------------------------------------------------------------------------------------
# Helpers and the command line.


def _mount_tmpfs(path: Path, size_mb: int) -> bool:
    if not sys.platform.startswith("linux") or shutil.which("mount") is None:
        return False
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={int(size_mb)}m", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def _until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.2)


def _wait(seconds: float) -> None:
    time.sleep(seconds)  # requests keep flowing; this is the settle time itself


def _secs(value: float | None) -> str:
    return "not healed" if value is None else f"{value:.1f} s"


def render_markdown(report: ChaosReport, title: str) -> str:
    """The report as a markdown table (one row per fault, then the events)."""
    lines = [
        f"#### {title}",
        "",
        "| fault | requests | failed (by status) | heal | checks |",
        "|---|---:|---|---:|---|",
    ]
    for r in report.faults:
        if r.skipped:
            lines.append(f"| {r.name} | - | - | - | skipped: {r.skipped} |")
            continue
        failed = ", ".join(f"{k}: {v}" for k, v in sorted(r.failed.items())) or "0"
        checks = json.dumps(r.checks, default=str).replace("|", "/")
        lines.append(f"| {r.name} | {r.sent} | {failed} | {_secs(r.heal_s)} | {checks} |")
    lines += [
        "",
        f"events: {report.events_unique} distinct valid landed, {report.events_trained} "
        f"trained, {report.refused_counted} refused and counted; lost "
        f"{report.events_lost}, duplicated {report.events_duplicated}; trainer restarts "
        f"{report.trainer_restarts}; final {json.dumps(report.final_checks, default=str)}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="bench/out/chaos")
    parser.add_argument("--faults", default="", help="comma-separated (default: all)")
    parser.add_argument("--hold-s", type=float, default=8.0)
    parser.add_argument("--settle-s", type=float, default=6.0)
    parser.add_argument("--request-rate", type=float, default=20.0)
    parser.add_argument("--markdown", default=None, help="write the table to this file")
    parser.add_argument("--json", default=None, help="write the report as JSON to this file")
    parser.add_argument("--registry-tmpfs-mb", type=int, default=1536)
    parser.add_argument("--fault-timeout-s", type=float, default=90.0)
    parser.add_argument("--title", default="chaos run")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir) / datetime.now(UTC).strftime("run-%Y%m%dT%H%M%SZ")
    config = ChaosConfig(
        workdir=str(workdir),
        faults=tuple(f for f in args.faults.split(",") if f),
        hold_s=args.hold_s,
        settle_s=args.settle_s,
        request_rate=args.request_rate,
        registry_tmpfs_mb=args.registry_tmpfs_mb,
        fault_timeout_s=args.fault_timeout_s,
    )
    report = run_chaos(config)
    text = render_markdown(report, args.title)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(report_dict(report), indent=2, default=str))
    return 0


def report_dict(report: ChaosReport) -> dict[str, Any]:
    """The report as plain data (what ``--json`` writes)."""
    return {
        "faults": [
            {
                "name": r.name,
                "sent": r.sent,
                "failed": dict(r.failed),
                "heal_s": r.heal_s,
                "checks": r.checks,
                "skipped": r.skipped,
            }
            for r in report.faults
        ],
        "events_unique": report.events_unique,
        "events_trained": report.events_trained,
        "refused_counted": report.refused_counted,
        "events_lost": report.events_lost,
        "events_duplicated": report.events_duplicated,
        "trainer_restarts": report.trainer_restarts,
        "final_checks": report.final_checks,
    }


if __name__ == "__main__":
    raise SystemExit(main())
