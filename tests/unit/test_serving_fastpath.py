"""The /rank fast path answers what FastAPI answered, and leaves every other request to it."""

import asyncio
import json

import pytest
from _serving_reference import rank_request
from fastapi import Response
from fastapi.testclient import TestClient

from freshrank.features.encode import FeatureConfig
from freshrank.model.config import RankerConfig
from freshrank.model.ranker import Ranker
from freshrank.registry.checkpoint import ServingModel
from freshrank.serving.api import RankRequest, RankResponse
from freshrank.serving.app import _create_app
from freshrank.serving.fastpath import is_json, route_path
from freshrank.serving.scoring import rank_requests_json

BODY = {
    "user_id": "u1",
    "query": "red shoes",
    "candidates": [{"item_id": f"i{i}", "price": float(i), "brand": "b"} for i in range(12)],
}


class FakeServer:
    """What the Serve replica gives the app: ``answer`` and ``count``."""

    def __init__(self, served: ServingModel) -> None:
        self.served = served
        self.answered: list[RankRequest] = []
        self.alone: list[bool] = []
        self.counts: list[str] = []

    async def answer(self, request: RankRequest, alone: bool = False) -> Response:
        self.answered.append(request)
        self.alone.append(alone)
        (body,) = rank_requests_json(self.served, [request])
        return Response(body, media_type="application/json", headers={"X-Model-Version": "4"})

    def count(self, status: str, n: int = 1) -> None:
        self.counts += [status] * n


@pytest.fixture()
def app_and_server():
    model = Ranker(
        RankerConfig(features=FeatureConfig(user_buckets=11, item_buckets=101), embedding_dim=4)
    )
    model.eval()
    server = FakeServer(ServingModel(4, model, None, {}))
    app = _create_app(max_body_bytes=64 * 1024)
    app.state.server = server
    route_calls = []

    @app.post("/rank", response_model=RankResponse)
    async def rank(request: RankRequest) -> Response:
        route_calls.append(request)
        return await server.answer(request)

    return app, server, route_calls


def test_valid_json_is_answered_without_the_route(app_and_server):
    app, server, route_calls = app_and_server
    with TestClient(app) as client:
        r = client.post("/rank", json=BODY)
    assert r.status_code == 200 and r.headers["x-model-version"] == "4"
    assert r.headers["content-type"] == "application/json"
    assert route_calls == [] and len(server.answered) == 1
    want = rank_request(server.served, RankRequest(**BODY)).model_dump_json()
    assert r.content == want.encode()  # byte for byte what the response model serialises to


@pytest.mark.parametrize(
    "content, headers",
    [
        (json.dumps({"user_id": "u1", "candidates": []}), None),
        (json.dumps({"candidates": [{"item_id": "a"}]}), None),
        (json.dumps({"user_id": "u", "candidates": [{"item_id": "a", "price": "cheap"}]}), None),
        (json.dumps({"user_id": "u", "candidates": [{"item_id": "a"}], "extra": 1}), None),
        (json.dumps({"user_id": "u", "candidates": [{"item_id": "a", "price": -1}]}), None),
        ("{not json", None),
        ("", None),
        ("[1, 2]", None),
        ('{"user_id": "u", "candidates": [{"item_id": "a", "price": NaN}]}', None),
        (json.dumps(BODY), {"content-type": "text/plain"}),
        (json.dumps(BODY), {"content-type": "application/vnd.api+json"}),
        # strict types on both paths (issue 17, fault 9): no coercion, 422 naming the field
        (json.dumps({"user_id": "u", "candidates": [{"item_id": "a", "price": "9.5"}]}), None),
        (json.dumps({"user_id": "u", "candidates": [{"item_id": "a", "price": True}]}), None),
        (json.dumps({"user_id": 7, "candidates": [{"item_id": "a"}]}), None),
        (json.dumps({"user_id": "u", "candidates": [{"item_id": 7}]}), None),
        (json.dumps({"user_id": "u", "candidates": [{"item_id": "a", "brand": 3}]}), None),
        (json.dumps({"user_id": "u", "query": 5, "candidates": [{"item_id": "a"}]}), None),
        (json.dumps({"user_id": "u", "device": False, "candidates": [{"item_id": "a"}]}), None),
        # not UTF-8: FastAPI cannot parse it at all (the documented 400)
        (b'{"user_id": "\xff", "candidates": [{"item_id": "a"}]}', None),
    ],
)
def test_answers_equal_fastapis_own(app_and_server, content, headers):
    """The same request with the fast path on and off (no answer function: FastAPI does it all)
    gets the same status and body; invalid ones are counted once, as client errors."""
    app, server, route_calls = app_and_server
    headers = headers or {"content-type": "application/json"}
    body = content if isinstance(content, bytes) else content.encode()
    with TestClient(app) as client:
        fast = client.post("/rank", content=body, headers=headers)
        fast_counts = list(server.counts)
        app.state.server = None
        slow = client.post("/rank", content=body, headers=headers)
        app.state.server = server
    assert fast.status_code == slow.status_code
    assert fast.content == slow.content
    if fast.status_code == 422:
        assert fast_counts == ["client_error"] and server.answered == []
    wrong_type = {"9.5": "price", "true": "price", '"user_id": 7': "user_id"}
    for needle, field in wrong_type.items():
        if needle in body.decode("utf-8", "replace"):
            assert fast.status_code == 422 and field in fast.text, (needle, fast.text)
    if b"\xff" in body:
        assert fast.status_code == 400 and route_calls == []


