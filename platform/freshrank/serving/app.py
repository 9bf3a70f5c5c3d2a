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
  method that encodes the requests' candidates together and runs one forward pass (requests
  that started on different models are scored on their own model). A request alone in its
  replica (no other ``/rank`` in flight, not even one still receiving its body or one that
  arrived with it) is scored at once instead: it would make a batch of one anyway.
* Overload: each replica takes ``max_ongoing_requests`` at a time; beyond that at most
  ``max_queued_requests`` more wait (per proxy with Serve's Python proxy, per replica with
  HAProxy's direct ingress), then Ray Serve answers ``503`` with ``Retry-After``
  (``backpressure_config``), it does not hang.
* Limits: bodies over ``max_body_bytes`` get ``413`` before they are parsed; too many
  candidates, over-long fields, wrong types or unknown fields get ``422`` naming the field.
* Before any model is loaded ``/rank`` answers ``503`` with ``Retry-After``.
* Cost per request: a JSON ``POST /rank`` is answered by ``fastpath.RankFastPath`` (one
  msgspec decode straight into the encoder's columns, ``wire.decode_search``; no FastAPI
  routing); the batch encodes through the table-free ``encode_searches`` and writes each answer
  with orjson (``wire.encode_ranking``, byte for byte the response model's JSON). Everything
  else, invalid bodies included, is answered by FastAPI as documented. Replicas handle requests
  on their own event loop (``user_code_on_event_loop``) and, once ready, keep what they hold out
  of the garbage collector's walks (``gc_gen0_threshold``, ``gctune``).
* Observability (``observe.ReplicaObserver``): served version, swaps, load failures,
  freshness, promoted-to-live and landed-to-live latency, served-score drift (PSI against the
  version's ``drift.npz``). Ray Serve's per-request access log follows ``access_log``.
"""

import asyncio
import inspect
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import Response
from pydantic import BaseModel, ConfigDict, Field

# No `from __future__ import annotations` here: the deployment class is made inside a function
# and shipped to replicas by value (cloudpickle), which keeps evaluated annotations but not the
# module globals that string annotations would need; FastAPI then could not see the body model.
from freshrank.serving.api import (
    ErrorBody,
    FailedVersion,
    Health,
    InvalidRequest,
    ModelStatus,
    ParseError,
    RankRequest,
    RankResponse,
)
from freshrank.serving.gctune import DEFAULT_GEN0_THRESHOLD
from freshrank.serving.limits import DEFAULT_MAX_BODY_BYTES

if TYPE_CHECKING:
    from freshrank.serving.holder import ModelHolder

NO_TELEMETRY = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}
"""FastAPI's ``telemetry`` setting that turns its native OpenTelemetry instrumentation off."""

SEPARATE_THREAD_ENV = "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"
"""Ray Serve 2.60's switch (read when a replica process starts) between running user code in a
separate thread with its own event loop (default, "1") and on the replica's main loop ("0")."""


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
        "freshrank_requests_total); off saves a log line per request (demos, benchmarks)",
    )
    graceful_shutdown_wait_loop_s: float = Field(
        default=2.0,
        gt=0,
        description="How often a stopping replica looks whether its requests have drained "
        "(Serve's default, 2 s; tests shorten it so a teardown takes less)",
    )
    psi_every_rows: int = Field(
        default=5000,
        ge=1,
        description="Judge served-score drift (freshrank_score_psi) after this many scored rows",
    )
    psi_every_s: float = Field(
        default=60.0,
        gt=0,
        description="... or after this many seconds once the rows reach the monitor's min_rows",
    )
    user_code_on_event_loop: bool = Field(
        default=True,
        description="Run request handling on the replica's own event loop "
        f"({SEPARATE_THREAD_ENV}=0 in the replicas' environment) instead of Serve's default "
        "separate user-code thread: no two thread hops and GIL hand-offs per request (~2 ms of "
        "replica CPU per request measured at 8 concurrent requests)",
    )
    gc_gen0_threshold: int | None = Field(
        default=DEFAULT_GEN0_THRESHOLD,
        ge=1,
        description="Once a replica is ready, freeze what it holds out of the cyclic garbage "
        "collector and raise the collector's young-generation threshold to this "
        "(serving.gctune: ~0.3 ms of replica CPU per request at 16 in flight); null leaves "
        "Python's collector settings alone",
    )
    http_telemetry: bool = Field(
        default=False,
        description="FastAPI's own OpenTelemetry spans, metrics and logs of the app's HTTP "
        "requests (FastAPI >= 0.16x, through the globally configured OpenTelemetry providers). "
        "Off by default: freshrank reports to Prometheus, and with telemetry on FastAPI looks up "
        "the providers on every request even when none is configured (~0.01 ms per request)",
    )
    retry_backoff_s: float = Field(
        default=30.0,
        gt=0,
        description="A version that failed to load is tried again after this long (doubling "
        "with each failure up to retry_backoff_max_s), or as soon as its files change",
    )
    retry_backoff_max_s: float = Field(default=300.0, gt=0, description="Longest retry wait")
    max_fallbacks: int = Field(
        default=5,
        ge=0,
        description="Earlier champions a replica may fall back to, newest first, when the one "
        "it should serve does not load or verify (0: never fall back)",
    )
    unhealthy_after_s: float = Field(
        default=10.0,
        gt=0,
        description="A replica that has had a version to serve and no model loaded for this "
        "long fails Serve's health check (check_health), so Serve replaces it; /healthz answers "
        "503 from the first moment",
    )
    score_in_thread: bool = Field(
        default=False,
        description="Score batches in a worker thread so the replica's event loop keeps "
        "accepting requests meanwhile (no gain measured on 2 cores: the work holds the GIL)",
    )

    def model_post_init(self, __context: Any) -> None:
        if self.max_queued_requests == 0:
            raise ValueError("max_queued_requests must be -1 (no bound) or >= 1, got 0")
        if self.retry_backoff_max_s < self.retry_backoff_s:
            raise ValueError(
                f"retry_backoff_max_s ({self.retry_backoff_max_s}) must be >= retry_backoff_s "
                f"({self.retry_backoff_s})"
            )
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) must be >= max_batch_size "
                f"({self.max_batch_size}), or batches can never fill"
            )


