"""learn.optim: the one optimizer factory of the trainer, the backtest and the benches."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.distributed as dist
from _tiny import FEATURES, MODEL
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from freshrank.events.simulator import Simulator, SimulatorConfig
from freshrank.features.encode import encode
from freshrank.learn.optim import load_optimizer_state, make_optimizer
from freshrank.learn.step import train_window
from freshrank.learn.strategies import FineTuneConfig, build_strategy
from freshrank.model.ranker import Ranker

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def rows():
    return encode(Simulator(SimulatorConfig(seed=5, n_users=40, n_items=60)).generate(80), FEATURES)


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, rows, **kw):
    return train_window(
        model,
        optimizer,
        rows,
        build_strategy(FineTuneConfig()),
        batch_size=32,
        rng=np.random.default_rng(0),
        device=CPU,
        **kw,
    )


def test_fused_adam_on_cpu_steps_like_plain_adam(rows):
    torch.manual_seed(0)
    plain_model = Ranker(MODEL)
    fused_model = copy.deepcopy(plain_model)
    fused = make_optimizer(fused_model, 0.01)
    assert isinstance(fused, torch.optim.Adam) and fused.param_groups[0]["fused"] is True
    plain = torch.optim.Adam(plain_model.parameters(), lr=0.01)
    a, b = _train(plain_model, plain, rows), _train(fused_model, fused, rows)
    assert a.steps == b.steps > 1
    assert a.mean_loss == pytest.approx(b.mean_loss, rel=1e-5)
    for (name, p), q in zip(plain_model.named_parameters(), fused_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)  # rounding only


def test_fused_adam_under_ddp(rows, tmp_path):
    """A single-process gloo group: DDP's gradient all-reduce, then the fused step."""
    assert not dist.is_initialized()
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        torch.manual_seed(0)
        core = Ranker(MODEL)
        before = copy.deepcopy(core.state_dict())
        model = DistributedDataParallel(core)
        optimizer = make_optimizer(model, 0.01)
        result = _train(model, optimizer, rows, steps=3, reduce_sum=float, world=1)
    finally:
        dist.destroy_process_group()
    assert result.steps == 3 and np.isfinite(result.mean_loss)
    assert optimizer.param_groups[0]["fused"] is True
    assert any(not torch.equal(before[k], v) for k, v in core.state_dict().items())


def test_a_plain_adam_checkpoint_resumes_fused(rows):
    torch.manual_seed(0)
    model = Ranker(MODEL)
    plain = torch.optim.Adam(model.parameters(), lr=0.01)
    _train(model, plain, rows)
    saved = plain.state_dict()
    resumed = make_optimizer(model, 0.01)
    load_optimizer_state(resumed, saved)
    assert resumed.param_groups[0]["fused"] is True  # torch's own load would reset it to None
    first = next(model.parameters())
    assert resumed.state[first]["step"].dtype == torch.float32
    assert float(resumed.state[first]["step"]) == float(plain.state[first]["step"])
    assert np.isfinite(_train(model, resumed, rows).mean_loss)
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        make_optimizer(model, 0.0)
