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
import math
import os
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from freshrank.events.landing import LandingZone
from freshrank.events.schema import drop_invalid_rows, empty_events
from freshrank.features.encode import FeatureConfig, concat_inputs, encode, num_rows, slice_inputs
from freshrank.learn.config import TrainConfig
from freshrank.learn.control import FencedOut, TrainerControl
from freshrank.learn.evaluation import log_loss, roc_auc
from freshrank.learn.feed import ShardFeed, ShardPlan, Window
from freshrank.learn.replay import ReservoirBuffer
from freshrank.model.device import backend_for, pick_device, to_tensors
from freshrank.model.ranker import Ranker
from freshrank.registry.checkpoint import (
    TrainingState,
    load_latest_or_init,
    promote_if_finite,
    save_checkpoint,
)
from freshrank.registry.store import Registry


@dataclass(frozen=True)
class TrainSummary:
    """What a finished training run left in the registry."""

    versions: tuple[int, ...]
    champion: int | None
    events_trained: int
    window_metrics: tuple[dict[str, Any], ...]
    elapsed_s: float


def run_training(config: TrainConfig) -> TrainSummary:
    """Run the long-lived trainer on the connected Ray cluster until it stops by its config."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    started = time.time()
    registry = Registry(config.registry)
    before = set(registry.list_versions())
    control = TrainerControl(config.registry)
    control.clear_stop()
    storage = config.storage_path or os.path.abspath(os.path.join(config.registry, "_ray_train"))
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={"config": config},
        scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu),
        torch_config=TorchConfig(backend=backend_for(config.use_gpu)),
        run_config=RunConfig(
            name="freshrank-trainer",
            storage_path=storage,
            failure_config=FailureConfig(max_failures=config.max_failures),
        ),
    )
    with _stop_on_signals(control):
        trainer.fit()
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
    )


@contextlib.contextmanager
def _stop_on_signals(control: TrainerControl) -> Iterator[None]:
    """While training, SIGTERM/SIGINT (``ray job stop``, Ctrl-C) ask the trainer to finish the
    window it is on, checkpoint it and return, instead of killing it mid-window."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        print(f"[freshrank trainer] signal {signum}: stopping after this window", flush=True)
        control.request_stop(f"signal {signum}")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# ---------------------------------------------------------------------------------------------
# Inside each Ray Train worker.


