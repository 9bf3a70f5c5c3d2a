"""Row-sparse training (issue 15): sparse table gradients, SparseAdam for the tables, fused Adam
for the rest, and the exchange of touched rows across ranks (two real gloo processes)."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from _tiny import _model, _one_thread, _rows  # noqa: F401 (fixture)

from freshrank.features.encode import ID_FEATURES, concat_inputs, slice_inputs
from freshrank.learn.config import TrainConfig
from freshrank.learn.optim import load_optimizer_state, make_optimizer
from freshrank.learn.row_sparse import RowSparseOptimizer, plain_adam_state
from freshrank.model.device import to_tensors

CPU = torch.device("cpu")


def _step(model, optimizer, rows: dict[str, np.ndarray], scale: float | None = None):
    batch = to_tensors(rows, CPU)
    loss = F.binary_cross_entropy_with_logits(model(batch), batch["label"], reduction="sum")
    optimizer.zero_grad(set_to_none=True)
    (loss * (scale if scale is not None else 1.0 / len(batch["label"]))).backward()
    optimizer.step()


def _looked_up(rows: dict[str, np.ndarray], feature: str) -> np.ndarray:
    return np.unique(rows[feature])


def test_only_the_rows_a_batch_touches_move_and_the_way_adam_moves_them():
    rows = _rows(0, requests=8)
    sparse_model, dense_model = _model(), _model()
    optimizer = make_optimizer(sparse_model, 0.01, row_sparse=True)
    assert isinstance(optimizer, RowSparseOptimizer)
    reference = make_optimizer(dense_model, 0.01)
    before = copy.deepcopy(sparse_model.state_dict())
    _step(sparse_model, optimizer, rows)
    _step(dense_model, reference, rows)
    for name in ID_FEATURES:
        key = f"sparse.tables.{name}.weight"
        moved = np.flatnonzero((sparse_model.state_dict()[key] != before[key]).any(dim=1))
        assert set(moved) <= set(_looked_up(rows, name)), name
        assert len(moved) > 0, name
    # The dense layers take fused Adam's step either way. From fresh moments a table row moves
    # the way Adam moves it (SparseAdam adds eps before the bias correction, so tiny gradients
    # move less), and a row without gradient moves in neither.
    tables = {f"sparse.tables.{name}.weight" for name in ID_FEATURES} | {"sparse.query.weight"}
    for key, value in dense_model.state_dict().items():
        ours = sparse_model.state_dict()[key]
        if key in tables:
            assert torch.equal(torch.sign(ours - before[key]), torch.sign(value - before[key]))
        else:
            torch.testing.assert_close(ours, value, rtol=1e-6, atol=1e-7, msg=key)


def test_a_penalty_over_every_row_still_steps_the_tables():
    """EWC's anchor gives a table a dense gradient: its nonzero rows are stepped."""
    model = _model()
    optimizer = make_optimizer(model, 0.01, row_sparse=True)
    table = model.sparse.tables["user"].weight
    anchor = table.detach().clone()
    anchor[5] += 1.0  # only row 5 is pulled
    before = table.detach().clone()
    optimizer.zero_grad()
    ((table - anchor) ** 2).sum().backward()
    assert not table.grad.is_sparse
    optimizer.step()
    moved = np.flatnonzero((table.detach() != before).any(dim=1))
    assert list(moved) == [5]


def test_optimizer_state_moves_between_dense_and_row_sparse():
    rows = _rows(1, requests=8)
    dense_model = _model()
    dense = make_optimizer(dense_model, 0.01)
    _step(dense_model, dense, rows)
    # A row-sparse trainer resuming from a dense one keeps every moment.
    sparse_model = copy.deepcopy(dense_model)
    sparse = make_optimizer(sparse_model, 0.01, row_sparse=True)
    load_optimizer_state(sparse, dense.state_dict())
    table = sparse_model.sparse.tables["item"].weight
    original = dense.state[dense_model.sparse.tables["item"].weight]
    torch.testing.assert_close(sparse.tables.state[table]["exp_avg"], original["exp_avg"])
    assert sparse.tables.state[table]["step"] == 1
    _step(sparse_model, sparse, rows)
    # ... and back: a dense trainer resuming from a row-sparse one.
    saved = io.BytesIO()
    torch.save(sparse.state_dict(), saved)  # as a checkpoint holds it
    saved.seek(0)
    state = torch.load(saved, weights_only=True)
    again = make_optimizer(copy.deepcopy(sparse_model).use_sparse_gradients(False), 0.01)
    load_optimizer_state(again, state)
    assert again.param_groups[0]["fused"] is True
    first = next(iter(again.state.values()))
    assert float(first["step"]) == 2.0
    assert plain_adam_state({"state": {}, "param_groups": []}) is None


