"""Row-sparse training: only the table rows a batch touches get gradient, exchange and
optimizer work.

A batch of 768 rows looks up a few thousand of the default ranker's 176,000 table rows, yet
dense training runs Adam over every row and all-reduces every table's gradient each step. Here
(in the manner of TorchRec's row-wise sparse optimizers and Monolith's parameter sync):

* the ranker gives its tables sparse gradients (``Ranker.use_sparse_gradients``);
* :class:`RowSparseOptimizer` steps the dense layers with fused Adam and the tables with
  ``torch.optim.SparseAdam`` (lazy Adam: a row's moments move only when the row is touched);
* under ``torch.distributed`` its ``step`` first exchanges gradients: the dense ones in one
  all-reduce of a flat buffer, the tables' as the touched rows only (each rank's row indices and
  values, all-gathered, then summed by index). Every rank sums the same gathered parts in the
  same order, so every rank applies the same update and the tables stay identical (the trainer
  checks that with its per-window state digest). Gradients are averaged over ranks, as DDP
  averages them, so the same loss scaling holds.

A penalty that touches every row (EWC's quadratic anchor) gives a table a dense gradient; the
exchange then sends that table's nonzero rows, which is correct and costs a pass over the table.
Nothing here is CPU-only: the collectives run on the gradients' device (gloo or NCCL).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "GradientExchange",
    "RowSparseOptimizer",
    "broadcast_module",
    "plain_adam_state",
]

_KEY = "row_sparse"
"""Top-level key of :meth:`RowSparseOptimizer.state_dict` (a plain Adam state has none)."""


class RowSparseOptimizer:
    """Fused Adam over ``dense`` parameters and SparseAdam over ``tables`` (the embedding
    weights, whose gradients are sparse), with the gradient exchange across ranks in
    :meth:`step`. ``table_learning_rate`` (default: ``learning_rate``) is SparseAdam's: a row
    moves only in the steps that touch it, where Adam's momentum moves it on for ~1 / (1 -
    beta1) steps after each touch, so rarely seen rows may want a larger step.

    ``order`` is every parameter in the order ``model.parameters()`` gives them (dense and
    tables mixed), so that a state saved by a plain Adam over the same model loads here, and
    this state loads into a plain Adam (:func:`freshrank.learn.optim.load_optimizer_state`).

    >>> emb, lin = nn.Embedding(10, 2, sparse=True), nn.Linear(2, 1)
    >>> opt = RowSparseOptimizer([lin.weight, lin.bias], [emb.weight], 0.1,
    ...                          order=[emb.weight, lin.weight, lin.bias])
    >>> before = emb.weight.detach().clone()
    >>> lin(emb(torch.tensor([3]))).sum().backward()
    >>> opt.step()
    >>> [i for i in range(10) if not torch.equal(before[i], emb.weight[i])]
    [3]
    """

    def __init__(
        self,
        dense: Sequence[nn.Parameter],
        tables: Sequence[nn.Parameter],
        learning_rate: float,
        order: Sequence[nn.Parameter] | None = None,
        table_learning_rate: float | None = None,
    ) -> None:
        table_lr = learning_rate if table_learning_rate is None else table_learning_rate
        if not learning_rate > 0 or not table_lr > 0:
            raise ValueError(
                f"learning rates must be > 0, got {learning_rate} (dense) and {table_lr} (tables)"
            )
        if not tables:
            raise ValueError("row-sparse training needs at least one table")
        self.dense_params = list(dense)
        self.table_params = list(tables)
        try:
            self.dense = torch.optim.Adam(self.dense_params, lr=learning_rate, fused=True)
        except (RuntimeError, TypeError, ValueError):  # pragma: no cover - older torch / devices
            self.dense = torch.optim.Adam(self.dense_params, lr=learning_rate)
        self.tables = torch.optim.SparseAdam(self.table_params, lr=table_lr)
        self.exchange = GradientExchange()
        ids = {id(p): ("dense", i) for i, p in enumerate(self.dense_params)}
        ids.update({id(p): ("tables", i) for i, p in enumerate(self.table_params)})
        everything = list(order) if order is not None else [*self.dense_params, *self.table_params]
        if len(everything) != len(ids) or any(id(p) not in ids for p in everything):
            raise ValueError("order must list every dense and table parameter exactly once")
        self._order = [ids[id(p)] for p in everything]

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The dense group(s), then the tables' (what a learning-rate schedule would change)."""
        return [*self.dense.param_groups, *self.tables.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear every parameter's gradient."""
        self.dense.zero_grad(set_to_none=set_to_none)
        self.tables.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        """Exchange gradients across ranks (when distributed), then step both optimizers."""
        self.exchange(self.dense_params, self.table_params)
        self.dense.step()
        self.tables.step()

    def state_dict(self) -> dict[str, Any]:
        """Both optimizers' states under one key, with the model order of the parameters."""
        return {
            _KEY: {
                "dense": self.dense.state_dict(),
                "tables": self.tables.state_dict(),
                "order": [f"{part}:{i}" for part, i in self._order],
            }
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load a state from :meth:`state_dict`, or a plain Adam's over the same model (its
        moments go to the matching parameters; table steps become SparseAdam's counters)."""
        if _KEY in state:
            part = state[_KEY]
            self.dense.load_state_dict(dict(part["dense"]))
            self.tables.load_state_dict(dict(part["tables"]))
            return
        per_param = state.get("state", {})
        if len(state.get("param_groups", [{}])[0].get("params", [])) != len(self._order):
            raise ValueError(
                "the saved optimizer state is for a model with "
                f"{len(state['param_groups'][0]['params'])} parameters, this one has "
                f"{len(self._order)}"
            )
        dense_state: dict[int, Any] = {}
        table_state: dict[int, Any] = {}
        for index, saved in per_param.items():
            part, i = self._order[int(index)]
            moments = {k: v for k, v in saved.items() if k in ("exp_avg", "exp_avg_sq")}
            step = saved.get("step", 0)
            if part == "dense":
                dense_state[i] = {**moments, "step": torch.as_tensor(step, dtype=torch.float32)}
            else:
                table_state[i] = {**moments, "step": int(float(step))}
        self.dense.load_state_dict({"state": dense_state, "param_groups": _groups(self.dense)})
        self.tables.load_state_dict({"state": table_state, "param_groups": _groups(self.tables)})
        for param in self.dense_params:  # fused Adam keeps its step on the parameter's device
            step = self.dense.state.get(param, {}).get("step")
            if isinstance(step, Tensor):
                self.dense.state[param]["step"] = step.to(param.device, torch.float32)


def plain_adam_state(state: Mapping[str, Any]) -> dict[str, Any] | None:
    """A plain Adam state over the model's parameters from a :class:`RowSparseOptimizer`
    state (None when ``state`` is not one): what a dense trainer loads after a row-sparse one."""
    if _KEY not in state:
        return None
    part = state[_KEY]
    order = [(p.split(":")[0], int(p.split(":")[1])) for p in part["order"]]
    saved = {"dense": part["dense"]["state"], "tables": part["tables"]["state"]}
    out: dict[int, Any] = {}
    for index, (name, i) in enumerate(order):
        if i in saved[name]:
            entry = dict(saved[name][i])
            entry["step"] = torch.as_tensor(float(entry.get("step", 0)), dtype=torch.float32)
            out[index] = entry
    group = dict(part["dense"]["param_groups"][0])
    group["params"] = list(range(len(order)))
    return {"state": out, "param_groups": [group]}


def broadcast_module(module: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank, in place (what DDP does when it wraps a
    model); a no-op outside a process group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    with torch.no_grad():
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def _groups(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """``optimizer``'s param groups as ``state_dict`` writes them (settings, parameter ids)."""
    return optimizer.state_dict()["param_groups"]


class GradientExchange:
    """Averages gradients over the ranks of the default process group, in place, in one
    all-gather per step in the common case.

    Every rank packs one float32 buffer: its count of touched table rows (an int64, bit-cast),
    its dense gradients, then up to ``capacity`` rows, each the row's values and its global
    index (table offset + row, an int64 bit-cast into two float32 slots). The buffers are
    all-gathered (bytes are copied, never summed, so the bit-casts survive); when some rank
    touched more rows than ``capacity``, a second all-gather carries the rest. Every rank then
    sums the same parts in rank order (dense) and by row (tables), so every rank gets the same
    gradients, and raises ``capacity`` to 1.25x the most rows seen, a figure every rank derives
    from the same counts. Anything else (tables of different widths, other dtypes) takes the
    general path: one all-reduce for the dense gradients and three all-gathers per width.
    """

    def __init__(self) -> None:
        self.capacity = 0
        """Rows each rank sends in the first all-gather (grows with what the ranks touch)."""

    def __call__(self, dense: Iterable[nn.Parameter], tables: Iterable[nn.Parameter]) -> None:
        dense = [p for p in dense if p.requires_grad]
        tables = list(tables)
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            for p in tables:  # SparseAdam takes sparse gradients only
                if p.grad is not None and not p.grad.is_sparse:
                    idx, val = _touched_rows(p.grad, int(p.shape[1]))
                    p.grad = torch.sparse_coo_tensor(  # rows in range, sorted, unique
                        idx.unsqueeze(0), val, p.shape, check_invariants=False, is_coalesced=True
                    )
            return
        world = dist.get_world_size()
        widths = {int(p.shape[1]) for p in tables}
        dtypes = {p.dtype for p in (*dense, *tables)}
        if len(widths) == 1 and dtypes == {torch.float32}:
            self._packed(dense, tables, world, widths.pop())
            return
        _average_dense(dense, world)
        by_width: dict[int, list[nn.Parameter]] = {}
        for p in tables:
            by_width.setdefault(int(p.shape[1]), []).append(p)
        for params in by_width.values():
            _average_rows(params, world)

    def _packed(
        self, dense: list[nn.Parameter], tables: list[nn.Parameter], world: int, width: int
    ) -> None:
        device = tables[0].device
        idx, val, offsets = _local_rows(tables, width, device)
        n = int(idx.numel())
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in dense]
        dense_len = sum(p.numel() for p in dense)
        row_len = width + 2
        head = 2 + dense_len
        cap = self.capacity
        buffer = torch.zeros(head + cap * row_len, dtype=torch.float32, device=device)
        buffer[:2] = torch.tensor([n], dtype=torch.int64, device=device).view(torch.float32)
        if grads:
            torch.cat([g.reshape(-1) for g in grads], out=buffer[2:head])
        sent = min(n, cap)
        rows = buffer[head:].view(cap, row_len)
        rows[:sent, :width] = val[:sent]
        rows[:sent, width:] = idx[:sent].view(torch.float32).view(sent, 2)
        parts = [torch.empty_like(buffer) for _ in range(world)]
        dist.all_gather(parts, buffer)
        counts = [int(part[:2].view(torch.int64)) for part in parts]
        most = max(counts)
        extra_parts: list[Tensor] = []
        if most > cap:  # a second round for the rows beyond the capacity
            more = most - cap
            extra = torch.zeros(more, row_len, dtype=torch.float32, device=device)
            rest = max(0, n - cap)
            extra[:rest, :width] = val[cap:]
            extra[:rest, width:] = idx[cap:].view(torch.float32).view(rest, 2)
            extra_parts = [torch.empty_like(extra) for _ in range(world)]
            dist.all_gather(extra_parts, extra)
            self.capacity = int(most * 1.25) + 1
        if grads:
            total = parts[0][2:head].clone()
            for part in parts[1:]:
                total += part[2:head]
            total /= world
            offset = 0
            for p in dense:
                p.grad = total[offset : offset + p.numel()].view_as(p)
                offset += p.numel()
        pieces = []
        for r, part in enumerate(parts):
            pieces.append(part[head:].view(cap, row_len)[: min(counts[r], cap)])
            if extra_parts:
                pieces.append(extra_parts[r][: max(0, counts[r] - cap)])
        gathered = torch.cat(pieces)
        all_idx = gathered[:, width:].contiguous().view(torch.int64).view(-1)
        all_val = gathered[:, :width] / world
        _assign_rows(tables, offsets, all_idx, all_val)


def _local_rows(
    tables: list[nn.Parameter], width: int, device: torch.device
) -> tuple[Tensor, Tensor, list[int]]:
    """This rank's touched rows of every table: global indices (table offset + row), values,
    and each table's offset."""
    offsets, total = [], 0
    indices, values = [], []
    for p in tables:
        idx, val = _touched_rows(p.grad, width)
        indices.append(idx.to(device) + total)
        values.append(val.to(device=device, dtype=p.dtype))
        offsets.append(total)
        total += int(p.shape[0])
    return torch.cat(indices), torch.cat(values), offsets


def _assign_rows(tables: list[nn.Parameter], offsets: list[int], idx: Tensor, val: Tensor) -> None:
    """Give each table the rows of ``idx``/``val`` in its range, summed by row."""
    for p, start in zip(tables, offsets, strict=True):
        rows = int(p.shape[0])
        mine = (idx >= start) & (idx < start + rows)
        p.grad = torch.sparse_coo_tensor(  # rows in range by the mask; coalesce sums repeats
            (idx[mine] - start).unsqueeze(0), val[mine], p.shape, check_invariants=False
        ).coalesce()


def _average_dense(params: list[nn.Parameter], world: int) -> None:
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p)
        offset += n


def _touched_rows(grad: Tensor | None, width: int) -> tuple[Tensor, Tensor]:
    """(row indices (N,), values (N, width)) of a table's gradient: the coalesced entries of a
    sparse one, the nonzero rows of a dense one (a penalty over every row)."""
    if grad is None:
        return torch.empty(0, dtype=torch.int64), torch.empty(0, width)
    if grad.is_sparse:
        grad = grad.coalesce()
        return grad.indices()[0], grad.values()
    rows_nz = grad.ne(0).any(dim=1).nonzero().squeeze(1)
    return rows_nz, grad.index_select(0, rows_nz)


def _average_rows(params: list[nn.Parameter], world: int) -> None:
    """All-gather every rank's touched rows of ``params`` (tables of one width), concatenated
    with each table's rows offset, then give each table the summed rows / world."""
    device = params[0].device
    width = int(params[0].shape[1])
    idx, val, offsets = _local_rows(params, width, device)
    counts = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([idx.numel()], dtype=torch.int64, device=device))
    sizes = [int(c.item()) for c in counts]
    most = max(sizes)
    if most == 0:  # no rank touched a row of these tables in this step
        for p in params:
            p.grad = None
        return
    padded_idx = torch.zeros(most, dtype=torch.int64, device=device)
    padded_val = torch.zeros(most, width, dtype=val.dtype, device=device)
    padded_idx[: idx.numel()] = idx
    padded_val[: idx.numel()] = val
    all_idx = [torch.empty_like(padded_idx) for _ in range(world)]
    all_val = [torch.empty_like(padded_val) for _ in range(world)]
    dist.all_gather(all_idx, padded_idx)
    dist.all_gather(all_val, padded_val)
    idx = torch.cat([t[:n] for t, n in zip(all_idx, sizes, strict=True)])
    val = torch.cat([t[:n] for t, n in zip(all_val, sizes, strict=True)]) / world
    _assign_rows(params, offsets, idx, val)
