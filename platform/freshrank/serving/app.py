"""The Ray Serve ranking application: FastAPI ingress, replicas that follow the champion.

``build_ranking_app(RankingAppConfig(...))`` returns a Serve ``Application`` for ``serve.run``;
``serve_apps/ranking.py`` wraps it for ``serve run`` / ``serve deploy`` YAML.

Endpoints: ``POST /rank``, ``GET /model``, ``GET /healthz``, OpenAPI at ``/docs`` and
``/openapi.json``. Every ranking response names its model version in the body and in the
``X-Model-Version`` header (and the replica in ``X-Replica``).

What a replica serves: the version pinned through ``user_config`` (``pinned_version``), else the
registry's ``PINNED`` pointer (``freshrank registry pin``), else the champion. A background
thread loads and warms the next model and swaps one reference; ``reconfigure()`` only records
the pin.

Serving quality:

* Concurrent requests are scored together: ``/rank`` hands its request to a ``@serve.batch``
  method that concatenates the requests' candidate tables, encodes once and runs one forward
  pass (requests that started on different models are scored on their own model).
* Overload: each replica takes ``max_ongoing_requests`` at a time; each proxy queues at most
  ``max_queued_requests`` more; beyond that Ray Serve answers ``503`` with ``Retry-After``
  (``backpressure_config``), it does not hang.
* Limits: bodies over ``max_body_bytes`` get ``413`` before they are parsed; too many
  candidates, over-long fields, wrong types or unknown fields get ``422`` naming the field.
* Before any model is loaded ``/rank`` answers ``503`` with ``Retry-After``.
"""

import asyncio
import time
from typing import Any

from fastapi import Response
from pydantic import BaseModel, ConfigDict, Field

# No `from __future__ import annotations` here: the deployment class is made inside a function
# and shipped to replicas by value (cloudpickle), which keeps evaluated annotations but not the
# module globals that string annotations would need; FastAPI then could not see the body model.
from freshrank.serving.api import ModelStatus, RankRequest, RankResponse
from freshrank.serving.limits import DEFAULT_MAX_BODY_BYTES


class RankingAppConfig(BaseModel):
    """Arguments of the ranking application (also what a Serve config YAML's ``args`` holds)."""

    model_config = ConfigDict(extra="forbid")

    registry: str = Field(description="Registry directory whose champion the replicas follow")
    num_replicas: int = Field(default=2, ge=1)
    poll_interval_s: float = Field(default=0.2, gt=0, description="How often replicas look")
    pinned_version: int | None = Field(default=None, ge=1, description="Serve this version")
    name: str = "ranking"
    replica_cpus: float = Field(default=0.5, gt=0, description="Logical CPUs per replica")
    max_batch_size: int = Field(
        default=16, ge=1, description="Most requests scored in one forward pass"
    )
    batch_wait_timeout_s: float = Field(
        default=0.0,
        ge=0,
        description="How long a batch waits for more requests (0: take what is queued)",
    )
    max_ongoing_requests: int = Field(
        default=32, ge=1, description="Requests a replica works on at once (>= max_batch_size)"
    )
    max_queued_requests: int = Field(
        default=64,
        ge=-1,
        description="Requests each proxy queues beyond that before answering 503 (-1: no bound)",
    )
    retry_after_s: float = Field(default=1.0, ge=0, description="Retry-After of an overload 503")
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1024)
    access_log: bool = Field(
        default=True,
        description="Ray Serve's per-request access log lines (requests are also counted in "
        "freshrank_requests_total)",
    )
    score_in_thread: bool = Field(
        default=False,
        description="Score batches in a worker thread so the replica's event loop keeps "
        "accepting requests meanwhile (no gain measured on 2 cores: the work holds the GIL)",
    )

    def model_post_init(self, __context: Any) -> None:
        if self.max_queued_requests == 0:
            raise ValueError("max_queued_requests must be -1 (no bound) or >= 1, got 0")
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) must be >= max_batch_size "
                f"({self.max_batch_size}), or batches can never fill"
            )


def _replica_tag() -> str:
    try:
        from ray import serve

        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:
        return "local"