def replica_actor_options(config: RankingAppConfig) -> dict[str, Any]:
    """The replicas' ``ray_actor_options``: CPUs, and the user-code thread switch.

    A Serve config file's ``ray_actor_options`` replace these entirely: ``serve_apps/ranking.yaml``
    therefore sets the same environment variable in the application's ``runtime_env``.
    """
    options: dict[str, Any] = {"num_cpus": config.replica_cpus}
    if config.user_code_on_event_loop:
        options["runtime_env"] = {"env_vars": {SEPARATE_THREAD_ENV: "0"}}
    return options


def _signature_once(func: Any) -> Any:
    """Give ``func`` its signature as ``__signature__``, which ``inspect.signature`` returns as is.

    ``@serve.batch`` (Ray 2.60) computes the batched method's signature on every call to check
    the arguments (``ray._common.signature.extract_signature``): 0.016 ms per request, half of it
    ``inspect`` reading the function again; with the signature stored it reads the attribute.
    """
    func.__signature__ = inspect.signature(func)
    return func


class RankingResponse(Response):
    """A ranking's 200 answer: the JSON body, ``X-Model-Version``, ``X-Replica`` and
    ``Server-Timing`` (what ``Response(body, media_type="application/json", headers={...})``
    sends, with the header list written out once instead of built from a dict)."""

    media_type = "application/json"

    def __init__(self, body: bytes, version: int, replica: str, elapsed_s: float) -> None:
        self.status_code = 200
        self.background = None
        self.body = body
        self.raw_headers = [
            (b"x-model-version", str(version).encode()),
            (b"x-replica", replica.encode("latin-1")),
            (b"server-timing", f"rank;dur={elapsed_s * 1000:.2f}".encode()),
            (b"content-length", str(len(body)).encode()),
            (b"content-type", b"application/json"),
        ]


