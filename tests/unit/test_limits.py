"""Body size limit and validation answers of the ranking app's FastAPI layer (no Ray)."""

import pytest
from fastapi.testclient import TestClient

from freshrank.serving.api import MAX_CANDIDATES, MAX_ID_LENGTH, RankRequest
from freshrank.serving.app import _create_app


@pytest.fixture
def client():
    app = _create_app(max_body_bytes=4096)
    seen = []

    class Server:
        def count(self, status):
            seen.append(status)

    app.state.server = Server()

    @app.post("/echo")
    async def echo(request: RankRequest) -> dict:
        return {"n": len(request.candidates)}

    with TestClient(app) as c:
        yield c, seen


def _body(n=2, **kw):
    return {"user_id": "u", "candidates": [{"item_id": f"i{i}"} for i in range(n)], **kw}


def test_small_body_passes(client):
    c, seen = client
    r = c.post("/echo", json=_body(3))
    assert r.status_code == 200 and r.json() == {"n": 3} and seen == []


def test_declared_large_body_is_413_before_reading(client):
    c, seen = client
    r = c.post("/echo", json=_body(400))
    assert r.status_code == 413
    assert r.json()["limit_bytes"] == 4096 and r.json()["content_length"] > 4096
    assert seen == ["client_error"]


def test_chunked_large_body_is_413(client):
    c, _seen = client

    def chunks():
        yield b'{"user_id": "u", "candidates": ['
        for i in range(400):
            yield b'{"item_id": "i%d"},' % i
        yield b'{"item_id": "last"}]}'

    r = c.post("/echo", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["content_length"] is None


def test_chunked_small_body_passes(client):
    c, _seen = client
    r = c.post(
        "/echo",
        content=iter([b'{"user_id": "u", ', b'"candidates": [{"item_id": "a"}]}']),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 200 and r.json() == {"n": 1}


@pytest.mark.parametrize(
    "body, needle",
    [
        (_body(0), "candidates: List should have at least 1 item"),
        (_body(1, user_id="x" * (MAX_ID_LENGTH + 1)), "user_id: String should have at most"),
        (_body(1, query="q" * 600), "query: String should have at most 512"),
        (
            {"user_id": "u", "candidates": [{"item_id": "a", "brand": "b" * 200}]},
            "candidates.0.brand: String should have at most 128",
        ),
        ({"user_id": "u", "candidates": [{"item_id": "a", "price": -1}]}, "price"),
    ],
)
def test_field_limits_are_422_naming_the_field(client, body, needle):
    c, seen = client
    r = c.post("/echo", json=body)
    assert r.status_code == 422 and r.json()["error"] == "invalid request"
    assert any(needle in p for p in r.json()["problems"]), r.json()
    assert seen == ["client_error"]


def test_too_many_candidates_is_422():
    app = _create_app(max_body_bytes=1 << 20)

    @app.post("/echo")
    async def echo(request: RankRequest) -> dict:
        return {}

    with TestClient(app) as c:
        r = c.post("/echo", json=_body(MAX_CANDIDATES + 1))
    assert r.status_code == 422
    assert f"candidates: List should have at most {MAX_CANDIDATES} items" in r.json()["problems"][0]


def test_limit_fits_the_largest_valid_request():
    import json

    big = {
        "user_id": "u" * MAX_ID_LENGTH,
        "query": "q" * 512,
        "device": "d" * MAX_ID_LENGTH,
        "candidates": [
            {
                "item_id": "i" * MAX_ID_LENGTH,
                "category": "c" * MAX_ID_LENGTH,
                "brand": "b" * MAX_ID_LENGTH,
                "price": 1e12,
            }
            for _ in range(MAX_CANDIDATES)
        ],
    }
    from freshrank.serving.limits import DEFAULT_MAX_BODY_BYTES

    assert len(json.dumps(big)) < DEFAULT_MAX_BODY_BYTES


def test_ranking_response_sends_what_a_starlette_response_sends():
    from fastapi import Response

    from freshrank.serving.app import RankingResponse

    body = b'{"model_version":3,"ranked":[]}'
    fast = RankingResponse(body, 3, "replica-1", 0.0123)
    slow = Response(
        content=body,
        media_type="application/json",
        headers={
            "X-Model-Version": "3",
            "X-Replica": "replica-1",
            "Server-Timing": "rank;dur=12.30",
        },
    )
    assert (fast.status_code, fast.body, fast.raw_headers) == (
        slow.status_code,
        slow.body,
        slow.raw_headers,
    )
    assert fast.headers["content-length"] == str(len(body))


def test_fastapi_native_telemetry_is_off_unless_asked_for():
    import inspect

    from fastapi import FastAPI

    if "telemetry" not in inspect.signature(FastAPI).parameters:
        pytest.skip("this FastAPI has no native telemetry to turn off")
    off, on = _create_app(), _create_app(telemetry=True)
    # FastAPI keeps its resolved settings in _telemetry (no public accessor).
    assert not any(off._telemetry[k] for k in ("tracing", "metrics", "logs"))
    assert all(on._telemetry[k] for k in ("tracing", "metrics", "logs"))
    assert not off._native_telemetry.enabled()
