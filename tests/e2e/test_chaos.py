"""The chaos suite, bounded: the whole loop (its own local Ray, 2 replicas, the trainer as its own
process, a producer, requests throughout) with faults injected one at a time by
``bench/chaos.py``; then, per fault, what a user would have seen, and over the run, events lost
and duplicated (this is the suite's exactly-once test across crashes).
``python bench/chaos.py`` is the long form (every fault)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from chaos import PINGER_CONCURRENCY

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
FAULTS = (
    "corrupt-champion",
    "garbage-champion",
    "train-worker-kill",
    "trainer-driver-kill",
    "full-disk",
    "bad-shards",
)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("chaos")
    path = out / "report.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "platform"), str(ROOT / "bench")])
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "chaos.py"), "--workdir", str(out)]
        + ["--faults", ",".join(FAULTS), "--hold-s", "4", "--settle-s", "3"]
        # A killed driver's successor pays Ray Train's start-up before it publishes again:
        # 30-70 s with the whole stack on 2 cores (seen: 14 s until TRAINER said stale, then
        # 46 s; another run healed after 66 s), so a fault may take 150 s before it fails.
        + ["--fault-timeout-s", "150", "--json", str(path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(path.read_text())


def _fault(report: dict, name: str) -> dict:
    (fault,) = [f for f in report["faults"] if f["name"] == name]
    return fault


def test_a_corrupt_champion_and_a_replica_restart_do_not_take_requests_down(report):
    fault = _fault(report, "corrupt-champion")
    assert fault["sent"] >= 40
    # Requests in flight on the killed replica may fail (the pinger keeps up to
    # PINGER_CONCURRENCY in flight; on a loaded machine two were). Through Serve's Python proxy
    # it is a 500 that the app cannot change (docs/operating.md, the "Python proxy" note);
    # behind HAProxy it is a JSON 503 with Retry-After (test_haproxy_loopback.py). Nothing fails
    # that was sent after Serve had replaced the replica, while the corrupt champion is held.
    assert sum(fault["failed"].values()) <= PINGER_CONCURRENCY, fault
    assert set(fault["failed"]) <= {"500", "503"}, fault
    sent = fault["checks"]["failed_sent_s_from_kill"]
    assert len(sent) == sum(fault["failed"].values()), fault
    replaced = fault["checks"]["replaced_after_s"]
    assert all(-5.0 <= s <= replaced for s in sent), fault  # around the kill only
    assert fault["heal_s"] is not None, fault


def test_a_garbage_champion_pointer_fails_nothing_and_crashes_no_trainer(report):
    fault = _fault(report, "garbage-champion")
    assert fault["sent"] >= 20 and fault["failed"] == {}, fault
    assert fault["checks"]["trainer_restarted"] == 0, fault
    assert fault["checks"]["train_workers_replaced"] is False, fault


def test_trainer_faults_heal_with_a_new_version_and_serving_is_untouched(report):
    for name in ("train-worker-kill", "trainer-driver-kill", "full-disk"):
        fault = _fault(report, name)
        if fault["skipped"]:
            assert name == "full-disk", fault  # only where no tmpfs can be mounted
            continue
        assert fault["failed"] == {}, fault
        assert fault["heal_s"] is not None, fault
    full = _fault(report, "full-disk")
    if not full["skipped"]:
        assert full["checks"]["promotion_log_readable"] is True, full


def test_bad_shards_are_refused_or_counted_and_poison_nothing(report):
    fault = _fault(report, "bad-shards")
    assert fault["failed"] == {} and fault["heal_s"] is not None, fault
    final = report["final_checks"]
    assert final["quarantined"] >= 2  # the non-parquet and the wrong-schema shards
    assert final["latest_watermark_minus_now_s"] <= 300  # no watermark in the future
    assert final["freshness_gauges_min_s"] is None or final["freshness_gauges_min_s"] >= 0
    assert final["promotion_log_readable"] is True


def test_a_killed_trainer_is_not_reported_live_and_its_successor_resumes(report):
    fault = _fault(report, "trainer-driver-kill")
    # While the supervisor held the restart, TRAINER stopped saying the trainer was live.
    assert fault["checks"]["trainer_state_after_kill"] not in ("ready", "training", "starting")
    assert fault["checks"].get("not_live_after_s", 40.0) < 40, fault
    assert report["trainer_restarts"] >= 1


def test_nothing_lost_nothing_trained_twice(report):
    """Exactly once across a killed training worker (Ray Train restarts the group) and a killed
    trainer driver (a new process resumes from the registry), while shards keep landing: every
    event id of every valid shard is trained once (duplicates are refused by id and counted)."""
    assert report["events_unique"] > 10_000
    assert report["events_lost"] == 0, report
    assert report["events_duplicated"] == 0, report
