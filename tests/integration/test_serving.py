"""The Serve ranking app on the session's local Ray: answers, refuses bad input, hot-swaps.

One Serve instance per module holds the applications the tests need (the two-replica app, the
one-request-at-a-time overload app, and an app over a registry that never gets a model),
deployed together; models are small so that
publishing and loading a version takes milliseconds, and replicas look for a new champion
every 50 ms and drain in 0.2 s steps at teardown.
"""

import threading
import time

import httpx
import pytest
import torch
from _schemathesis import run_schemathesis

from freshrank.features.encode import FeatureConfig
from freshrank.model.config import RankerConfig
from freshrank.model.ranker import Ranker
from freshrank.ops.runtime import free_port
from freshrank.registry import Registry, save_checkpoint
from freshrank.serving.app import RankingAppConfig, build_ranking_app

pytestmark = pytest.mark.integration

CFG = RankerConfig(
    features=FeatureConfig(
        user_buckets=1000, item_buckets=2000, category_buckets=50, brand_buckets=50
    ),
    embedding_dim=8,
)
FAST = {"poll_interval_s": 0.05, "graceful_shutdown_wait_loop_s": 0.2}
BODY = {
    "user_id": "u1",
    "query": "red shoes",
    "candidates": [{"item_id": f"i{i}", "category": "c1", "price": 10.0 + i} for i in range(30)],
}


def _publish(reg: Registry, cursor: int, seed: int) -> int:
    torch.manual_seed(seed)
    model = Ranker(CFG)
    info = save_checkpoint(
        reg,
        CFG,
        model.state_dict(),
        None,
        {},
        {
            "cursor": cursor,
            "watermark": time.time() - 5,
            "metrics": {"loss": 0.5},
            "events_trained": cursor,
        },
    )
    return info.version


HEALING: dict[str, Registry] = {}
"""The registries of the ``/healing`` and ``/broken`` apps (set by the module's fixture)."""


def _flip(reg: Registry, version: int) -> bytes:
    """Flip 16 bytes of ``version``'s weights in place; returns the good bytes."""
    path = reg.root / "versions" / f"v{version:06d}" / "model.pt"
    good = path.read_bytes()
    bad = bytearray(good)
    bad[300:316] = bytes(b ^ 0xFF for b in bad[300:316])
    path.write_bytes(bytes(bad))
    (path.parent / "model.pt.good").write_bytes(good)
    return good


