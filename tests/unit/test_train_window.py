"""The trainer's per-window step in one process, without Ray: Ray Data's read is replaced by
a pyarrow read of the same shards (``read_shards``' own encode), everything else is the
trainer's code: evaluate first, the gate on the pending version, drift, training, checkpoint
and the promotion policy."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from _tiny import FEATURES, MODEL, _model, _rows

import freshrank.learn.train as train
from freshrank.core.telemetry import NullTelemetry
from freshrank.drift.monitor import DriftMonitor
from freshrank.events.landing import LandingZone
from freshrank.events.schema import empty_events
from freshrank.events.simulator import Simulator, SimulatorConfig
from freshrank.features.encode import encode
from freshrank.features.reading import REQUEST_KEY, read_pieces
from freshrank.learn.config import TrainConfig
from freshrank.learn.feed import ShardFeed
from freshrank.learn.gating import ChampionScorer, GateJudge
from freshrank.learn.optim import make_optimizer
from freshrank.learn.publish import WindowProgress, checkpoint_window
from freshrank.learn.step import train_window
from freshrank.learn.strategies import ReplayConfig, build_strategy
from freshrank.model.ranker import Ranker
from freshrank.registry import GateConfig, Promoter, PromotionMode, PromotionPolicy, Registry
from freshrank.registry.control import TrainerControl


def _read_with_pyarrow(paths, features, filesystem=None, selections=None):
    if not paths:
        return encode(empty_events(), features), np.zeros(0, dtype=str)
    rows = read_pieces(paths, selections, features, filesystem)  # what the Ray Data task runs
    return rows, np.asarray(rows.pop(REQUEST_KEY), dtype=str)


@pytest.fixture
def trainer(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "read_shards", _read_with_pyarrow)
    landing = LandingZone(str(tmp_path / "landing"))
    sim = Simulator(SimulatorConfig(seed=4, n_users=50, n_items=80))
    for _ in range(3):
        landing.write_shard(sim.generate(120))
    config = TrainConfig(
        landing=str(tmp_path / "landing"),
        registry=str(tmp_path / "registry"),
        num_workers=1,
        model=MODEL,
        batch_size=64,
        gate_min_rows=50,
        max_shards_per_window=1,
    )
    registry = Registry(config.registry)
    torch.manual_seed(0)
    core = Ranker(MODEL)
    worker = train._Worker(
        model=core,
        core=core,
        optimizer=make_optimizer(core, config.learning_rate),
        strategy=build_strategy(config.strategy_config(), 0),
        drift=DriftMonitor(metrics=NullTelemetry()),
        champion=ChampionScorer(registry, torch.device("cpu")),
        features=FEATURES,
        config=config,
        device=torch.device("cpu"),
        rng=np.random.default_rng(0),
    )
    promoter = Promoter(registry, GateConfig(min_rows=50), metrics=NullTelemetry())
    policy = PromotionPolicy(PromotionMode(config.promotion), promoter)
    control = TrainerControl(config.registry)
    gate = GateJudge(policy, control, control.claim())
    return landing, registry, worker, policy, gate


def test_windows_train_checkpoint_and_go_through_the_gate(trainer, capsys):
    landing, registry, w, policy, gate = trainer
    feed = ShardFeed(landing, max_shards=1)
    progress = WindowProgress.from_state(None)
    pending = None
    before = {k: v.clone() for k, v in w.core.state_dict().items()}
    for index in range(3):
        window = feed.poll()
        assert window is not None
        plan = train._Plan(window, pending, registry.champion_version())
        judge = functools.partial(gate.judge, plan.challenger, plan.champion)
        report = train._train_window(plan, w, judge if plan.challenger is not None else None)
        assert report.rows == window.rows_valid > 0
        assert list(report.metrics)[0] == "loss" and np.isfinite(report.metrics["loss"])
        assert 0.0 <= report.metrics["eval_auc"] <= 1.0
        assert set(report.timings) >= {"read_s", "eval_s", "drift_s", "train_s", "compute_s"}
        parts = [train._numpy_state(w.strategy.state_dict())]
        info = checkpoint_window(
            registry, window, report, w.core, w.optimizer, parts, w.drift, progress
        )
        feed.commit(window)
        pending = policy.after_checkpoint(info)
        assert info.manifest["window_index"] == index + 1 == progress.windows
        if index == 0:  # the first version is promoted at once; later ones wait for the gate
            assert pending is None and registry.champion_version() == info.version
        else:
            assert pending == info.version
    out = capsys.readouterr().out
    assert "gate: v2 " in out  # judged on the third window's rows, before training on them
    assert any(not torch.equal(before[k], v) for k, v in w.core.state_dict().items())
    assert w.optimizer.param_groups[0]["fused"] is True
    kinds = [e["kind"] for e in registry.promotions()]
    assert kinds[0] == "promoted" and len(kinds) == 2


def test_a_rank_without_rows_still_steps_through_the_window(trainer, monkeypatch):
    """Under DDP a rank may get no shard of a window: it scores nothing, steps on empty batches
    (as many as the rank with the most rows) and reports no AUC."""
    landing, _registry, w, _policy, _gate = trainer
    window = ShardFeed(landing, max_shards=1).poll()
    plan = train._Plan(window, None, None)
    monkeypatch.setattr(train, "assign_shards", lambda shards, rank, world: [])
    report = train._train_window(plan, w, None)
    assert report.rows == 0 and report.metrics["eval_auc"] is None
    assert report.metrics["loss"] == 0.0


@pytest.mark.parametrize(
    "champion_file, warning",
    [
        (b"\x00garbage\xff", "treated as no CHAMPION"),  # garbled: reads as no champion
        (b'{"version": 99, "promoted_at": 1.0}', "dangling pointer"),  # names no version
    ],
)
def test_an_unreadable_champion_does_not_stop_the_worker_loop(
    trainer, capsys, caplog, monkeypatch, champion_file, warning
):
    """Issue 17, fault 7: the worker loop reads CHAMPION every window; a garbled or dangling
    one is "no champion readable" (a warning and a count), the gate promotes the challenger as
    it would with no champion, and that promotion replaces the bad pointer."""
    from prometheus_client import CollectorRegistry

    import freshrank.registry.records as records
    from freshrank.core.telemetry import Telemetry

    prom = CollectorRegistry()
    metrics = Telemetry.for_prometheus_client(prom)
    monkeypatch.setattr(records, "default_telemetry", lambda: metrics)
    landing, registry, w, policy, gate = trainer
    feed = ShardFeed(landing, max_shards=1)
    progress = WindowProgress.from_state(None)
    pending = None
    for index in range(3):
        window = feed.poll()
        if index == 2:
            (registry.root / "CHAMPION").write_bytes(champion_file)
        plan = train._Plan(window, pending, registry.champion_version())  # as the loop reads it
        judge = functools.partial(gate.judge, plan.challenger, plan.champion)
        report = train._train_window(plan, w, judge if plan.challenger is not None else None)
        info = checkpoint_window(
            registry,
            window,
            report,
            w.core,
            w.optimizer,
            [train._numpy_state(w.strategy.state_dict())],
            w.drift,
            progress,
        )
        feed.commit(window)
        pending = policy.after_checkpoint(info)
    assert warning in caplog.text + capsys.readouterr().out
    counted = prom.get_sample_value("freshrank_registry_unreadable_total", {"record": "champion"})
    assert counted is not None and counted >= 1
    # v2 was judged against "no champion" on the third window and promoted: the pointer heals.
    assert registry.read_pointer("CHAMPION") == 2
    assert registry.promotions()[-1]["kind"] == "promoted"


def test_the_version_records_every_rank_and_may_not_be_overwritten(trainer):
    """What rank 0 publishes after the ranks' digests agreed: one digest and node per rank."""
    from freshrank.learn.consistency import RankState, check_ranks, state_digest

    landing, registry, w, _policy, _gate = trainer
    feed = ShardFeed(landing, max_shards=1)
    progress = WindowProgress.from_state(None)
    window = feed.poll()
    report = train._train_window(train._Plan(window, None, None), w, None)
    digest = state_digest(w.core)
    ranks = check_ranks([RankState(digest, "node-a"), RankState(digest, "node-b")], 1)
    parts = [train._numpy_state(w.strategy.state_dict())]
    with pytest.raises(ValueError, match=r"may not replace manifest fields \['cursor'\]"):
        checkpoint_window(
            registry, window, report, w.core, w.optimizer, parts, None, progress,
            extra_manifest={**ranks, "cursor": 99},
        )  # fmt: skip
    assert registry.list_versions() == [] and progress.version is None
    info = checkpoint_window(
        registry, window, report, w.core, w.optimizer, parts, None, progress, extra_manifest=ranks
    )
    manifest = registry.get(info.version).manifest
    assert manifest["rank_digests"] == [digest, digest]
    assert manifest["rank_nodes"] == ["node-a", "node-b"]
    # The weights a replica loads are the ones that were hashed.
    from freshrank.registry.checkpoint import load_serving_model

    assert state_digest(load_serving_model(registry, info.version).model) == digest


