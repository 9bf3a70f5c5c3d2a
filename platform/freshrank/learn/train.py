"""The incremental trainer: one long-lived Ray Train ``TorchTrainer.fit()`` that keeps consuming
windows of newly landed shards.

Per window, every worker runs the same short step (see ``_train_window``):

    get window (rank 0 plans, broadcasts) -> read + encode my shards with Ray Data
    -> evaluate first (prequential) -> train on new rows + replay sample -> update replay
    -> rank 0 checkpoints (weights, optimizer, replay, cursor, watermark, metrics) -> report

The cursor is stored in the same checkpoint as the weights it produced, so a restarted worker
or job resumes exactly after the last checkpointed window.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from freshrank.core.serialization import npz_bytes
from freshrank.core.signals import on_stop_signals
from freshrank.drift import DriftMonitor, WindowSketch
from freshrank.drift.sketches import NumericHistogram
from freshrank.evaluation.classification import log_loss, roc_auc
from freshrank.evaluation.ranking import ranking_report
from freshrank.events.landing import LandingZone
from freshrank.features.encode import FeatureConfig, num_rows
from freshrank.features.reading import read_shards
from freshrank.learn.collectives import all_gather, all_reduce_sum, broadcast, rank_world
from freshrank.learn.config import TrainConfig
from freshrank.learn.consistency import check_ranks, rank_state, ray_node_id
from freshrank.learn.dedup import SEEN_EVENTS_FILE, SeenEvents
from freshrank.learn.feed import ShardFeed, Window
from freshrank.learn.gating import ChampionScorer, GateJudge, say
from freshrank.learn.optim import load_optimizer_state, make_optimizer
from freshrank.learn.publish import (
    WindowProgress,
    WindowReport,
    checkpoint_window,
    export_row_counts,
    export_window_metrics,
)
from freshrank.learn.row_sparse import RowSparseOptimizer, broadcast_module
from freshrank.learn.step import score_rows, train_window
from freshrank.learn.strategies import Strategy, build_strategy, reshard_state
from freshrank.learn.window_io import assign_shards, configure_ray_data, warm_up_reader
from freshrank.model.device import backend_for, pick_device
from freshrank.model.ranker import Ranker
from freshrank.registry.checkpoint import (
    TrainingState,
    load_latest_or_init,
)
from freshrank.registry.control import FencedOut, TrainerControl, TrainerHeartbeat
from freshrank.registry.promotion import (
    GateConfig,
    Promoter,
    PromotionMode,
    PromotionPolicy,
    metrics_from_logits,
)
from freshrank.registry.store import Registry


@dataclass(frozen=True)
class TrainSummary:
    """What a finished training run left in the registry."""

    versions: tuple[int, ...]
    """The versions this run wrote that are still in the registry (retention prunes older)."""
    champion: int | None
    events_trained: int
    window_metrics: tuple[dict[str, Any], ...]
    elapsed_s: float
    versions_trained: int = 0
    """Versions this run wrote, pruned ones included."""


def run_training(config: TrainConfig) -> TrainSummary:
    """Run the long-lived trainer on the connected Ray cluster until it stops by its config."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    started = time.time()
    registry = Registry(config.registry)
    before = set(registry.list_versions())
    control = TrainerControl(config.registry)
    control.clear_stop()
    if config.storage_path:
        storage, storage_fs = config.storage_path, None
    elif registry.is_local:
        storage, storage_fs = os.path.abspath(os.path.join(config.registry, "_ray_train")), None
    else:  # Ray Train's run state next to the registry, on the same object store
        storage, storage_fs = registry.storage.path("_ray_train"), registry.storage.fs
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={"config": config},
        scaling_config=ScalingConfig(
            num_workers=config.num_workers,
            use_gpu=config.use_gpu,
            placement_strategy=config.placement_strategy,
            resources_per_worker=dict(config.resources_per_worker or {}) or None,
        ),
        torch_config=TorchConfig(backend=backend_for(config.use_gpu)),
        run_config=RunConfig(
            name="freshrank-trainer",
            storage_path=storage,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=config.max_failures),
        ),
    )
    try:
        with _stop_on_signals(control):
            trainer.fit()
    except Exception as exc:  # TRAINER says failed, and why (best effort: the disk may be full)
        TrainerHeartbeat(config.registry, config.heartbeat_interval_s).fail(exc)
        raise
    new = [v for v in registry.list_versions() if v not in before]
    manifests = [registry.get(v).manifest for v in new]
    latest = registry.latest_version()
    return TrainSummary(
        versions=tuple(new),
        champion=registry.champion_version(),
        events_trained=int(registry.get(latest).manifest["events_trained"]) if latest else 0,
        window_metrics=tuple(
            {"version": m["version"], "events": m["window_events"], **m["metrics"]}
            for m in manifests
        ),
        elapsed_s=time.time() - started,
        versions_trained=max(0, (latest or 0) - max(before, default=0)),
    )


