import numpy as np
import pyarrow as pa
import pytest
import torch

from freshrank.events.schema import FILE_SCHEMA
from freshrank.features.encode import (
    ID_FEATURES,
    INPUT_KEYS,
    SEARCH_KEYS,
    FeatureConfig,
    candidates_table,
    concat_inputs,
    encode,
    slice_inputs,
)
from freshrank.model.config import RankerConfig
from freshrank.model.device import to_tensors
from freshrank.model.ranker import InteractionArch, Ranker

FC = FeatureConfig(user_buckets=101, item_buckets=211, query_buckets=307, max_position=8)


def _events(n: int) -> pa.Table:
    rng = np.random.default_rng(0)
    return pa.Table.from_pydict(
        {
            "event_id": [f"e{i}" for i in range(n)],
            "event_time": pa.array(np.arange(n) * 1_000_000, pa.timestamp("us", tz="UTC")),
            "request_id": [f"r{i // 5}" for i in range(n)],
            "user_id": [f"u{i % 7}" for i in range(n)],
            "query": ["red shoes" if i % 2 else None for i in range(n)],
            "item_id": [f"i{i}" for i in range(n)],
            "position": [i % 12 for i in range(n)],
            "category": ["c1"] * n,
            "brand": [None] * n,
            "price": rng.uniform(0, 100, n).tolist(),
            "device": ["mobile"] * n,
            "clicked": [i % 3 == 0 for i in range(n)],
            "purchased": [False] * n,
        },
        schema=FILE_SCHEMA,
    )


def test_encode_shapes_and_types():
    enc = encode(_events(20), FC)
    assert set(enc) == set(INPUT_KEYS)
    for key in ("user", "item", "category", "brand", "device", "position"):
        assert enc[key].shape == (20,) and enc[key].dtype == np.int64
    assert enc["query"].shape == (20, FC.max_query_tokens)
    assert enc["dense"].shape == (20, 2) and enc["dense"].dtype == np.float32
    assert enc["label"].tolist() == [float(i % 3 == 0) for i in range(20)]
    assert enc["position"].max() == FC.max_position - 1  # clipped
    assert (enc["brand"] == 0).all()  # missing
    assert (enc["query"][0] == 0).all() and (enc["query"][1, :2] > 0).all()


def test_training_row_and_request_candidate_encode_identically():
    # The same user/query/item seen in training and asked about at serving time.
    events = _events(3).slice(1, 1)
    row = events.to_pylist()[0]
    request = candidates_table(
        row["user_id"],
        row["query"],
        [{k: row[k] for k in ("item_id", "category", "brand", "price")}],
        device=row["device"],
    )
    a, b = encode(events, FC), encode(request, FC)
    for key in ("user", "item", "category", "brand", "device", "query", "dense"):
        np.testing.assert_array_equal(a[key], b[key])


def test_unseen_ids_and_empty_table():
    enc = encode(candidates_table("never-seen", "", [{"item_id": "new-item"}]), FC)
    assert 1 <= enc["item"][0] < FC.item_buckets and (enc["query"] == 0).all()
    empty = encode(FILE_SCHEMA.empty_table(), FC)
    assert all(len(v) == 0 for v in empty.values())


def test_encode_does_not_mutate_input():
    t = _events(10)
    before = t.to_pylist()
    encode(t, FC)
    assert t.to_pylist() == before


def test_price_edge_cases():
    t = candidates_table(
        "u", "q", [{"item_id": "a", "price": None}, {"item_id": "b", "price": 0.0}]
    )
    dense = encode(t, FC)["dense"]
    assert dense[0].tolist() == [0.0, 1.0] and dense[1].tolist() == [0.0, 0.0]


def test_slice_and_concat_roundtrip():
    enc = encode(_events(10), FC)
    parts = [slice_inputs(enc, slice(0, 4)), slice_inputs(enc, slice(4, 10))]
    joined = concat_inputs(parts)
    for k in enc:
        np.testing.assert_array_equal(joined[k], enc[k])


def test_ranker_shapes_and_position_only_in_training():
    cfg = RankerConfig(features=FC, embedding_dim=8)
    model = Ranker(cfg)
    inputs = to_tensors(encode(_events(16), FC), torch.device("cpu"))
    with torch.no_grad():
        model.position.bias.weight.fill_(0.0)
        model.position.bias.weight[3] = 5.0
        train_logits = model(inputs)
        serve_logits = model(inputs, use_position=False)
    assert train_logits.shape == serve_logits.shape == (16,)
    pos = inputs["position"]
    np.testing.assert_allclose(
        (train_logits - serve_logits).numpy(), np.where(pos.numpy() == 3, 5.0, 0.0), atol=1e-5
    )
    assert model.sparse(inputs).shape == (16, 6, 8)
    assert InteractionArch.output_dim(6, 8) == 8 + 21


def test_interaction_pairs_are_the_upper_triangle_bit_for_bit():
    """The flattened-gram index_select equals the (rows, cols) indexing it replaced, values and
    gradients, and pairs every vector once with each later one."""
    torch.manual_seed(0)
    arch = InteractionArch(num_sparse=6)
    dense = torch.randn(300, 8, requires_grad=True)
    sparse = torch.randn(300, 6, 8, requires_grad=True)
    out = arch(dense, sparse)
    stacked = torch.cat([dense.unsqueeze(1), sparse], dim=1)
    rows, cols = torch.triu_indices(7, 7, offset=1)
    want = torch.cat([dense, torch.bmm(stacked, stacked.transpose(1, 2))[:, rows, cols]], dim=1)
    assert torch.equal(out, want)
    g_out = torch.autograd.grad(out.square().sum(), (dense, sparse))
    g_want = torch.autograd.grad(want.square().sum(), (dense, sparse))
    assert all(torch.equal(a, b) for a, b in zip(g_out, g_want, strict=True))
    # pair k is (rows[k], cols[k]): vector 0 (dense) with 1, ..., 5 with 6
    expected = (stacked[:, 2] * stacked[:, 5]).sum(-1)
    k = [(int(r), int(c)) for r, c in zip(rows, cols, strict=True)].index((2, 5))
    torch.testing.assert_close(out[:, 8 + k], expected)


