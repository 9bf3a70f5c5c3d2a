"""Scoring a batch of requests in one forward pass gives each request its own answer."""

import numpy as np
import torch
from _serving_reference import rank_request, rank_requests

from freshrank.features.encode import FeatureConfig
from freshrank.model.config import RankerConfig
from freshrank.model.ranker import Ranker
from freshrank.registry.checkpoint import ServingModel
from freshrank.serving.api import RankRequest, RankResponse
from freshrank.serving.scoring import rank_requests_json, responses_json, score_batch


def _served():
    torch.manual_seed(0)
    features = FeatureConfig(
        user_buckets=11, item_buckets=101, category_buckets=5, brand_buckets=5, query_buckets=17
    )
    model = Ranker(RankerConfig(features=features, embedding_dim=4))
    model.eval()
    return ServingModel(3, model, None, {})


def _req(user, n, query="shoes", device=None):
    return RankRequest(
        user_id=user,
        query=query,
        device=device,
        candidates=[{"item_id": f"{user}-{i}", "price": float(i), "brand": "b"} for i in range(n)],
    )


def test_batch_equals_one_by_one_and_keeps_order():
    served = _served()
    reqs = [_req("a", 5), _req("b", 1, query="", device="ios"), _req("c", 17, query="red hat")]
    batched = rank_requests(served, reqs)
    single = [rank_request(served, r) for r in reqs]
    assert [len(b.ranked) for b in batched] == [5, 1, 17]
    for b, s in zip(batched, single, strict=True):
        assert [i.item_id for i in b.ranked] == [i.item_id for i in s.ranked]
        np.testing.assert_allclose(
            [i.score for i in b.ranked], [i.score for i in s.ranked], rtol=1e-5, atol=1e-6
        )
        assert b.model_version == 3


def test_one_forward_pass_for_the_batch(monkeypatch):
    served = _served()
    calls = []
    original = served.model.relevance

    def counting(inputs, groups=None):
        calls.append((inputs["item"].shape[0], inputs["user"].shape[0], groups.tolist()))
        return original(inputs, groups)

    monkeypatch.setattr(served.model, "relevance", counting)
    scores = score_batch(served, [_req("a", 4), _req("b", 6)])
    # one pass over the 10 candidates, with the two searches' own features once each
    assert calls == [(10, 2, [0] * 4 + [1] * 6)] and [len(s) for s in scores] == [4, 6]
    assert score_batch(served, []) == []


def test_json_answers_are_byte_identical_to_the_response_model():
    served = _served()
    reqs = [_req("a", 5), _req("b", 1, query="", device="ios"), _req("ü", 17, query="Red HAT")]
    models = rank_requests(served, reqs)
    assert rank_requests_json(served, reqs) == [m.model_dump_json().encode() for m in models]
    # non-finite scores serialise as the response model does (null), ties keep input order
    scores = [np.array([np.nan, np.inf, -np.inf, 1e-7, 1e16]), np.array([0.5]), np.zeros(17)]
    bodies = responses_json(served, reqs, scores)
    for body, req, s in zip(bodies, reqs, scores, strict=True):
        order = np.argsort(-s, kind="stable")
        want = RankResponse(
            model_version=3,
            ranked=[
                {"item_id": req.candidates[i].item_id, "score": float(s[i]), "rank": r}
                for r, i in enumerate(order)
            ],
        )
        assert body == want.model_dump_json().encode()
    assert b"null" in bodies[0] and b"NaN" not in bodies[0]