def test_global_batch_sizes_are_summed_once_per_window_when_the_strategy_knows_them():
    """Under distributed training every step's loss is scaled by the batch size summed over the
    ranks; a strategy that knows its replay counts lets train_window sum them for the whole
    window in one collective, with the same sizes, hence the same model, as step by step."""

    class UnknownCount:  # the same replay, but it will not say how many rows it replays
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def replay_count(self, n_new):
            return None

    def run(wrap):
        strategy = build_strategy(ReplayConfig(capacity=50, seed=1), 0)
        strategy.after_window(_model(), _rows(5, requests=10))  # something to replay
        strategy = wrap(strategy)
        calls = []

        def doubled(value):  # two identical ranks
            calls.append(value)
            return value * 2

        model = _model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        rng = np.random.default_rng(0)
        train_window(
            model,
            optimizer,
            _rows(6, requests=9),
            strategy,
            batch_size=16,
            rng=rng,
            device=torch.device("cpu"),
            reduce_sum=doubled,
            reduce_sizes=doubled,
            world=2,
        )
        return calls, model.state_dict()

    once, weights_once = run(lambda s: s)
    per_step, weights_per_step = run(UnknownCount)
    assert len(once) == 1 and isinstance(once[0], np.ndarray)
    assert len(per_step) == len(once[0]) > 1 and all(isinstance(v, float) for v in per_step)
    np.testing.assert_array_equal(once[0], np.array(per_step))
    for key, value in weights_once.items():
        torch.testing.assert_close(value, weights_per_step[key], rtol=0, atol=0, msg=key)