def _layer_by_layer_relevance(model: Ranker, inputs: dict) -> torch.Tensor:
    """The ranker's relevance computed the plain way: every part through its module call,
    sparse vectors stacked first and the dense one put in front, pairs by advanced indexing."""
    sparse_arch = model.sparse
    embedded = [sparse_arch.tables[name](inputs[name]) for name in ID_FEATURES]
    sparse = torch.stack([*embedded, sparse_arch.query(inputs["query"])], dim=1)
    dense = torch.nn.Sequential.forward(model.dense.mlp, inputs["dense"])
    stacked = torch.cat([dense.unsqueeze(1), sparse], dim=1)
    rows, cols = torch.triu_indices(stacked.shape[1], stacked.shape[1], offset=1)
    gram = torch.bmm(stacked, stacked.transpose(1, 2))
    interaction = torch.cat([dense, gram[:, rows, cols]], dim=1)
    return torch.nn.Sequential.forward(model.over.mlp, interaction).squeeze(-1)


def test_relevance_is_the_layer_by_layer_computation_bit_for_bit():
    """Stacking once, the MLPs' direct layer functions and the tables' direct lookups change
    no value and no gradient, and the parameters keep their names (old checkpoints load)."""
    torch.manual_seed(0)
    model = Ranker(RankerConfig(features=FC, embedding_dim=8, over_hidden=(16, 8)))
    inputs = to_tensors(encode(_events(200), FC), torch.device("cpu"))
    out = model.relevance(inputs)
    want = _layer_by_layer_relevance(model, inputs)
    assert torch.equal(out, want)
    params = [p for _, p in model.named_parameters()]
    g_out = torch.autograd.grad(out.square().sum(), params, allow_unused=True)
    g_want = torch.autograd.grad(want.square().sum(), params, allow_unused=True)
    for (name, _), a, b in zip(model.named_parameters(), g_out, g_want, strict=True):
        assert (a is None and b is None) or torch.equal(a, b), name
    assert {k for k in model.state_dict() if "mlp" in k} == {
        "dense.mlp.0.weight",
        "dense.mlp.0.bias",
        "dense.mlp.2.weight",
        "dense.mlp.2.bias",
        "over.mlp.0.weight",
        "over.mlp.0.bias",
        "over.mlp.2.weight",
        "over.mlp.2.bias",
        "over.mlp.4.weight",
        "over.mlp.4.bias",
    }


@pytest.mark.parametrize("sizes", [[1], [5, 1, 3], [4, 4, 4, 4, 4, 4, 4, 4]])
def test_relevance_by_search_equals_relevance_by_row(sizes):
    """Search-level inputs given once per search (``groups``) score bit for bit as the same
    inputs repeated on every row of the search."""
    torch.manual_seed(1)
    rng = np.random.default_rng(len(sizes))
    model = Ranker(RankerConfig(features=FC, embedding_dim=8)).eval()
    n, s = sum(sizes), len(sizes)
    groups = np.repeat(np.arange(s), sizes)
    per_search = {
        "user": rng.integers(0, FC.user_buckets, s),
        "device": rng.integers(0, FC.device_buckets, s),
        "query": rng.integers(0, FC.query_buckets, (s, FC.max_query_tokens)),
    }
    per_search["query"][0, 2:] = 0  # padding
    inputs = {
        "item": rng.integers(0, FC.item_buckets, n),
        "category": rng.integers(0, FC.category_buckets, n),
        "brand": rng.integers(0, FC.brand_buckets, n),
        "dense": rng.normal(size=(n, 2)).astype(np.float32),
    }
    assert set(per_search) == set(SEARCH_KEYS)
    by_row = {**inputs, **{k: v[groups] for k, v in per_search.items()}}
    with torch.inference_mode():
        want = model.relevance({k: torch.from_numpy(v) for k, v in by_row.items()})
        got = model.relevance(
            {k: torch.from_numpy(v) for k, v in {**inputs, **per_search}.items()},
            torch.from_numpy(groups),
        )
    assert got.shape == (n,)
    assert torch.equal(got, want)


def test_ranker_handles_empty_batch_with_gradients():
    model = Ranker(RankerConfig(features=FC, embedding_dim=4))
    inputs = to_tensors(encode(FILE_SCHEMA.empty_table(), FC), torch.device("cpu"))
    out = model(inputs)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        out, inputs["label"], reduction="sum"
    )
    loss.backward()
    assert out.shape == (0,) and float(loss.detach()) == 0.0


def test_ranker_learns_a_simple_signal():
    torch.manual_seed(0)
    t = _events(400)
    enc = encode(t, FC)
    # clicked iff the item's category... use item parity: learnable via item embedding
    enc["label"] = (enc["item"] % 2).astype(np.float32)
    model = Ranker(RankerConfig(features=FC, embedding_dim=8))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    x = to_tensors(enc, torch.device("cpu"))
    first = None
    for _ in range(150):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), x["label"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else float(loss.detach())
    assert float(loss.detach()) < 0.3 < first


def test_config_validation_messages():
    with pytest.raises(ValueError, match="item_buckets must be >= 2"):
        FeatureConfig(item_buckets=0)
    with pytest.raises(ValueError, match="over_hidden sizes"):
        RankerConfig(over_hidden=(4, 0))
