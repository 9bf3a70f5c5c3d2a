"""The ranker, built from named parts in the manner of DLRM.

Shapes: B = batch rows, F = number of sparse features (5 id features + pooled query = 6),
D = embedding dim, T = query tokens.

The click logit in training is ``relevance(x) + position_bias[position]``: position bias is
learned so that relevance is not blamed for the position an item was shown at, and serving
scores use ``relevance(x)`` alone (``use_position=False``).

Serving scores many candidates of the same search: ``relevance(inputs, groups)`` takes the
search-level inputs (``features.encode.SEARCH_KEYS``: user, device, query) once per search and
embeds them once per search, which gives bit for bit the scores of the row-per-candidate inputs
(an embedding row, or a bag's mean, does not depend on the other rows) at less cost: a batch of
540 candidates from 5 searches pools 5 query bags instead of 540.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from freshrank.features.encode import DENSE_DIM, ID_FEATURES, SEARCH_KEYS
from freshrank.model.config import RankerConfig


class MLP(nn.Sequential):
    """Linear layers with a ReLU after each but the last (after the last too with
    ``final_activation``).

    An ``nn.Sequential`` (the parameters keep its names: ``0.weight``, ``2.weight``, ...) whose
    forward applies each layer's function itself, one module call instead of one per layer:
    the same operations on the same tensors (bit for bit), 0.01-0.03 ms less per pass.
    """

    def __init__(self, sizes: list[int], final_activation: bool) -> None:
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i < len(sizes) - 2 or final_activation:
                layers.append(nn.ReLU())
        super().__init__(*layers)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self._modules.values():
            kind = type(layer)
            if kind is nn.Linear:
                x = F.linear(x, layer.weight, layer.bias)
            elif kind is nn.ReLU:
                x = torch.relu(x)
            else:  # anything put in later: its own call
                x = layer(x)
        return x


class SparseArch(nn.Module):
    """Embeds id features and the query tokens.

    Input: the id keys, each (B,) int64, and ``query`` (B, T) int64 with 0 = padding.
    Output: (B, F, D) with F = len(ID_FEATURES) + 1 (mean-pooled query tokens last).
    """

    def __init__(self, config: RankerConfig) -> None:
        super().__init__()
        fc, d = config.features, config.embedding_dim
        self.tables = nn.ModuleDict(
            {name: nn.Embedding(fc.buckets(name), d) for name in ID_FEATURES}
        )
        self.query = nn.EmbeddingBag(fc.query_buckets, d, mode="mean", padding_idx=0)
        for table in (*self.tables.values(), self.query):
            nn.init.normal_(table.weight, std=0.05)
        self.sparse_grad = False
        """Whether backward gives the tables row-sparse gradients (only the rows a batch looked
        up); set through :meth:`Ranker.use_sparse_gradients`."""

    def table_weights(self) -> list[nn.Parameter]:
        """The embedding tables' weights, each (rows, D): what row-sparse training updates
        row by row."""
        return [*(t.weight for t in self.tables.values()), self.query.weight]

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        return torch.stack(self.embed(inputs), dim=1)

    def embed(self, inputs: Mapping[str, Tensor], groups: Tensor | None = None) -> list[Tensor]:
        """The F vectors, each (B, D), in ``ID_FEATURES`` order and the pooled query last.

        With ``groups`` (B,) int64, the search-level inputs (``SEARCH_KEYS``) hold one row per
        search and ``groups[i]`` is the search of row ``i``: each search is embedded once and
        its vectors repeated, bit for bit the vectors of the repeated inputs.
        """
        # The tables' functions called directly (what nn.Embedding's forward calls with the
        # default options these tables use): one module call fewer per table.
        tables = self.tables
        embedded = []
        for name in ID_FEATURES:
            vectors = F.embedding(inputs[name], tables[name].weight, sparse=self.sparse_grad)
            if groups is not None and name in SEARCH_KEYS:
                vectors = vectors.index_select(0, groups)
            embedded.append(vectors)
        query = self.query(inputs["query"])
        embedded.append(query if groups is None else query.index_select(0, groups))
        return embedded


class DenseArch(nn.Module):
    """MLP over dense features. Input (B, DENSE_DIM) float; output (B, D)."""

    def __init__(self, config: RankerConfig) -> None:
        super().__init__()
        self.mlp = MLP([DENSE_DIM, *config.dense_hidden, config.embedding_dim], True)

    def forward(self, dense: Tensor) -> Tensor:
        return self.mlp(dense)


class InteractionArch(nn.Module):
    """Pairwise dot products between all F + 1 vectors (sparse and dense), plus the dense vector.

    Input: dense (B, D), sparse (B, F, D). Output: (B, D + (F + 1) * F / 2).
    """

    def __init__(self, num_sparse: int) -> None:
        super().__init__()
        n = num_sparse + 1
        rows, cols = torch.triu_indices(n, n, offset=1)
        # The pairs above the diagonal as positions in the flattened (F+1) x (F+1) gram
        # matrix: one index_select picks them, bit for bit what gram[:, rows, cols] gives and
        # 0.06 ms less per 600 rows than that advanced indexing.
        self.register_buffer("pairs", rows * n + cols, persistent=False)

    @staticmethod
    def output_dim(num_sparse: int, embedding_dim: int) -> int:
        """Width of the output for F sparse features of dim D."""
        n = num_sparse + 1
        return embedding_dim + n * (n - 1) // 2

    def forward(self, dense: Tensor, sparse: Tensor) -> Tensor:
        return self.interact(torch.cat([dense.unsqueeze(1), sparse], dim=1), dense)

    def interact(self, stacked: Tensor, dense: Tensor) -> Tensor:
        """:meth:`forward` of the vectors already stacked: ``stacked`` (B, F+1, D) holds
        ``dense`` first, then the sparse ones (one copy fewer than stacking the sparse vectors
        and then adding the dense one)."""
        gram = torch.bmm(stacked, stacked.transpose(1, 2))  # (B, F+1, F+1)
        return torch.cat([dense, gram.flatten(1).index_select(1, self.pairs)], dim=1)


class OverArch(nn.Module):
    """MLP from the interaction output to one relevance logit. Input (B, I); output (B,)."""

    def __init__(self, in_dim: int, config: RankerConfig) -> None:
        super().__init__()
        self.mlp = MLP([in_dim, *config.over_hidden, 1], False)

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x).squeeze(-1)


class PositionBias(nn.Module):
    """A learned additive logit per display position. Input (B,) int64; output (B,)."""

    def __init__(self, max_position: int) -> None:
        super().__init__()
        self.bias = nn.Embedding(max_position, 1)
        nn.init.zeros_(self.bias.weight)

    def forward(self, position: Tensor) -> Tensor:
        return self.bias(position).squeeze(-1)


class Ranker(nn.Module):
    """Click model: relevance from sparse + dense parts, plus position bias in training."""

    def __init__(self, config: RankerConfig) -> None:
        super().__init__()
        self.config = config
        num_sparse = len(ID_FEATURES) + 1
        self.sparse = SparseArch(config)
        self.dense = DenseArch(config)
        self.interaction = InteractionArch(num_sparse)
        self.over = OverArch(InteractionArch.output_dim(num_sparse, config.embedding_dim), config)
        self.position = PositionBias(config.features.max_position)

    def table_weights(self) -> list[nn.Parameter]:
        """The embedding tables' weights (see :meth:`SparseArch.table_weights`)."""
        return self.sparse.table_weights()

    def use_sparse_gradients(self, on: bool = True) -> Ranker:
        """Give the embedding tables row-sparse gradients in backward (``on``) or dense ones
        (the default). Values and the state dict are unchanged; an optimizer for sparse
        gradients (``learn.row_sparse``) must step the tables. Returns ``self``."""
        self.sparse.sparse_grad = bool(on)
        self.sparse.query.sparse = bool(on)
        return self

    def relevance(self, inputs: Mapping[str, Tensor], groups: Tensor | None = None) -> Tensor:
        """Relevance logits (B,), independent of display position: what serving ranks by.

        ``groups``: the search of each row, when the search-level inputs hold one row per
        search (see the module docstring; ``SparseArch.embed``).
        """
        vectors = self.sparse.embed(inputs, groups)
        dense = self.dense(inputs["dense"])
        stacked = torch.stack([dense, *vectors], dim=1)
        return self.over(self.interaction.interact(stacked, dense))

    def forward(self, inputs: Mapping[str, Tensor], use_position: bool = True) -> Tensor:
        """Click logits (B,); with ``use_position=False`` the relevance logits alone."""
        logits = self.relevance(inputs)
        if use_position:
            logits = logits + self.position(inputs["position"])
        return logits