def _stop_on_signals(control: TrainerControl) -> contextlib.AbstractContextManager[None]:
    """While training, SIGTERM/SIGINT (``ray job stop``, Ctrl-C) ask the trainer to finish the
    window it is on, checkpoint it and return, instead of killing it mid-window."""

    def stop(signum: int) -> None:
        print(f"[freshrank trainer] signal {signum}: stopping after this window", flush=True)
        control.request_stop(f"signal {signum}")

    return on_stop_signals(stop)


# ---------------------------------------------------------------------------------------------
# Inside each Ray Train worker.


def _train_loop(loop_config: dict[str, Any]) -> None:
    """Rank 0 keeps ``TRAINER`` beating from the moment it is ready (what the demo and the
    benchmarks wait for) and says ``failed`` (with the reason) when the loop raises."""
    import ray.train

    config: TrainConfig = loop_config["config"]
    beat = None
    if ray.train.get_context().get_world_rank() == 0:
        beat = TrainerHeartbeat(config.registry, config.heartbeat_interval_s)
    try:
        _consume_windows(config, beat)
    except BaseException as exc:
        if beat is not None:
            beat.fail(exc)
        raise


def _consume_windows(config: TrainConfig, beat: TrainerHeartbeat | None) -> None:
    import ray.train
    import ray.train.torch

    from freshrank.core.telemetry import NullTelemetry, default_telemetry

    configure_ray_data()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    node_id = ray_node_id()
    device = pick_device(config.use_gpu)
    registry = Registry(config.registry)
    state = load_latest_or_init(registry)
    model_config = state.model_config if state else config.model

    torch.manual_seed(config.seed)
    core = Ranker(model_config)
    if state is not None:
        core.load_state_dict(state.model_state)
    if config.row_sparse:  # no DDP: the optimizer exchanges touched rows and dense grads
        model = core.to(device)
        broadcast_module(core)
        optimizer = make_optimizer(
            core,
            config.learning_rate,
            row_sparse=True,
            table_learning_rate=config.table_learning_rate,
        )
    else:
        model = ray.train.torch.prepare_model(core)
        optimizer = make_optimizer(model, config.learning_rate)
    if state is not None and state.optimizer_state is not None:
        load_optimizer_state(optimizer, state.optimizer_state)
    strategy = build_strategy(config.strategy_config(), rank)
    if state is not None:
        strategy.load_state_dict(_strategy_part(state.replay_state, rank, world))

    landing = LandingZone(config.landing)
    feed = ShardFeed(
        landing,
        cursor=state.cursor if state else 0,
        max_shards=config.max_shards_per_window,
        gap_timeout_s=config.gap_timeout_s,
        cursor_offset=int(state.manifest.get("cursor_offset", 0)) if state else 0,
        max_rows=config.max_rows_per_window,
        max_future_skew_s=config.max_future_skew_s,
        max_past_age_s=config.max_past_age_s,
        seen=_seen_events(registry, state, config) if rank == 0 else SeenEvents(0),
    )
    metrics = default_telemetry() if rank == 0 else NullTelemetry()
    drift = _drift_monitor(state, metrics) if config.drift else None
    progress = WindowProgress.from_state(state)
    control = TrainerControl(config.registry)
    epoch = control.claim() if rank == 0 else ""
    if beat is not None:
        beat.guard(lambda: control.holder() == epoch)  # a replaced trainer stops writing TRAINER
    promoter = Promoter(registry, GateConfig(min_rows=config.gate_min_rows), metrics=metrics)
    policy = PromotionPolicy(PromotionMode(config.promotion), promoter)
    gate = GateJudge(policy, control, epoch)
    pending = policy.pending_after_restart(progress.version)
    fenced = False
    warm_up_reader(model_config.features, registry, rank)
    all_gather(None)  # every rank is ready
    if beat is not None:
        beat.start("ready", version=progress.version, cursor=feed.cursor)
    worker = _Worker(
        model=model,
        core=core,
        optimizer=optimizer,
        strategy=strategy,
        drift=drift,
        champion=ChampionScorer(registry, device),
        features=model_config.features,
        config=config,
        device=device,
        rng=np.random.default_rng(config.seed * 104729 + rank + progress.windows),
    )

    while True:
        plan = None
        if rank == 0 and not fenced:
            window = _next_window(feed, landing, config, progress, metrics, control, beat)
            if window is not None:
                champion = registry.champion_version()
                judged = pending if pending is not None and pending != champion else None
                plan = _Plan(window, judged, champion)
        plan = broadcast(plan)
        if plan is None:
            break

        judge = None
        if rank == 0 and plan.challenger is not None:
            judge = functools.partial(gate.judge, plan.challenger, plan.champion)
        report = _train_window(plan, worker, judge)
        fenced = fenced or gate.fenced
        if plan.challenger is not None:
            pending = None  # judged now, or superseded by the version this window makes
        strategy_parts = all_gather(_numpy_state(strategy.state_dict()))
        ranks = all_gather(rank_state(core, node_id=node_id))  # each rank's digest and node
        if rank == 0 and not fenced:
            try:
                control.check(epoch)
            except FencedOut as exc:  # a newer trainer owns the registry: publish nothing more
                say(str(exc))
                fenced = True
            else:
                ranks_agree = check_ranks(ranks, progress.windows + 1)  # diverged: raises
                seen = npz_bytes(feed.seen_after(plan.window).state_dict())
                info = checkpoint_window(
                    registry,
                    plan.window,
                    report,
                    core,
                    optimizer,
                    strategy_parts,
                    drift,
                    progress,
                    extra_files={SEEN_EVENTS_FILE: seen},
                    extra_manifest=ranks_agree,
                )
                feed.commit(plan.window)
                pending = policy.after_checkpoint(info)
                if config.keep_versions is not None:
                    registry.prune(config.keep_versions)
                export_window_metrics(metrics, plan.window, report, progress)
                if beat is not None:
                    beat.update(version=progress.version, cursor=feed.cursor, skipped={})
        ray.train.report({"window": progress.windows, **report.metrics})
    if beat is not None and not fenced:
        beat.finish(
            "stopped",
            version=progress.version,
            cursor=feed.cursor,
            pending=pending,
            skipped=progress.skipped,
        )


