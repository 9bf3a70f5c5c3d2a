import math

import numpy as np

from freshrank.evaluation.classification import log_loss, roc_auc
from freshrank.events.landing import LandingZone
from freshrank.events.simulator import Simulator, SimulatorConfig
from freshrank.learn.feed import ShardFeed


def _land(zone: LandingZone, n: int, seed: int = 0):
    sim = Simulator(SimulatorConfig(seed=seed))
    return [zone.write_shard(sim.generate(20)) for _ in range(n)]


def test_windows_in_order_with_cursor(tmp_path):
    zone = LandingZone(tmp_path)
    _land(zone, 5)
    feed = ShardFeed(zone, cursor=0, max_shards=2)
    w1 = feed.poll()
    assert [s.seq for s in w1.shards] == [1, 2] and w1.cursor == 2
    assert feed.poll().cursor == 2  # not committed yet: the same window again
    feed.commit(w1)
    w2 = feed.poll()
    feed.commit(w2)
    w3 = feed.poll()
    feed.commit(w3)
    assert [s.seq for s in w3.shards] == [5]
    assert feed.poll() is None
    assert w1.rows_valid == 2 * 20 * SimulatorConfig().list_size


def test_bad_shard_quarantined_and_skipped(tmp_path):
    zone = LandingZone(tmp_path)
    _land(zone, 1)
    zone.write_raw(b"not parquet at all")
    _land(zone, 1, seed=1)
    feed = ShardFeed(zone, max_shards=10)
    w = feed.poll()
    assert [s.seq for s in w.shards] == [1, 3] and w.cursor == 3
    assert [q[0] for q in w.quarantined] == [2] and w.quarantined[0][1]
    assert len(zone.quarantined()) == 1


def test_gap_waits_then_skips(tmp_path):
    zone = LandingZone(tmp_path)
    sim = Simulator(SimulatorConfig(seed=0))
    zone.write_shard(sim.generate(5), seq=1)
    zone.write_shard(sim.generate(5), seq=3)  # 2 is taken but not yet published
    feed = ShardFeed(zone, max_shards=10, gap_timeout_s=3600)
    w = feed.poll()
    assert [s.seq for s in w.shards] == [1]
    feed.commit(w)
    assert feed.poll() is None  # waits for 2
    feed.gap_timeout_s = 0.0
    assert [s.seq for s in feed.poll().shards] == [3]


def test_auc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(size=300) + labels, 1)  # with ties
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert math.isclose(roc_auc(labels, scores), pairs, rel_tol=1e-12)


def test_log_loss_matches_direct_formula():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=100) * 3
    labels = rng.integers(0, 2, 100).astype(float)
    p = 1 / (1 + np.exp(-logits))
    direct = -(labels * np.log(p) + (1 - labels) * np.log(1 - p)).mean()
    assert math.isclose(log_loss(labels, logits), direct, rel_tol=1e-9)