def test_other_requests_go_to_fastapi(app_and_server):
    app, server, route_calls = app_and_server
    with TestClient(app) as client:
        # no content type: FastAPI's own rules apply (strict content type: refused)
        r = client.post("/rank", content=json.dumps(BODY).encode())
        assert r.status_code == 422 and route_calls == []
        # a JSON type the fast path leaves alone is not one FastAPI takes either
        r = client.post(
            "/rank", content=json.dumps(BODY).encode(), headers={"content-type": "text/json"}
        )
        assert r.status_code == 422 and route_calls == []
        assert client.get("/rank").status_code == 405
        assert client.post("/rank/x", json=BODY).status_code == 404
        assert client.get("/openapi.json").json()["paths"]["/rank"]["post"]
    assert server.answered == route_calls  # only the route's own call


def test_size_limit_still_comes_first(app_and_server):
    app, server, _ = app_and_server
    big = dict(BODY, candidates=BODY["candidates"] * 200)
    with TestClient(app) as client:
        r = client.post("/rank", json=big)
    assert r.status_code == 413 and r.json()["limit_bytes"] == 64 * 1024
    assert server.answered == [] and server.counts == ["client_error"]


@pytest.mark.parametrize(
    "path, root, want",
    [
        ("/rank", "", "/rank"),
        ("/ranking/rank", "/ranking", "/rank"),
        ("/ranking", "/ranking", ""),
        ("/rankingx/rank", "/ranking", "/rankingx/rank"),
        ("/other/rank", "/ranking", "/other/rank"),
    ],
)
def test_route_path_strips_the_mount_like_starlette(path, root, want):
    from starlette._utils import get_route_path

    scope = {"path": path, "root_path": root}
    assert route_path(scope) == want == get_route_path(scope)


@pytest.mark.parametrize(
    "value, want",
    [
        (b"application/json", True),
        (b"Application/JSON; charset=utf-8", True),
        (b"application/problem+json", True),
        (b"text/json", False),
        (b"application/x-www-form-urlencoded", False),
    ],
)
def test_is_json(value, want):
    assert is_json({"headers": [(b"content-type", value)]}) is want
    assert is_json({"headers": []}) is False


def _rank_scope() -> dict:
    """The ASGI scope of a JSON ``POST /rank`` as a replica's server passes it."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/rank",
        "raw_path": b"/rank",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8000),
    }


async def _post(app, raw: bytes, release: asyncio.Event | None = None) -> int:
    """Send one JSON ``POST /rank`` of ``raw`` through the ASGI ``app``; its status. With
    ``release`` the body arrives only once it is set (as when a replica fetches it from the
    proxy); without, it is there at once (direct ingress)."""
    delivered = False

    async def receive():
        nonlocal delivered
        if release is not None:
            await release.wait()
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await asyncio.sleep(60)
        return {"type": "http.disconnect"}

    sent = []

    async def send(message):
        sent.append(message)

    await app(_rank_scope(), receive, send)
    return sent[0]["status"]


def test_a_request_is_told_whether_it_is_alone(app_and_server):
    """Counted from the first byte: one still waiting for its body makes the other not alone."""
    app, server, _ = app_and_server
    raw = json.dumps(BODY).encode()

    async def post(release: asyncio.Event | None) -> int:
        return await _post(app, raw, release)

    async def scenario() -> list[int]:
        slow = asyncio.Event()
        first = asyncio.create_task(post(slow))
        await asyncio.sleep(0.01)  # the first is in, waiting for its body
        second = await post(None)
        slow.set()
        return [await asyncio.wait_for(first, 10), second]

    assert asyncio.run(scenario()) == [200, 200]
    # the second was answered while the first waited; then the first was alone
    assert server.alone == [False, True]
    assert asyncio.run(post(None)) == 200 and server.alone[-1] is True


def test_requests_that_arrive_together_are_not_alone(app_and_server):
    """Direct ingress hands the replica whole requests: nothing suspends before the fast path
    decides, so it yields once and requests that arrived with this one count too."""
    app, server, _ = app_and_server
    answer = server.answer

    async def batched(request, alone=False):
        await asyncio.sleep(0)  # like the batcher: the answer comes in a later iteration
        return await answer(request, alone)

    server.answer = batched
    raw = json.dumps(BODY).encode()

    async def post() -> int:
        return await _post(app, raw)  # the body is already here: no suspension

    async def together() -> list[int]:
        return list(await asyncio.gather(post(), post(), post()))

    assert asyncio.run(together()) == [200, 200, 200]
    assert server.alone == [False, False, False]


def test_openapi_documents_every_error_answer_of_rank():
    """The 400 FastAPI gives a body it cannot parse, and the bodies of 413/422/503, are in
    /openapi.json with their schemas (the route is declared with these responses)."""
    from freshrank.serving.app import _RANK_RESPONSES

    app = _create_app()

    @app.post("/rank", response_model=RankResponse, responses=_RANK_RESPONSES)
    async def rank(request: RankRequest) -> Response:
        raise AssertionError("not called")

    with TestClient(app) as client:
        schema = client.get("/openapi.json").json()
        bad = client.post(
            "/rank", content=b'{"user_id": "\xff"}', headers={"content-type": "application/json"}
        )
    responses = schema["paths"]["/rank"]["post"]["responses"]
    assert {"200", "400", "413", "422", "503"} <= set(responses)
    ref = responses["422"]["content"]["application/json"]["schema"]["$ref"]
    assert ref.endswith("/InvalidRequest")
    assert set(schema["components"]["schemas"]["InvalidRequest"]["properties"]) == {
        "error",
        "problems",
    }
    assert responses["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ParseError")
    assert bad.status_code == 400 and set(bad.json()) == {"detail"}  # what the schema says