@dataclass(frozen=True)
class _Plan:
    """What rank 0 broadcasts per window: the window, and the version the gate judges on its
    rows before anyone trains on them (with the champion it is compared against)."""

    window: Window
    challenger: int | None
    champion: int | None


@dataclass(frozen=True)
class _Worker:
    """What stays fixed for one worker across windows (the objects, not their state)."""

    model: torch.nn.Module
    """The model the optimizer steps: DDP-prepared (``core`` inside it), or ``core`` itself
    with ``row_sparse``."""
    core: Ranker
    optimizer: torch.optim.Optimizer | RowSparseOptimizer
    strategy: Strategy
    drift: DriftMonitor | None
    champion: ChampionScorer
    features: FeatureConfig
    config: TrainConfig
    device: torch.device
    rng: np.random.Generator


def _seen_events(
    registry: Registry, state: TrainingState | None, config: TrainConfig
) -> SeenEvents:
    """The de-duplication memory of the version the trainer resumes from."""
    info = registry.get(state.version) if state is not None else None
    return SeenEvents.from_registry(registry, info, config.dedup_horizon_events)


def _drift_monitor(state: TrainingState | None, metrics: Any) -> DriftMonitor:
    if state is not None and state.drift_state is not None:
        return DriftMonitor.from_state(state.drift_state, metrics=metrics)
    return DriftMonitor(metrics=metrics)


