import numpy as np
import pytest
from _serving_reference import rank_request, score_candidates
from pydantic import ValidationError

from freshrank.features.encode import FeatureConfig
from freshrank.model.config import RankerConfig
from freshrank.model.ranker import Ranker
from freshrank.registry.checkpoint import ServingModel
from freshrank.serving.api import MAX_CANDIDATES, RankRequest


def _served(version=7):
    model = Ranker(
        RankerConfig(features=FeatureConfig(user_buckets=11, item_buckets=101), embedding_dim=4)
    )
    model.eval()
    return ServingModel(version, model, 123.0, {})


def _request(n=5, **kw):
    body = {
        "user_id": "u1",
        "query": "red shoes",
        "candidates": [{"item_id": f"i{i}", "price": float(i)} for i in range(n)],
    }
    body.update(kw)
    return body


def test_rank_orders_by_score_and_names_version():
    served = _served()
    req = RankRequest(**_request(20))
    resp = rank_request(served, req)
    scores = score_candidates(served, req)
    assert resp.model_version == 7
    assert [r.item_id for r in resp.ranked] == [f"i{i}" for i in np.argsort(-scores, kind="stable")]
    assert [r.rank for r in resp.ranked] == list(range(20))
    got = [r.score for r in resp.ranked]
    assert got == sorted(got, reverse=True)


def test_scores_do_not_depend_on_candidate_order():
    served = _served()
    a = RankRequest(**_request(6))
    b = RankRequest(**{**_request(6), "candidates": list(reversed(_request(6)["candidates"]))})
    sa = dict(zip([c.item_id for c in a.candidates], score_candidates(served, a), strict=True))
    sb = dict(zip([c.item_id for c in b.candidates], score_candidates(served, b), strict=True))
    for k in sa:
        assert sa[k] == pytest.approx(sb[k], abs=1e-6)


@pytest.mark.parametrize(
    "body, where",
    [
        ({"query": "x", "candidates": [{"item_id": "a"}]}, "user_id"),
        (_request(0), "candidates"),
        (_request(MAX_CANDIDATES + 1), "candidates"),
        (_request(1, candidates=[{"item_id": "a", "price": -1}]), "price"),
        (_request(1, candidates=[{"item_id": ""}]), "item_id"),
        (_request(1, candidates=[{"item_id": "a", "colour": "red"}]), "colour"),
        (_request(1, user_id="u" * 500), "user_id"),
        # strict types: no coercion (issue 17, fault 9)
        (_request(1, candidates=[{"item_id": "a", "price": True}]), "price"),
        (_request(1, candidates=[{"item_id": "a", "price": "5"}]), "price"),
        (_request(1, candidates=[{"item_id": 5}]), "item_id"),
        (_request(1, user_id=7), "user_id"),
        (_request(1, device=True), "device"),
    ],
)
def test_bad_requests_say_what_is_wrong(body, where):
    with pytest.raises(ValidationError) as info:
        RankRequest(**body)
    assert where in str(info.value)