def _replica_tag() -> str:
    try:
        from ray import serve

        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:
        return "local"


def _create_app(max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, telemetry: bool = False) -> Any:
    """The FastAPI app with its error handlers and body limit (made on demand, not at import);
    ``telemetry``: keep FastAPI's native OpenTelemetry instrumentation (when it has one)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    from freshrank.serving.fastpath import CountInFlight, InFlight, RankFastPath
    from freshrank.serving.limits import BodySizeLimit

    options: dict[str, Any] = {}
    if not telemetry and "telemetry" in inspect.signature(FastAPI).parameters:
        options["telemetry"] = NO_TELEMETRY
    app = FastAPI(
        **options,
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

    def _answer() -> Any:
        server = getattr(app.state, "server", None)
        return server.answer if server is not None else None

    # Starlette runs the middleware added last first: the in-flight count (from the first byte,
    # while the body is still being fetched), the size limit, then the fast path.
    in_flight = InFlight()
    app.add_middleware(RankFastPath, answer=_answer, in_flight=in_flight)
    app.add_middleware(
        BodySizeLimit, max_bytes=max_body_bytes, on_reject=lambda: _count("client_error")
    )
    app.add_middleware(CountInFlight, in_flight=in_flight)

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
    400: {
        "description": "Body that cannot be parsed at all (e.g. not UTF-8)",
        "model": ParseError,
    },
    413: {"description": "Body larger than the configured limit", "model": ErrorBody},
    422: {
        "description": "Invalid request: the body says which field and why",
        "model": InvalidRequest,
    },
    503: {
        "description": "No model loaded yet, or overloaded: retry after Retry-After seconds",
        "model": ErrorBody,
    },
}

_HEALTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    503: {
        "description": "A version should be served and this replica has none loaded",
        "model": Health,
    },
}


def check_serving(holder: "ModelHolder", unhealthy_after_s: float) -> None:
    """Raise (Serve's ``check_health`` fails; after 3 failures in a row Serve replaces the
    replica) once ``holder`` has had a version to serve and no model for ``unhealthy_after_s``.
    Serve's first check, right after the constructor, passes: a replica starting while nothing
    verifies is not a failed deployment."""
    unserved = holder.unserved_for()
    if unserved >= unhealthy_after_s:
        raise RuntimeError(f"no model loaded for {unserved:.0f} s: {holder.status().reason}")


def health(holder: "ModelHolder") -> Health:
    """``/healthz``'s answer: not ok while a version should be served and none is loaded."""
    loaded = holder.current()
    status = holder.status()
    return Health(
        ok=loaded is not None or status.wanted is None,
        model_version=loaded.served.version if loaded else None,
        serving_reason=status.reason,
        fallback=status.fallback,
    )


def model_status(holder: "ModelHolder", replica: str, pinned: int | None) -> ModelStatus:
    """``/model``'s answer: what ``holder`` serves and why (``pinned``: the pin in force)."""
    loaded = holder.current()
    status = holder.status()
    return ModelStatus(
        model_version=loaded.served.version if loaded else None,
        pinned_version=pinned,
        replica=replica,
        watermark=loaded.served.watermark if loaded else None,
        loaded_at=loaded.loaded_at if loaded else None,
        swaps=holder.swaps,
        last_error=holder.last_error,
        target_version=status.wanted,
        serving_reason=status.reason,
        fallback=status.fallback,
        failed_versions=[
            FailedVersion(
                version=f.version,
                error=f.error,
                failed_at=f.failed_at,
                attempts=f.attempts,
                retry_in_s=holder.retry_in_s(f),
            )
            for f in status.failures
        ],
    )


