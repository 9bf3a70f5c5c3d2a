"""Hot swap under sustained HTTP load: 20 promotions through the gate, one rollback, a corrupted
version offered twice (to the gate, and by a raw pointer write that bypasses it).

Asserted: no request fails; every replica converges on every promoted version; after the
rollback has completed (every replica answered with the rollback target) no request sent
later is answered by the rolled-back version; the corrupted version is never served.
"""

import time

import numpy as np
import pytest
import torch
from loadgen import LoadConfig, LoadGenerator
from prometheus_client import CollectorRegistry

from freshrank.core.storage import write_local_atomic
from freshrank.core.telemetry import Telemetry
from freshrank.features.encode import FeatureConfig, candidates_table, encode
from freshrank.model.config import RankerConfig
from freshrank.model.ranker import Ranker
from freshrank.ops.runtime import free_port
from freshrank.registry import (
    Direction,
    GateConfig,
    MetricTolerance,
    Promoter,
    PromotionOutcome,
    Registry,
    save_checkpoint,
)
from freshrank.serving.app import RankingAppConfig, build_ranking_app

pytestmark = pytest.mark.integration

REPLICAS = 2
PROMOTIONS = 20
ROLLBACK_AFTER = 15  # promotions done before the rollback
CONVERGE_S = 30.0  # per version, generous on a loaded 2-core machine
CFG = RankerConfig(
    features=FeatureConfig(
        user_buckets=1000,
        item_buckets=2000,
        category_buckets=50,
        brand_buckets=50,
        query_buckets=500,
    ),
    embedding_dim=8,
)
# The gate is made permissive here: the subject is the swap, not model quality (test_gate.py).
GATE = GateConfig(
    tolerances=(
        MetricTolerance("auc", Direction.HIGHER_IS_BETTER, absolute=1.0),
        MetricTolerance("logloss", Direction.LOWER_IS_BETTER, absolute=100.0),
    ),
    min_rows=10,
)
BODY = {
    "user_id": "u1",
    "query": "red shoes",
    "candidates": [{"item_id": f"i{i}", "category": "c1", "price": 10.0 + i} for i in range(50)],
}


def _publish(reg, seed):
    torch.manual_seed(seed)
    model = Ranker(CFG)
    meta = {"cursor": seed, "watermark": time.time(), "metrics": {"loss": 0.5}, "events_trained": 1}
    return save_checkpoint(reg, CFG, model.state_dict(), None, {}, meta).version


def _fresh_rows():
    rng = np.random.default_rng(0)
    cands = [{"item_id": f"i{rng.integers(500)}", "price": float(rng.random())} for _ in range(200)]
    rows = encode(candidates_table("u9", "shoes", cands), CFG.features)
    rows["label"] = (rng.random(200) < 0.3).astype(np.float32)
    return rows


def _wait(cond, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def served(ray_local, tmp_path_factory):
    from ray import serve

    reg = Registry(tmp_path_factory.mktemp("swap-registry"))
    reg.set_champion(_publish(reg, 0))
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(
            build_ranking_app(
                RankingAppConfig(
                    registry=str(reg.root),
                    num_replicas=REPLICAS,
                    poll_interval_s=0.05,
                    graceful_shutdown_wait_loop_s=0.2,  # teardown drains in 0.2 s steps
                )
            ),
            name="swap",
            route_prefix="/",
        )
        yield reg, f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


def test_swaps_rollback_and_corruption_under_load(served):
    reg, url = served
    prom = CollectorRegistry()
    promoter = Promoter(reg, GATE, metrics=Telemetry.for_prometheus_client(prom))
    rows = _fresh_rows()
    load = LoadGenerator(
        LoadConfig(url=url, body=BODY, concurrency=3, max_seconds=240, max_requests=50_000)
    )

    def first_answer_per_replica(version, since):
        """Replica -> earliest receive time of an answer by ``version`` sent after ``since``."""
        out = {}
        for s in load.samples():
            if s.version == version and s.sent >= since:
                out[s.replica] = min(out.get(s.replica, s.done), s.done)
        return out

    def converged(version, since):
        return len(first_answer_per_replica(version, since)) == REPLICAS

    with load:
        _wait(lambda: converged(1, 0.0), 120, "both replicas to answer with v1")
        promoted, bad = [], None
        rollback = {}
        for i in range(PROMOTIONS):
            v = _publish(reg, i + 1)
            t0 = time.monotonic()
            result = promoter.consider(v, rows)
            assert result.outcome is PromotionOutcome.PROMOTED, result.reasons
            promoted.append(v)
            _wait(lambda v=v, t0=t0: converged(v, t0), CONVERGE_S, f"all replicas on v{v}")

            if i == 4:  # a corrupted version is offered to the gate: rejected, never loaded
                bad = _publish(reg, 999)
                path = reg.get(bad).path / "model.pt"
                path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
                rejected = promoter.consider(bad, rows)
                assert rejected.outcome is PromotionOutcome.REJECTED
                assert "CorruptVersion" in rejected.reasons[0]
            if i == 9:  # ... and written straight into the pointer: replicas refuse it
                write_local_atomic(reg.root / "CHAMPION", f'{{"version": {bad}}}'.encode())
                t_bad = time.monotonic()
                mark = len(load.samples())
                _wait(lambda m=mark: len(load.samples()) >= m + 100, 60, "100 more answers")
                assert {s.version for s in load.samples() if s.sent >= t_bad} == {v}
                reg.set_champion(v, reason="restore after corrupt pointer")  # verified write
            if i == ROLLBACK_AFTER - 1:
                rolled_from = v
                t_rb = time.monotonic()
                target = promoter.rollback(reason="test: ctr fell")
                assert target == promoted[-2] and reg.champion_version() == target
                _wait(
                    lambda t=target, t_rb=t_rb: converged(t, t_rb),
                    CONVERGE_S,
                    f"rollback to v{target}",
                )
                rollback = {
                    "from": rolled_from,
                    "to": target,
                    "complete": max(first_answer_per_replica(target, t_rb).values()),
                }
        # a little more load on the final version, then stop
        mark = len(load.samples())
        _wait(lambda: len(load.samples()) >= mark + 50, 60, "final answers")
    samples = load.samples()

    failures = [s for s in samples if not s.ok]
    assert failures == [], failures[:5]
    assert len(samples) >= 200  # sustained: and every replica answered every version (above)
    served_versions = {s.version for s in samples}
    assert set(promoted) <= served_versions
    assert bad not in served_versions  # the corrupted version never answered
    after = [s for s in samples if s.sent >= rollback["complete"]]
    assert after and rollback["from"] not in {s.version for s in after}
    assert reg.champion_version() == promoted[-1]
    log = [(e["kind"], e.get("to_version")) for e in reg.promotions()]
    assert ("rolled_back", rollback["to"]) in log and ("rejected", bad) in log
    assert sum(k == "promoted" for k, _ in log) >= PROMOTIONS + 1  # + the restore write

    def count(outcome):
        return prom.get_sample_value("freshrank_promotions_total", {"outcome": outcome})

    assert (count("promoted"), count("rejected"), count("rolled_back")) == (PROMOTIONS, 1, 1)
