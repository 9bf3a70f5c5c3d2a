"""The Ray Serve ranking application: FastAPI ingress, replicas that follow the champion.

``build_ranking_app(RankingAppConfig(...))`` returns a Serve ``Application`` for ``serve.run``;
``serve_apps/ranking.py`` wraps it for ``serve run`` / ``serve deploy`` YAML.

Endpoints: ``POST /rank``, ``GET /model``, ``GET /healthz``. Every ranking response names its
model version in the body and in the ``X-Model-Version`` header. Bad requests get a 4xx whose
body says what is wrong; before any model is loaded ``/rank`` answers 503 with Retry-After.
"""

import time
from typing import Any

from fastapi import Response
from pydantic import BaseModel, ConfigDict, Field

# No `from __future__ import annotations` here: the deployment class is made inside a function
# and shipped to replicas by value (cloudpickle), which keeps evaluated annotations but not the
# module globals that string annotations would need; FastAPI then could not see the body model.
from freshrank.serving.api import ModelStatus, RankRequest, RankResponse


class RankingAppConfig(BaseModel):
    """Arguments of the ranking application (also what a Serve config YAML's ``args`` holds)."""

    model_config = ConfigDict(extra="forbid")

    registry: str = Field(description="Registry directory whose champion the replicas follow")
    num_replicas: int = Field(default=2, ge=1)
    poll_interval_s: float = Field(default=0.2, gt=0, description="How often replicas look")
    pinned_version: int | None = Field(default=None, ge=1, description="Serve this version")
    name: str = "ranking"


def _replica_tag() -> str:
    try:
        from ray import serve

        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:
        return "local"


def _create_app() -> Any:
    """The FastAPI app with its error handlers (made on demand: nothing at import)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    app = FastAPI(
        title="freshrank ranking",
        description="Ranks search candidates with the freshest validated model.",
        version="1",
    )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
        state = getattr(request.app.state, "server", None)
        if state is not None:
            state.count("client_error")
        return JSONResponse(
            status_code=422, content={"error": "invalid request", "problems": problems}
        )

    return app


def build_ranking_app(config: RankingAppConfig) -> Any:
    """A Serve application of ``config.num_replicas`` ranking replicas."""
    from fastapi.responses import JSONResponse
    from ray import serve

    from freshrank.monitor.metrics import default_metrics
    from freshrank.registry.checkpoint import load_serving_model
    from freshrank.registry.store import Registry
    from freshrank.serving.holder import Loaded, ModelHolder
    from freshrank.serving.scoring import rank_request, warm_up

    app = _create_app()

    @serve.deployment(
        name="Ranker",
        num_replicas=config.num_replicas,
        ray_actor_options={"num_cpus": 0.5},
        user_config={"pinned_version": config.pinned_version},
        health_check_period_s=2,
    )
    @serve.ingress(app)
    class RankingServer:
        def __init__(self, registry: str, poll_interval_s: float) -> None:
            import torch

            torch.set_num_threads(1)
            self._registry = Registry(registry)
            self._metrics = default_metrics()
            self._tags = {"replica": _replica_tag()}
            self._holder = ModelHolder(
                loader=lambda v: warm_up(load_serving_model(self._registry, v)),
                target=self._registry.champion_version,
                poll_interval_s=poll_interval_s,
                on_swap=self._swapped,
                on_tick=self._tick,
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

        def _tick(self, loaded: Loaded | None) -> None:
            if loaded is not None and loaded.served.watermark is not None:
                self._metrics.set(
                    "freshrank_freshness_seconds",
                    time.time() - float(loaded.served.watermark),
                    tags=self._tags,
                )

        @app.post("/rank", response_model=RankResponse)
        def rank(self, request: RankRequest, response: Response) -> Any:
            started = time.perf_counter()
            loaded = self._holder.current()  # the model this request finishes on
            if loaded is None:
                # A champion may exist that this replica's loader thread has not picked up yet:
                # load it now rather than fail the request (503 only when there is none).
                self._holder.refresh()
                loaded = self._holder.current()
            if loaded is None:
                self.count("unavailable")
                return JSONResponse(
                    status_code=503,
                    content={"error": "no model has been promoted yet"},
                    headers={"Retry-After": "1"},
                )
            try:
                result = rank_request(loaded.served, request)
            except Exception as exc:
                self.count("server_error")
                return JSONResponse(
                    status_code=500, content={"error": f"scoring failed: {type(exc).__name__}"}
                )
            response.headers["X-Model-Version"] = str(result.model_version)
            self.count("ok")
            self._metrics.observe(
                "freshrank_request_latency_seconds", time.perf_counter() - started
            )
            return result

        @app.get("/model", response_model=ModelStatus)
        def model(self) -> ModelStatus:
            loaded = self._holder.current()
            return ModelStatus(
                model_version=loaded.served.version if loaded else None,
                pinned_version=self._holder.pinned,
                watermark=loaded.served.watermark if loaded else None,
                loaded_at=loaded.loaded_at if loaded else None,
                swaps=self._holder.swaps,
                last_error=self._holder.last_error,
            )

        @app.get("/healthz")
        def healthz(self) -> dict[str, Any]:
            loaded = self._holder.current()
            return {"ok": True, "model_version": loaded.served.version if loaded else None}

    return RankingServer.bind(config.registry, config.poll_interval_s)
