"""Two Ray Train workers over a few shards, on the session's local Ray."""

import numpy as np
import pytest

from freshrank.events.landing import LandingZone
from freshrank.events.produce import ProducerConfig, run_producer
from freshrank.learn import TrainConfig, run_training
from freshrank.learn.train import _replay_part
from freshrank.registry import Registry, load_latest_or_init

pytestmark = pytest.mark.integration


def test_two_workers_train_every_valid_event_once_and_resume(ray_local, tmp_path):
    landing, registry = tmp_path / "landing", tmp_path / "registry"
    produced = run_producer(
        ProducerConfig(
            landing_path=str(landing),
            events_per_second=1e9,
            shard_events=1000,
            max_shards=5,
            bad_shard_every=2,
            null_row_fraction=0.01,
        )
    )
    config = TrainConfig(
        landing=str(landing),
        registry=str(registry),
        num_workers=2,
        max_shards_per_window=2,
        replay_capacity=500,
    )
    first = run_training(config)

    reg = Registry(registry)
    manifests = [reg.get(v).manifest for v in reg.list_versions()]
    trained_shards = [s for m in manifests for s in m["shards"]]
    assert sorted(trained_shards) == sorted(set(trained_shards))  # none twice
    good = [r.seq for r in LandingZone(landing).list_shards()]
    assert sorted(trained_shards) == good and len(good) == 5
    assert first.events_trained == produced.valid_events == 5 * 990
    assert len(LandingZone(landing).quarantined()) == produced.bad_shards_written == 2
    assert sum(m["rows_dropped"] for m in manifests) == 5 * 10
    assert first.champion == reg.latest_version() == len(manifests)
    for m in manifests:
        assert np.isfinite(m["metrics"]["loss"]) and m["world_size"] == 2
    assert manifests[-1]["cursor"] == max(
        good + [q[0] for m in manifests for q in m["quarantined"]]
    )

    # The replay buffer is checkpointed per rank, with every rank's rows.
    state = load_latest_or_init(reg)
    parts = [_replay_part(state.replay_state, r, 2) for r in range(2)]
    held = sum(len(p["rows/label"]) for p in parts)
    assert held == 2 * 500

    # More shards land; a new fit resumes from the checkpointed cursor and trains only those.
    more = run_producer(
        ProducerConfig(
            landing_path=str(landing), events_per_second=1e9, shard_events=1000, max_shards=2
        )
    )
    second = run_training(config)
    assert second.events_trained == first.events_trained + more.valid_events
    new_shards = [s for v in second.versions for s in reg.get(v).manifest["shards"]]
    assert len(new_shards) == 2 and min(new_shards) > max(trained_shards)
    assert reg.get(second.versions[0]).manifest["parent"] == first.versions[-1]