def _next_window(
    feed: ShardFeed,
    landing: LandingZone,
    config: TrainConfig,
    progress: WindowProgress,
    metrics: Any,
    control: TrainerControl,
    beat: TrainerHeartbeat | None = None,
) -> Window | None:
    """Rank 0: block until a window with valid rows is ready, or return None to stop."""
    idle_since = time.monotonic()
    while True:
        if control.stop_requested():
            return None
        if config.max_windows is not None and progress.windows >= config.max_windows:
            return None
        done = config.stop_when_producer_done and landing.is_done()
        window = feed.poll()
        if window is not None:
            for _seq, _reason in window.quarantined:
                metrics.inc("freshrank_shards_quarantined_total")
            if window.rows_valid > 0:
                return window
            # Nothing to learn (every row dropped, or only quarantined shards): no version,
            # so the counts wait for the next one's manifest and are in TRAINER meanwhile.
            feed.commit(window)
            skipped = progress.skip(window)
            export_row_counts(metrics, window)
            if beat is not None:
                beat.update(cursor=feed.cursor, skipped=skipped)
            idle_since = time.monotonic()
            continue
        if done and not landing.list_shards(after=feed.cursor):
            return None
        if (
            config.idle_timeout_s is not None
            and time.monotonic() - idle_since > config.idle_timeout_s
        ):
            return None
        time.sleep(config.poll_interval_s)


Judge = Callable[[dict[str, Any], "dict[str, Any] | None", list[str]], None]


def _train_window(plan: _Plan, w: _Worker, judge: Judge | None) -> WindowReport:
    """One window on one worker: read, evaluate first (and judge the previous version on these
    rows), sketch for drift, train with the strategy. Same collectives on every rank."""
    rank, world = rank_world()
    t0 = time.perf_counter()
    pieces = assign_shards(plan.window.shards, rank, world)
    paths, filesystem = LandingZone(w.config.landing).read_source([p for p, _ in pieces])
    rows, requests = read_shards(paths, w.features, filesystem, [s for _, s in pieces])
    counts = all_gather(num_rows(rows))
    read_at = time.time()
    t_read = time.perf_counter()

    metrics, relevance = _evaluate_first(plan, w, rows, requests, judge)
    t_eval = time.perf_counter()

    # Drift: every rank sketches its rows; every rank merges the same parts (so every rank's
    # monitor stays identical); rank 0's monitor exports the statistics.
    alarms: tuple[str, ...] = ()
    merged = None
    if w.drift is not None:
        merged = WindowSketch.merge_all(all_gather(w.drift.sketch(rows, scores=relevance)))
        alarms = tuple(f"{a.feature}/{a.statistic.value}" for a in w.drift.check(merged).alarms)
    t_drift = time.perf_counter()

    # Train: every rank takes the same number of steps (DDP), padding with empty batches.
    result = train_window(
        w.model,
        w.optimizer,
        rows,
        w.strategy,
        batch_size=w.config.batch_size,
        rng=w.rng,
        device=w.device,
        steps=math.ceil(max(counts) / w.config.batch_size),
        reduce_sum=lambda v: all_reduce_sum(v, w.device),
        reduce_sizes=lambda v: all_reduce_sum(v, w.device),
        world=world,
    )
    loss_sum = all_reduce_sum(result.task_loss_sum, w.device)
    loss = loss_sum / max(all_reduce_sum(float(result.rows), w.device), 1.0)
    if w.drift is not None and merged is not None:
        _absorb_drift(w, rows, merged)
    trained_at = time.time()
    t_train = time.perf_counter()

    return WindowReport(
        rows=int(sum(counts)),
        metrics={"loss": loss, **metrics},
        timings={
            "read_s": t_read - t0,
            "eval_s": t_eval - t_read,
            "drift_s": t_drift - t_eval,
            "train_s": t_train - t_drift,
            "compute_s": result.compute_s,  # forward + backward + optimizer step (+ all-reduce)
        },
        read_at=read_at,
        trained_at=trained_at,
        drift_alarms=alarms,
    )