def _until(cond, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def ranking(ray_local, tmp_path_factory):
    """Serve with the ranking app at ``/`` and the overload app at ``/overload`` (one replica,
    one request at a time, one queued) and an app at ``/empty`` whose registry stays empty,
    deployed concurrently; no champion yet."""
    from ray import serve

    reg = Registry(tmp_path_factory.mktemp("registry"))
    empty = Registry(tmp_path_factory.mktemp("empty-registry"))
    healing = Registry(tmp_path_factory.mktemp("healing-registry"))
    broken = Registry(tmp_path_factory.mktemp("broken-registry"))
    for r in (healing, broken):
        for seed in (1, 2):
            r.set_champion(_publish(r, seed, seed))
    _flip(healing, 2)  # champion v2 corrupt, v1 still verifies
    _flip(broken, 2)
    _flip(broken, 1)  # nothing verifies
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run_many(
            [
                serve.RunTarget(
                    build_ranking_app(
                        RankingAppConfig(registry=str(reg.root), num_replicas=2, **FAST)
                    ),
                    name="ranking",
                    route_prefix="/",
                ),
                serve.RunTarget(
                    build_ranking_app(
                        RankingAppConfig(
                            registry=str(reg.root),
                            num_replicas=1,
                            max_batch_size=1,
                            max_ongoing_requests=1,
                            max_queued_requests=1,
                            retry_after_s=2,
                            **FAST,
                        )
                    ),
                    name="overload",
                    route_prefix="/overload",
                ),
                serve.RunTarget(
                    build_ranking_app(
                        RankingAppConfig(registry=str(empty.root), num_replicas=1, **FAST)
                    ),
                    name="empty",
                    route_prefix="/empty",
                ),
                *(
                    serve.RunTarget(
                        build_ranking_app(
                            RankingAppConfig(
                                registry=str(r.root),
                                num_replicas=1,
                                unhealthy_after_s=3600,  # no replacement churn in this module
                                **FAST,
                            )
                        ),
                        name=name,
                        route_prefix=f"/{name}",
                    )
                    for name, r in (("healing", healing), ("broken", broken))
                ),
            ]
        )
        HEALING.update(healing=healing, broken=broken)
        yield reg, f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


def test_no_model_yet_is_503_with_retry_after(ranking):
    """The ``/empty`` app's registry never has a champion, whatever the other tests promote."""
    _, url = ranking
    r = httpx.post(f"{url}/empty/rank", json=BODY, timeout=10)
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json()["error"] == "no model has been promoted yet"
    health = httpx.get(f"{url}/empty/healthz", timeout=10)
    assert health.status_code == 200 and health.json()["model_version"] is None  # nothing to serve


def test_a_corrupt_champion_is_served_around_then_healed_once_restored(ranking):
    """Issue 17, fault 1, through Serve: the replica started on a registry whose champion v2
    has 16 bytes flipped serves v1 and says so; restoring the file brings v2 within a poll."""
    _, url = ranking
    with httpx.Client(base_url=f"{url}/healing", timeout=10) as http:
        status = http.get("/model").json()
        assert status["model_version"] == 1 and status["target_version"] == 2
        assert status["fallback"] is True
        assert "champion v2 failed to load (CorruptVersion" in status["serving_reason"]
        assert [f["version"] for f in status["failed_versions"]] == [2]
        r = http.post("/rank", json=BODY)
        assert r.status_code == 200 and r.headers["x-model-version"] == "1"
        health = http.get("/healthz")
        assert health.status_code == 200 and health.json()["fallback"] is True
        model = HEALING["healing"].root / "versions" / "v000002" / "model.pt"
        model.write_bytes((model.parent / "model.pt.good").read_bytes())
        _until(lambda: http.get("/model").json()["model_version"] == 2, what="v2 served")
        status = http.get("/model").json()
        assert status["serving_reason"] == "champion" and status["fallback"] is False
        assert http.post("/rank", json=BODY).headers["x-model-version"] == "2"


def test_a_replica_with_nothing_that_verifies_is_not_healthy(ranking):
    _, url = ranking
    with httpx.Client(base_url=f"{url}/broken", timeout=10) as http:
        health = http.get("/healthz")
        assert health.status_code == 503 and health.headers["retry-after"] == "1"
        assert health.json()["ok"] is False and health.json()["model_version"] is None
        r = http.post("/rank", json=BODY)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"].startswith("no model loaded: no model: champion v2 failed")


def test_ranks_and_names_the_version(ranking):
    reg, url = ranking
    v = _publish(reg, 1, seed=1)
    reg.set_champion(v)
    with httpx.Client(base_url=url, timeout=10) as http:
        # every replica has loaded it: 20 answers in a row are 200 (routing spreads them)
        _until(
            lambda: all(http.post("/rank", json=BODY).status_code == 200 for _ in range(20)),
            what="the first model on every replica",
        )
        r = http.post("/rank", json=BODY)
        body = r.json()
        assert r.headers["x-model-version"] == str(body["model_version"]) == str(v)
        assert sorted(i["item_id"] for i in body["ranked"]) == sorted(
            c["item_id"] for c in BODY["candidates"]
        )
        scores = [i["score"] for i in body["ranked"]]
        assert scores == sorted(scores, reverse=True)
        assert http.get("/model").json()["model_version"] == v


@pytest.mark.parametrize(
    "payload, status, needle",
    [
        ({"user_id": "u1", "candidates": []}, 422, "candidates"),
        ({"candidates": [{"item_id": "a"}]}, 422, "user_id"),
        ({"user_id": "u", "candidates": [{"item_id": "a", "price": "cheap"}]}, 422, "price"),
        ({"user_id": "u", "candidates": [{"item_id": "a"}], "extra": 1}, 422, "extra"),
    ],
)
def test_malformed_requests_get_4xx_saying_what(ranking, payload, status, needle):
    _reg, url = ranking
    r = httpx.post(f"{url}/rank", json=payload, timeout=10)
    assert r.status_code == status
    assert needle in " ".join(r.json()["problems"])


def test_not_json_is_4xx(ranking):
    _reg, url = ranking
    r = httpx.post(
        f"{url}/rank",
        content=b"{not json",
        timeout=10,
        headers={"content-type": "application/json"},
    )
    assert 400 <= r.status_code < 500


def test_swap_under_load_drops_nothing_and_both_replicas_converge(ranking):
    reg, url = ranking
    if reg.champion_version() is None:
        reg.set_champion(_publish(reg, 1, seed=1))
    stop = threading.Event()
    seen, failures = [], []

    def load():
        with httpx.Client(base_url=url, timeout=10) as http:
            for _ in range(5000):  # bounded
                if stop.is_set():
                    break
                r = http.post("/rank", json=BODY)
                if r.status_code == 200:
                    seen.append(r.json()["model_version"])
                else:
                    failures.append(r.status_code)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        new = []
        for i in range(3):
            v = _publish(reg, 10 + i, seed=10 + i)
            reg.set_champion(v)
            new.append(v)
            _until(lambda v=v: v in seen[-20:], what=f"version {v} served")
        # every replica ends on the last version: the next 20 responses all name it
        mark = len(seen)
        _until(lambda: len(seen) >= mark + 20, what="more responses")
        assert set(seen[mark + 10 : mark + 20]) == {new[-1]}
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert failures == []
    assert set(new) <= set(seen)


@pytest.fixture(scope="module")
def overload_url(ranking):
    """The overload app, once a champion exists for it to serve."""
    reg, url = ranking
    if reg.champion_version() is None:
        reg.set_champion(_publish(reg, 1, seed=1))
    return f"{url}/overload"


def test_openapi_docs(ranking):
    _reg, url = ranking
    docs = httpx.get(f"{url}/docs", timeout=10)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    schema = httpx.get(f"{url}/openapi.json", timeout=10).json()
    assert {"/rank", "/model", "/healthz"} <= set(schema["paths"])
    rank = schema["paths"]["/rank"]["post"]
    assert {"200", "400", "413", "422", "503"} <= set(rank["responses"])
    assert "503" in schema["paths"]["/healthz"]["get"]["responses"]
    assert "RankRequest" in str(rank["requestBody"])


def test_body_over_limit_is_413_through_serve(ranking):
    _reg, url = ranking
    big = dict(BODY, candidates=BODY["candidates"] * 40)  # 1200 candidates, well under 1 MiB
    padded = httpx.post(
        f"{url}/rank",
        content=b"{" + b" " * (2 << 20) + b"}",
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert padded.status_code == 413 and padded.json()["limit_bytes"] == 1 << 20
    too_many = httpx.post(f"{url}/rank", json=big, timeout=30)
    assert too_many.status_code == 422
    assert "at most 1000 items" in " ".join(too_many.json()["problems"])


def test_pin_file_is_honoured_without_redeploy(ranking):
    reg, url = ranking
    if reg.champion_version() is None:
        reg.set_champion(_publish(reg, 1, seed=1))
    old = _publish(reg, 50, seed=50)
    champion = _publish(reg, 51, seed=51)
    reg.set_champion(champion)
    with httpx.Client(base_url=url, timeout=10) as http:

        def all_on(version, n=30):
            got = [http.post("/rank", json=BODY).headers.get("x-model-version") for _ in range(n)]
            return set(got) == {str(version)}

        _until(lambda: all_on(champion), what=f"v{champion} everywhere")
        reg.pin(old, reason="test")
        try:
            _until(lambda: all_on(old), what=f"pinned v{old} everywhere")
            status = http.get("/model").json()
            assert status["pinned_version"] == old and status["model_version"] == old
            assert status["replica"]
        finally:
            reg.unpin()
        _until(lambda: all_on(champion), what=f"back to v{champion} after unpin")


def test_overload_is_503_with_retry_after_not_a_hang(overload_url, burst):
    body = dict(BODY, candidates=[{"item_id": f"i{i}", "price": 1.0} for i in range(1000)])
    with httpx.Client(timeout=30) as http:
        _until(lambda: http.post(f"{overload_url}/rank", json=BODY).status_code == 200)
    results = burst(f"{overload_url}/rank", body, 24)
    assert len(results) == 24  # nobody hangs
    codes = [c for c, _, _ in results]
    assert set(codes) <= {200, 503} and 200 in codes and 503 in codes, codes
    assert {ra for c, ra, _ in results if c == 503} == {"2"}
    rejected = [dt for c, _, dt in results if c == 503]
    assert max(rejected) < 30  # refused, not queued until the client gives up


def test_schemathesis_finds_nothing_through_serves_proxy(ranking, tmp_path):
    """Issue 17: schemathesis (``--checks all``, positive and negative data) against the live
    app's own OpenAPI document, through Serve's Python proxy."""
    reg, url = ranking
    if reg.champion_version() is None:
        reg.set_champion(_publish(reg, cursor=1, seed=3))
    champion = reg.champion_version()
    _until(
        lambda: httpx.get(f"{url}/model", timeout=10).json().get("model_version") == champion,
        what=f"v{champion} served",
    )
    counts = run_schemathesis(url, tmp_path)
    assert counts["tests"] >= 3  # /rank, /model and /healthz were exercised