def build_ranking_app(config: RankingAppConfig) -> Any:
    """A Serve application of ``config.num_replicas`` ranking replicas."""
    from fastapi.responses import JSONResponse
    from ray import serve
    from ray.serve.config import BackpressureConfig
    from ray.serve.schema import LoggingConfig

    from freshrank.core.telemetry import default_telemetry
    from freshrank.registry.checkpoint import (
        load_serving_model,
        serving_fallbacks,
        version_fingerprint,
    )
    from freshrank.registry.store import Registry
    from freshrank.serving.gctune import tune_gc
    from freshrank.serving.holder import Loaded, ModelHolder
    from freshrank.serving.observe import ReplicaObserver
    from freshrank.serving.scoring import Search, responses_json, score_batch, warm_up

    app = _create_app(config.max_body_bytes, config.http_telemetry)
    score_in_thread = config.score_in_thread
    # A request alone in its replica (the fast path counts them from their first byte) has
    # nothing to be batched with, and with no batch wait @serve.batch would take it alone: it
    # is scored at once, without the batch queue's tasks (~0.5 ms of CPU per request). With two
    # or more in flight every request goes through @serve.batch.
    lone_direct = config.batch_wait_timeout_s == 0 and not score_in_thread
    psi_every = {"psi_every_rows": config.psi_every_rows, "psi_every_s": config.psi_every_s}
    gc_gen0_threshold = config.gc_gen0_threshold
    healing = {
        "retry_backoff_s": config.retry_backoff_s,
        "retry_backoff_max_s": config.retry_backoff_max_s,
        "max_fallbacks": config.max_fallbacks,
    }
    unhealthy_after_s = config.unhealthy_after_s

    @serve.deployment(
        name="Ranker",
        num_replicas=config.num_replicas,
        ray_actor_options=replica_actor_options(config),
        user_config={"pinned_version": config.pinned_version},
        health_check_period_s=2,
        max_ongoing_requests=config.max_ongoing_requests,
        max_queued_requests=config.max_queued_requests,
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=config.retry_after_s),
        logging_config=LoggingConfig(enable_access_log=config.access_log),
        graceful_shutdown_wait_loop_s=config.graceful_shutdown_wait_loop_s,
    )
    @serve.ingress(app)
    class RankingServer:
        def __init__(self, registry: str, poll_interval_s: float) -> None:
            import torch

            torch.set_num_threads(1)
            self._registry = Registry(registry)
            self._metrics = default_telemetry()
            self._replica = _replica_tag()
            self._observer = ReplicaObserver(
                self._registry, self._metrics, self._replica, **psi_every
            )
            self._holder = ModelHolder(
                loader=lambda v: self._observer.prepare(
                    warm_up(load_serving_model(self._registry, v))
                ),
                target=self._target,
                poll_interval_s=poll_interval_s,
                on_swap=self._observer.swapped,
                on_tick=self._tick,
                on_error=self._observer.load_failed,
                fallbacks=lambda: serving_fallbacks(self._registry),
                fingerprint=lambda v: version_fingerprint(self._registry, v),
                **healing,
            )
            app.state.server = self
            self._holder.refresh()
            self._holder.start()
            if gc_gen0_threshold is not None:
                # Imports and the first model are loaded: out of the collector's walks.
                tune_gc(gc_gen0_threshold)

        def _target(self) -> tuple[int, str] | None:
            pinned = self._registry.pinned_version()
            if pinned is not None:
                return pinned, "pinned"
            champion = self._registry.champion_version()
            return (champion, "champion") if champion is not None else None

        def _tick(self, live: Loaded | None) -> None:
            self._observer.tick(live)
            self._observer.serving(self._holder.status())

        def check_health(self) -> None:
            """Serve's health check (see :func:`check_serving`)."""
            check_serving(self._holder, unhealthy_after_s)

        def reconfigure(self, user_config: dict[str, Any]) -> None:
            # Short by design: the holder's thread does the loading.
            self._holder.pin(user_config.get("pinned_version"))

        def count(self, status: str, n: int = 1) -> None:
            self._metrics.inc("freshrank_requests_total", n, tags={"status": status})

        def _score_now(self, served: Any, requests: list[Search]) -> list[Any]:
            """Each request's JSON answer, or the exception that scoring raised."""
            try:
                scores = score_batch(served, requests)
                bodies = responses_json(served, requests, scores)
            except Exception as exc:  # answer each request with the error, not the batch
                return [exc] * len(requests)
            self._observer.scored(served.version, np.concatenate(scores))
            self.count("ok", len(requests))
            return bodies

        @serve.batch(
            max_batch_size=config.max_batch_size,
            batch_wait_timeout_s=config.batch_wait_timeout_s,
        )
        @_signature_once
        async def _score(self, items: list[tuple[Loaded, Search]]) -> list[Any]:
            # One forward pass per model: requests finish on the model they started with.
            groups: dict[int, list[int]] = {}
            for i, (loaded, _request) in enumerate(items):
                groups.setdefault(id(loaded), []).append(i)
            out: list[Any] = [None] * len(items)
            for indices in groups.values():
                served = items[indices[0]][0].served
                requests = [items[i][1] for i in indices]
                if score_in_thread:
                    results = await asyncio.to_thread(self._score_now, served, requests)
                else:
                    results = self._score_now(served, requests)
                for i, result in zip(indices, results, strict=True):
                    out[i] = (served.version, result)
            return out

        async def answer(self, request: Search, alone: bool = False) -> Response:
            """Rank a validated request (the fast path and the FastAPI route both call this);
            ``alone``: no other ranking request is in this replica (see ``lone_direct``)."""
            started = time.perf_counter()
            loaded = self._holder.current()  # the model this request finishes on
            if loaded is None:
                # A champion may exist that this replica's loader thread has not picked up yet:
                # load it now (off the event loop) rather than fail; 503 only when there is none.
                await asyncio.to_thread(self._holder.refresh)
                loaded = self._holder.current()
            if loaded is None:
                self.count("unavailable")
                status = self._holder.status()
                error = (
                    "no model has been promoted yet"
                    if status.wanted is None
                    else f"no model loaded: {status.reason}"
                )
                return JSONResponse(
                    status_code=503, content={"error": error}, headers={"Retry-After": "1"}
                )
            if lone_direct and alone:
                version = loaded.served.version
                (result,) = self._score_now(loaded.served, [request])
            else:
                version, result = await self._score((loaded, request))
            if isinstance(result, Exception):
                self.count("server_error")
                return JSONResponse(
                    status_code=500,
                    content={"error": f"scoring failed: {type(result).__name__}"},
                )
            elapsed = time.perf_counter() - started
            self._metrics.observe("freshrank_request_latency_seconds", elapsed)
            return RankingResponse(result, version, self._replica, elapsed)

        @app.post("/rank", response_model=RankResponse, responses=_RANK_RESPONSES)
        async def rank(self, request: RankRequest) -> Response:
            """Rank the candidates, best first; the body and headers name the model version."""
            return await self.answer(request)

        @app.get("/model", response_model=ModelStatus)
        def model(self) -> ModelStatus:
            """What this replica serves (a request reaches one replica)."""
            pinned = self._holder.pinned
            if pinned is None:
                try:
                    pinned = self._registry.pinned_version()
                except Exception:
                    pinned = None
            return model_status(self._holder, self._replica, pinned)

        @app.get("/healthz", response_model=Health, responses=_HEALTH_RESPONSES)
        def healthz(self) -> Any:
            """Whether this replica can answer rankings, and with which version: 503 while a
            version should be served and none is loaded (Serve routes no traffic its own
            ``check_health`` refuses; load balancers can use this)."""
            body = health(self._holder)
            if not body.ok:
                return JSONResponse(
                    status_code=503, content=body.model_dump(), headers={"Retry-After": "1"}
                )
            return body

    return RankingServer.bind(config.registry, config.poll_interval_s)