def _create_app(max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> Any:
    """The FastAPI app with its error handlers and body limit (made on demand, not at import)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    from freshrank.serving.limits import BodySizeLimit

    app = FastAPI(
        title="freshrank ranking",
        description=(
            "Ranks search candidates with the freshest validated model. Every ranking names "
            "the model version that produced it (body and X-Model-Version header)."
        ),
        version="1",
    )

    def _count(status: str) -> None:
        server = getattr(app.state, "server", None)
        if server is not None:
            server.count(status)

    app.add_middleware(
        BodySizeLimit, max_bytes=max_body_bytes, on_reject=lambda: _count("client_error")
    )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
        _count("client_error")
        return JSONResponse(
            status_code=422, content={"error": "invalid request", "problems": problems}
        )

    return app


_RANK_RESPONSES: dict[int | str, dict[str, Any]] = {
    413: {"description": "Body larger than the configured limit"},
    422: {"description": "Invalid request: the body says which field and why"},
    503: {"description": "No model loaded yet, or overloaded: retry after Retry-After seconds"},
}


def build_ranking_app(config: RankingAppConfig) -> Any:
    """A Serve application of ``config.num_replicas`` ranking replicas."""
    from fastapi.responses import JSONResponse
    from ray import serve
    from ray.serve.config import BackpressureConfig

    from freshrank.monitor.metrics import default_metrics
    from freshrank.registry.checkpoint import load_serving_model
    from freshrank.registry.store import Registry
    from freshrank.serving.holder import Loaded, ModelHolder
    from freshrank.serving.scoring import rank_requests, warm_up

    app = _create_app(config.max_body_bytes)
    score_in_thread = config.score_in_thread

    @serve.deployment(
        name="Ranker",
        num_replicas=config.num_replicas,
        ray_actor_options={"num_cpus": config.replica_cpus},
        user_config={"pinned_version": config.pinned_version},
        health_check_period_s=2,
        max_ongoing_requests=config.max_ongoing_requests,
        max_queued_requests=config.max_queued_requests,
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=config.retry_after_s),
    )
    @serve.ingress(app)
    class RankingServer:
        def __init__(self, registry: str, poll_interval_s: float) -> None:
            import torch

            torch.set_num_threads(1)
            self._registry = Registry(registry)
            self._metrics = default_metrics()
            self._replica = _replica_tag()
            self._tags = {"replica": self._replica}
            self._holder = ModelHolder(
                loader=lambda v: warm_up(load_serving_model(self._registry, v)),
                target=self._registry.serving_target,
                poll_interval_s=poll_interval_s,
                on_swap=self._swapped,
                on_tick=self._tick,
                on_error=self._load_failed,
            )
            app.state.server = self
            self._holder.refresh()
            self._holder.start()

        def reconfigure(self, user_config: dict[str, Any]) -> None:
            # Short by design: the holder's thread does the loading.
            self._holder.pin(user_config.get("pinned_version"))

        def count(self, status: str) -> None:
            self._metrics.inc("freshrank_requests_total", tags={"status": status})

        def _swapped(self, loaded: Loaded) -> None:
            self._metrics.inc("freshrank_model_swaps_total", tags=self._tags)
            self._metrics.set(
                "freshrank_served_model_version", float(loaded.served.version), tags=self._tags
            )

        def _load_failed(self, version: int, message: str) -> None:
            self._metrics.inc("freshrank_model_load_failures_total", tags=self._tags)

        def _tick(self, loaded: Loaded | None) -> None:
            if loaded is not None and loaded.served.watermark is not None:
                self._metrics.set(
                    "freshrank_freshness_seconds",
                    time.time() - float(loaded.served.watermark),
                    tags=self._tags,
                )

        @serve.batch(
            max_batch_size=config.max_batch_size,
            batch_wait_timeout_s=config.batch_wait_timeout_s,
        )
        async def _score(self, items: list[tuple[Loaded, RankRequest]]) -> list[Any]:
            # One forward pass per model: requests finish on the model they started with.
            groups: dict[int, list[int]] = {}
            for i, (loaded, _request) in enumerate(items):
                groups.setdefault(id(loaded), []).append(i)
            out: list[Any] = [None] * len(items)
            for indices in groups.values():
                served = items[indices[0]][0].served
                requests = [items[i][1] for i in indices]
                try:
                    if score_in_thread:
                        results = await asyncio.to_thread(rank_requests, served, requests)
                    else:
                        results = rank_requests(served, requests)
                except Exception as exc:  # answer each request with the error, not the batch
                    results = [exc] * len(indices)
                for i, result in zip(indices, results, strict=True):
                    out[i] = result
            return out

        @app.post("/rank", response_model=RankResponse, responses=_RANK_RESPONSES)
        async def rank(self, request: RankRequest) -> Response:
            """Rank the candidates, best first; the body and headers name the model version."""
            started = time.perf_counter()
            loaded = self._holder.current()  # the model this request finishes on
            if loaded is None:
                # A champion may exist that this replica's loader thread has not picked up yet:
                # load it now (off the event loop) rather than fail; 503 only when there is none.
                await asyncio.to_thread(self._holder.refresh)
                loaded = self._holder.current()
            if loaded is None:
                self.count("unavailable")
                return JSONResponse(
                    status_code=503,
                    content={"error": "no model has been promoted yet"},
                    headers={"Retry-After": "1"},
                )
            result = await self._score((loaded, request))
            if isinstance(result, Exception):
                self.count("server_error")
                return JSONResponse(
                    status_code=500,
                    content={"error": f"scoring failed: {type(result).__name__}"},
                )
            content = result.model_dump_json()
            elapsed = time.perf_counter() - started
            self.count("ok")
            self._metrics.observe("freshrank_request_latency_seconds", elapsed)
            return Response(
                content=content,
                media_type="application/json",
                headers={
                    "X-Model-Version": str(result.model_version),
                    "X-Replica": self._replica,
                    "Server-Timing": f"rank;dur={elapsed * 1000:.2f}",
                },
            )

        @app.get("/model", response_model=ModelStatus)
        def model(self) -> ModelStatus:
            """What this replica serves (a request reaches one replica)."""
            loaded = self._holder.current()
            pinned = self._holder.pinned
            if pinned is None:
                try:
                    pinned = self._registry.pinned_version()
                except Exception:
                    pinned = None
            return ModelStatus(
                model_version=loaded.served.version if loaded else None,
                pinned_version=pinned,
                replica=self._replica,
                watermark=loaded.served.watermark if loaded else None,
                loaded_at=loaded.loaded_at if loaded else None,
                swaps=self._holder.swaps,
                last_error=self._holder.last_error,
            )

        @app.get("/healthz")
        def healthz(self) -> dict[str, Any]:
            """Liveness, and the version this replica serves."""
            loaded = self._holder.current()
            return {"ok": True, "model_version": loaded.served.version if loaded else None}

    return RankingServer.bind(config.registry, config.poll_interval_s)