def test_a_mismatched_state_is_refused_with_the_sizes():
    optimizer = make_optimizer(_model(), 0.01, row_sparse=True)
    other = torch.optim.Adam(torch.nn.Linear(2, 1).parameters())
    with pytest.raises(ValueError, match="model with 2 parameters"):
        optimizer.load_state_dict(other.state_dict())


def test_row_sparse_needs_the_bare_ranker():
    with pytest.raises(ValueError, match="bare ranker"):
        make_optimizer(torch.nn.Linear(2, 1), 0.01, row_sparse=True)


# ------------------------------------------------------------------ two ranks, real collectives


def _rank(rank: int, world: int, init: str, rows: dict, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        model = _model()
        optimizer = make_optimizer(model, 0.01, row_sparse=True)
        n = len(rows["label"])
        mine = slice_inputs(rows, np.arange(rank, n, world))  # uneven shares are fine
        for _ in range(3):
            _step(model, optimizer, mine, scale=world / n)  # DDP's scaling: mean over all rows
        torch.save(model.state_dict(), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_exchange_touched_rows_and_match_one_process(tmp_path):
    rows = concat_inputs([_rows(2, requests=6), _rows(3, requests=5)])
    init = f"file://{tmp_path}/rendezvous"
    mp.start_processes(_rank, args=(2, init, rows, str(tmp_path)), nprocs=2, start_method="spawn")
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for key in a:  # every rank applied the same update: bit for bit the same model
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    single = _model()
    optimizer = make_optimizer(single, 0.01, row_sparse=True)
    for _ in range(3):
        _step(single, optimizer, rows)
    for key, value in single.state_dict().items():  # and what one process does on all rows
        torch.testing.assert_close(a[key], value, rtol=1e-4, atol=1e-5, msg=key)


class _TwoWidths(torch.nn.Module):
    """Tables of different widths (the exchange's general path: one all-reduce, three
    all-gathers per width)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Embedding(20, 2, sparse=True)
        self.b = torch.nn.Embedding(30, 3, sparse=True)
        self.out = torch.nn.Linear(5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.cat([self.a(x[:, 0]), self.b(x[:, 1])], dim=1)).squeeze(1)


def _two_widths_steps(rows: torch.Tensor, labels: torch.Tensor, scale: float) -> _TwoWidths:
    model = _TwoWidths()
    dense = list(model.out.parameters())
    optimizer = RowSparseOptimizer(dense, [model.a.weight, model.b.weight], 0.05)
    for _ in range(3):
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(rows), labels, reduction="sum")
        (loss * scale).backward()
        optimizer.step()
    return model


def _rank_two_widths(rank: int, world: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        rows, labels = _two_widths_data()
        mine = torch.arange(rank, len(rows), world)
        model = _two_widths_steps(rows[mine], labels[mine], world / len(rows))
        torch.save(model.state_dict(), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _two_widths_data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    rows = torch.stack(
        [torch.randint(0, 20, (9,), generator=gen), torch.randint(0, 30, (9,), generator=gen)], 1
    )
    return rows, (torch.rand(9, generator=gen) > 0.5).float()


def test_tables_of_different_widths_take_the_general_exchange(tmp_path):
    init = f"file://{tmp_path}/rendezvous"
    mp.start_processes(
        _rank_two_widths, args=(2, init, str(tmp_path)), nprocs=2, start_method="spawn"
    )
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    rows, labels = _two_widths_data()
    single = _two_widths_steps(rows, labels, 1.0 / len(rows)).state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
        torch.testing.assert_close(a[key], single[key], rtol=1e-4, atol=1e-5, msg=key)


def test_the_tables_can_take_their_own_step_size():
    optimizer = make_optimizer(_model(), 0.01, row_sparse=True, table_learning_rate=0.1)
    assert [group["lr"] for group in optimizer.param_groups] == [0.01, 0.1]
    config = TrainConfig(landing="l", registry="r", row_sparse=True, table_learning_rate=0.1)
    assert config.table_learning_rate == 0.1
    with pytest.raises(ValueError, match="set row_sparse=True"):
        TrainConfig(landing="l", registry="r", table_learning_rate=0.1)
    with pytest.raises(ValueError, match="table_learning_rate must be > 0"):
        TrainConfig(landing="l", registry="r", row_sparse=True, table_learning_rate=0.0)