def _train_loop(loop_config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    from freshrank.monitor.metrics import NullMetrics, default_metrics

    config: TrainConfig = loop_config["config"]
    _configure_ray_data()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = pick_device(config.use_gpu)
    registry = Registry(config.registry)
    state = load_latest_or_init(registry)
    model_config = state.model_config if state else config.model

    torch.manual_seed(config.seed)
    core = Ranker(model_config)
    if state is not None:
        core.load_state_dict(state.model_state)
    model = ray.train.torch.prepare_model(core)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    if state is not None and state.optimizer_state is not None:
        optimizer.load_state_dict(state.optimizer_state)
    buffer = ReservoirBuffer(config.replay_capacity, seed=config.seed * 7919 + rank)
    if state is not None:
        buffer.load_state_dict(_replay_part(state.replay_state, rank, world))

    landing = LandingZone(config.landing)
    feed = ShardFeed(
        landing,
        cursor=state.cursor if state else 0,
        max_shards=config.max_shards_per_window,
        gap_timeout_s=config.gap_timeout_s,
    )
    metrics = default_metrics() if rank == 0 else NullMetrics()
    progress = _Progress.from_state(state)
    control = TrainerControl(config.registry)
    epoch = control.claim() if rank == 0 else ""
    fenced = False
    _warm_up_reader(model_config.features, registry, rank)
    _all_gather(None)  # every rank is ready
    if rank == 0:
        registry.write_trainer_status(
            {"state": "ready", "version": progress.version, "cursor": feed.cursor}
        )
    rng = np.random.default_rng(config.seed * 104729 + rank + progress.windows)

    while True:
        window = None
        if rank == 0 and not fenced:
            window = _next_window(feed, landing, config, progress, metrics, control)
        window = _broadcast(window)
        if window is None:
            break
        report = _train_window(
            window, model, core, optimizer, buffer, model_config.features, config, device, rng
        )
        replay_parts = _all_gather(buffer.state_dict())
        if rank == 0:
            try:
                control.check(epoch)
            except FencedOut as exc:  # a newer trainer owns the registry: publish nothing more
                print(f"[freshrank trainer] {exc}", flush=True)
                fenced = True
            else:
                _checkpoint_window(
                    registry, window, report, core, optimizer, replay_parts, progress
                )
                feed.commit(window)
                _export_window_metrics(metrics, window, report, progress)
        ray.train.report({"window": progress.windows, **report.metrics})
    if rank == 0 and not fenced:
        registry.write_trainer_status(
            {"state": "stopped", "version": progress.version, "cursor": feed.cursor}
        )


@dataclass
class _Progress:
    version: int | None
    windows: int
    events_trained: int
    watermark: float | None

    @classmethod
    def from_state(cls, state: TrainingState | None) -> _Progress:
        if state is None:
            return cls(None, 0, 0, None)
        return cls(
            state.version,
            int(state.manifest.get("window_index", 0)),
            state.events_trained,
            state.watermark,
        )


@dataclass(frozen=True)
class _WindowReport:
    rows: int
    metrics: dict[str, float | None]
    timings: dict[str, float]


def _next_window(
    feed: ShardFeed,
    landing: LandingZone,
    config: TrainConfig,
    progress: _Progress,
    metrics: Any,
    control: TrainerControl,
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
            feed.commit(window)  # nothing to learn: only quarantined or empty shards
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


def _train_window(
    window: Window,
    model: torch.nn.Module,
    core: Ranker,
    optimizer: torch.optim.Optimizer,
    buffer: ReservoirBuffer,
    features: FeatureConfig,
    config: TrainConfig,
    device: torch.device,
    rng: np.random.Generator,
) -> _WindowReport:
    """One window on one worker: read, evaluate first, train, remember. Same on every rank."""
    rank, world = _rank_world()
    t0 = time.perf_counter()
    rows = _read_shards(_assign(window.shards, rank, world), features)
    n_local = num_rows(rows)
    counts = _all_gather(n_local)
    t_read = time.perf_counter()

    # Evaluate first (prequential): score the window before learning from it.
    core.eval()
    with torch.no_grad():
        logits = core(to_tensors(rows, device)).cpu().numpy() if n_local else np.zeros(0)
    gathered = _all_gather((rows["label"], logits))
    labels_all = np.concatenate([g[0] for g in gathered])
    logits_all = np.concatenate([g[1] for g in gathered])
    auc = roc_auc(labels_all, logits_all)
    t_eval = time.perf_counter()

    # Train: every rank takes the same number of steps (DDP), padding with empty batches.
    model.train()
    steps = math.ceil(max(counts) / config.batch_size)
    order = rng.permutation(n_local)
    loss_total, rows_total, compute_s = 0.0, 0, 0.0
    for step in range(steps):
        new = slice_inputs(rows, order[step * config.batch_size : (step + 1) * config.batch_size])
        k = int(round(num_rows(new) * config.replay_ratio)) if len(buffer) else 0
        batch = concat_inputs([new, buffer.sample(k)]) if k else new
        tensors = to_tensors(batch, device)
        c0 = time.perf_counter()
        out = model(tensors)
        loss_sum = F.binary_cross_entropy_with_logits(out, tensors["label"], reduction="sum")
        n_global = _all_reduce_sum(float(num_rows(batch)), device)
        # DDP averages gradients over ranks; scale so the step uses the mean over all rows.
        loss = loss_sum * (world / max(n_global, 1.0))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        compute_s += time.perf_counter() - c0
        loss_total += float(loss_sum.detach())
        rows_total += num_rows(batch)
    loss_global = _all_reduce_sum(loss_total, device) / max(_all_reduce_sum(rows_total, device), 1)
    buffer.add(rows)
    t_train = time.perf_counter()

    return _WindowReport(
        rows=int(sum(counts)),
        metrics={
            "loss": loss_global,
            "eval_auc": None if math.isnan(auc) else auc,
            "eval_logloss": log_loss(labels_all, logits_all),
            "eval_ctr": float(labels_all.mean()) if len(labels_all) else None,
        },
        timings={
            "read_s": t_read - t0,
            "eval_s": t_eval - t_read,
            "train_s": t_train - t_eval,
            "compute_s": compute_s,  # forward + backward + optimizer step (incl. all-reduce)
        },
    )


def _checkpoint_window(
    registry: Registry,
    window: Window,
    report: _WindowReport,
    core: Ranker,
    optimizer: torch.optim.Optimizer,
    replay_parts: list[dict[str, np.ndarray]],
    progress: _Progress,
) -> None:
    """Rank 0: publish the window's version and promote it when its metrics are finite."""
    if report.rows != window.rows_valid:
        raise RuntimeError(
            f"window read {report.rows} rows but validation counted {window.rows_valid}: "
            f"shards {[s.seq for s in window.shards]}"
        )
    t0 = time.perf_counter()
    watermark = max(
        (w for w in (progress.watermark, window.max_event_time) if w is not None), default=None
    )
    manifest = {
        "parent": progress.version,
        "cursor": window.cursor,
        "shards": [s.seq for s in window.shards],
        "shard_landed_at": {str(s.seq): s.landed_at for s in window.shards},
        "quarantined": [list(q) for q in window.quarantined],
        "rows_dropped": window.rows_dropped,
        "window_events": report.rows,
        "events_trained": progress.events_trained + report.rows,
        "window_index": progress.windows + 1,
        "watermark": watermark,
        "metrics": report.metrics,
        "timings": dict(report.timings),
        "world_size": len(replay_parts),
        "trained_at": time.time(),
    }
    replay_state: dict[str, np.ndarray] = {}
    for r, part in enumerate(replay_parts):
        replay_state.update({f"rank{r}/{k}": v for k, v in part.items()})
    info = save_checkpoint(
        registry, core.config, core.state_dict(), optimizer.state_dict(), replay_state, manifest
    )
    promote_if_finite(registry, info)
    progress.version = info.version
    progress.windows += 1
    progress.events_trained += report.rows
    progress.watermark = watermark
    report.timings["checkpoint_s"] = time.perf_counter() - t0
    print(
        f"[freshrank trainer] v{info.version}: window {progress.windows} "
        f"shards {manifest['shards'][0]}..{manifest['shards'][-1]} events {report.rows} "
        f"auc {_fmt(report.metrics['eval_auc'])} loss {_fmt(report.metrics['loss'])} "
        f"total {progress.events_trained}",
        flush=True,
    )


def _export_window_metrics(
    metrics: Any, window: Window, report: _WindowReport, progress: _Progress
) -> None:
    metrics.inc("freshrank_events_trained_total", float(report.rows))
    metrics.inc("freshrank_windows_trained_total")
    if window.rows_dropped:
        metrics.inc("freshrank_rows_dropped_total", float(window.rows_dropped))
    if report.metrics["eval_auc"] is not None:
        metrics.set("freshrank_window_auc", float(report.metrics["eval_auc"]))
    metrics.set("freshrank_window_logloss", float(report.metrics["eval_logloss"]))
    metrics.set("freshrank_trainer_model_version", float(progress.version or 0))
    now = time.time()
    for shard in window.shards:
        metrics.observe("freshrank_update_latency_seconds", now - shard.landed_at)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


# ---------------------------------------------------------------------------------------------
# Reading a window with Ray Data.


def _configure_ray_data() -> None:
    from ray.data import DataContext

    ctx = DataContext.get_current()
    # Ray 2.60's parquet datasource V2 starts footer-reader actors on every execution
    # (9-13 s per small window measured here); V1 reads a small window in well under a second.
    ctx.use_datasource_v2 = False
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def _warm_up_reader(features: FeatureConfig, registry: Registry, rank: int) -> None:
    """Run one tiny read so Ray Data's worker processes exist before the first real window.

    The first execution in a fresh worker pays for starting processes and importing torch
    (about 20 s measured on 2 cores); paying it here keeps it out of the first window's latency.
    """
    import pyarrow.parquet as pq

    from freshrank.features.encode import candidates_table

    # One row (an empty file would plan no read task and start nothing); it has no event id,
    # so the read drops it like any row missing a required field.
    path = registry.root / "_warmup" / f"rank{rank}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(candidates_table("warmup", "warm up", [{"item_id": "w"}]), path)
    _read_shards([str(path)], features)


def _assign(shards: tuple[ShardPlan, ...], rank: int, world: int) -> list[str]:
    """Balance shards over ranks by rows (largest first onto the least loaded rank).

    >>> plans = tuple(ShardPlan(i, f"s{i}", 0.0, r, 0, None) for i, r in enumerate([5, 3, 3, 1]))
    >>> _assign(plans, 0, 2), _assign(plans, 1, 2)
    (['s0', 's3'], ['s1', 's2'])
    """
    load = [0] * world
    owner: dict[str, int] = {}
    for shard in sorted(shards, key=lambda s: (-s.rows_valid, s.seq)):
        r = min(range(world), key=lambda i: (load[i], i))
        owner[shard.path] = r
        load[r] += shard.rows_valid
    return [s.path for s in sorted(shards, key=lambda s: s.seq) if owner[s.path] == rank]


def _read_shards(paths: list[str], features: FeatureConfig) -> dict[str, np.ndarray]:
    """Read and encode shards through Ray Data (``read_parquet -> map_batches(encode)``)."""
    if not paths:
        return encode(empty_events(), features)
    import ray.data

    ds = ray.data.read_parquet(paths).map_batches(
        _encode_batch, batch_format="pyarrow", fn_kwargs={"features": features}
    )
    parts = [b for b in ds.iter_batches(batch_size=None, batch_format="numpy") if len(b["label"])]
    if not parts:
        return encode(empty_events(), features)
    return concat_inputs(parts)


def _encode_batch(batch: Any, features: FeatureConfig) -> dict[str, np.ndarray]:
    table, _dropped = drop_invalid_rows(batch)
    return encode(table, features)


# ---------------------------------------------------------------------------------------------
# Collectives (no-ops in a single process).


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _broadcast(obj: Any) -> Any:
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _all_gather(obj: Any) -> list[Any]:
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _all_reduce_sum(value: float, device: torch.device) -> float:
    if not (dist.is_available() and dist.is_initialized()):
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


def _replay_part(state: Mapping[str, np.ndarray], rank: int, world: int) -> dict[str, np.ndarray]:
    """This rank's share of a saved replay buffer (re-split when the world size changed)."""
    parts: dict[int, dict[str, np.ndarray]] = {}
    for key, value in state.items():
        head, _, rest = key.partition("/")
        if head.startswith("rank"):
            parts.setdefault(int(head[4:]), {})[rest] = value
    if not parts:
        return {}
    if len(parts) == world and rank in parts:
        return parts[rank]
    rows = [
        {k[len("rows/") :]: v for k, v in p.items() if k.startswith("rows/")}
        for _, p in sorted(parts.items())
    ]
    rows = [r for r in rows if r]
    if not rows:
        return {}
    merged = concat_inputs(rows)
    mine = slice_inputs(merged, slice(rank, None, world))
    return {f"rows/{k}": v for k, v in mine.items()}