def _evaluate_first(
    plan: _Plan,
    w: _Worker,
    rows: Mapping[str, np.ndarray],
    requests: np.ndarray,
    judge: Judge | None,
) -> tuple[dict[str, float | None], np.ndarray]:
    """Prequential: score the window before learning from it, over every rank's rows; the
    window's metrics and this rank's relevance scores. Click logits (position included, what
    the loss sees) and relevance (what serving ranks by); rank 0 judges the pending version
    (whose weights these still are) against the champion on the same rows."""
    core, device = w.core, w.device
    click = score_rows(core, rows, device, use_position=True)
    relevance = score_rows(core, rows, device, use_position=False)
    champion: np.ndarray | str | None = None
    if plan.challenger is not None and plan.champion is not None:
        champion = w.champion.logits(plan.champion, rows)
    if plan.challenger is not None:  # these weights are the challenger's until we train
        w.champion.offer(plan.challenger, core)
    gathered = all_gather((rows["label"], click, relevance, requests, champion))
    labels_all = np.concatenate([g[0] for g in gathered])
    click_all = np.concatenate([g[1] for g in gathered])
    relevance_all = np.concatenate([g[2] for g in gathered])
    requests_all = np.concatenate([g[3] for g in gathered])
    auc = roc_auc(labels_all, click_all)
    ranking = ranking_report(requests_all, labels_all, relevance_all, k=20, ndcg_k=10)
    if judge is not None:
        new = metrics_from_logits(labels_all, click_all)
        problems = [g[4] for g in gathered if isinstance(g[4], str)]
        old = None
        if plan.champion is not None and not problems:
            old = metrics_from_logits(labels_all, np.concatenate([g[4] for g in gathered]))
        judge(new, old, [f"{p}: judged without it" for p in problems[:1]])
    metrics = {
        "eval_auc": None if math.isnan(auc) else auc,
        "eval_logloss": log_loss(labels_all, click_all),
        "eval_ctr": float(labels_all.mean()) if len(labels_all) else None,
        "eval_gauc": _finite_or_none(ranking["gauc"]),
        "eval_ndcg10": _finite_or_none(ranking["ndcg@10"]),
    }
    return metrics, relevance


def _absorb_drift(w: _Worker, rows: Mapping[str, np.ndarray], merged: WindowSketch) -> None:
    """After training: the reference is what the model has now trained on; its score
    distribution is the trained model's scores on these rows (every rank's, merged; see
    ReferenceProfile.with_model_scores)."""
    drift = w.drift
    assert drift is not None
    hist = NumericHistogram(drift.config.score_edges)
    hist.update(score_rows(w.core, rows, w.device, use_position=False))
    scores_all = functools.reduce(lambda a, b: a.merge(b), all_gather(hist))
    drift.absorb(merged)
    drift.replace_reference(drift.reference.with_model_scores(scores_all))


def _finite_or_none(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _numpy_state(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A strategy state with tensors as numpy arrays (saved with ``np.savez``, no pickle)."""
    return {
        k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
        for k, v in state.items()
    }


def _strategy_part(state: Mapping[str, np.ndarray], rank: int, world: int) -> dict[str, Any]:
    """This rank's strategy state from a checkpoint's ``rank<r>/...`` arrays (re-dealt by
    ``reshard_state`` when the number of workers changed).

    >>> saved = {"rank0/rows/x": np.array([0, 2]), "rank1/rows/x": np.array([1, 3])}
    >>> _strategy_part(saved, 0, 1)["rows/x"].tolist()
    [0, 2, 1, 3]
    """
    parts: dict[int, dict[str, np.ndarray]] = {}
    for key, value in state.items():
        head, _, rest = key.partition("/")
        if head.startswith("rank") and head[4:].isdigit():
            parts.setdefault(int(head[4:]), {})[rest] = value
    if not parts:
        return {}
    return reshard_state([parts[r] for r in sorted(parts)], rank, world)
