"""Exactly once under crashes, tested the way stream processors test it: shards keep landing
while training workers are SIGKILLed (Ray Train restarts the worker group) and the whole trainer
job is SIGKILLed (a new job resumes from the registry); afterwards the checkpoint lineage must
hold every valid landed shard exactly once."""

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from freshrank.events.landing import LandingZone
from freshrank.events.produce import ProducerConfig, run_producer
from freshrank.registry import Registry

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SHARDS = 200
"""Valid shards the producer lands (25 s at 400 events/s), bad ones besides."""


def _alive_train_workers(address: str) -> list[int]:
    """PIDs of live Ray Train workers of the cluster at ``address`` (named: another local Ray,
    e.g. someone else's on the same machine, would make auto-detection fail)."""
    from ray.util.state import list_actors

    actors = list_actors(
        address=address,
        filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
        timeout=10,
    )
    return [a.pid for a in actors if a.pid]


def _until(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.2)


def _lineage(reg: Registry) -> list[dict]:
    """Manifests from the first version to the latest, following parent pointers."""
    chain, version = [], reg.latest_version()
    while version is not None:
        manifest = reg.get(version).manifest
        chain.append(manifest)
        version = manifest["parent"]
    return chain[::-1]


def test_every_valid_shard_trained_exactly_once_across_kills(ray_local, tmp_path):
    rng = random.Random(7)
    landing, registry = tmp_path / "landing", tmp_path / "registry"
    producer_done = {}
    producer = threading.Thread(
        target=lambda: producer_done.setdefault(
            "stats",
            run_producer(
                ProducerConfig(
                    landing_path=str(landing),
                    events_per_second=400,
                    shard_events=50,
                    max_shards=SHARDS,
                    bad_shard_every=25,
                    null_row_fraction=0.02,
                )
            ),
        ),
        daemon=True,
    )
    cmd = [
        sys.executable,
        str(ROOT / "jobs" / "train.py"),
        "--landing",
        str(landing),
        "--registry",
        str(registry),
        "--address",
        ray_local.gcs_address,
        "--max-shards-per-window",
        "12",
        "--max-failures",
        "10",
        "--replay-capacity",
        "2000",
        "--poll-interval-s",
        "0.1",
        "--keep-versions",  # the lineage below walks every version
        "none",
        "--promotion",  # promotion is not what this test is about; the gate loads models
        "manual",
    ]
    log = open(tmp_path / "trainer.log", "w")  # noqa: SIM115 - closed at the end
    reg = Registry(registry)
    kills = {"job": 0, "worker": 0}

    def start_job() -> subprocess.Popen:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

    def versions() -> int:
        return len(reg.list_versions())

    job = start_job()
    producer.start()
    try:
        plan = ["worker", "job", "worker"]  # each kind of crash, and a crash after a resume
        for what in plan:
            # let the trainer make some progress, then kill at a random moment
            have = versions()
            _until(lambda have=have: versions() > have, 240, "the trainer to publish a version")
            time.sleep(rng.uniform(0.0, 1.5))  # the random moment (not waiting for anything)
            if what == "worker":
                # the worker group may be between two lives (a restart after the last kill,
                # Ray Train's own retry): wait for one that is alive, with a deadline
                found: list[int] = []
                _until(
                    lambda found=found: (
                        found.extend(_alive_train_workers(ray_local.gcs_address)) or found
                    ),
                    120,
                    "a live training worker to kill",
                )
                pids = found
                os.kill(rng.choice(pids), signal.SIGKILL)
                kills["worker"] += 1
            else:
                job.send_signal(signal.SIGKILL)
                job.wait(30)
                kills["job"] += 1
                # a supervisor restarts the job once the old one's workers are gone
                _until(
                    lambda: not _alive_train_workers(ray_local.gcs_address),
                    60,
                    "the killed job's workers to exit",
                )
                job = start_job()
        producer.join(120)
        assert "stats" in producer_done, "producer did not finish"
        assert job.wait(300) == 0, (tmp_path / "trainer.log").read_text()[-3000:]
    finally:
        if job.poll() is None:
            job.kill()
        log.close()

    stats = producer_done["stats"]
    zone = LandingZone(landing)
    good = sorted(r.seq for r in zone.list_shards())
    assert len(good) == stats.shards_written == SHARDS
    chain = _lineage(reg)
    trained = [s for m in chain for s in m["shards"]]
    assert len(trained) == len(set(trained)), "a shard was trained twice"
    assert sorted(trained) == good, "a valid shard was never trained"
    assert chain[-1]["events_trained"] == stats.valid_events
    assert sum(m["window_events"] for m in chain) == stats.valid_events
    assert len(zone.quarantined()) == stats.bad_shards_written
    assert kills == {"job": 1, "worker": 2}
