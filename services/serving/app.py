"""Serving service (FastAPI): ``POST /predict`` scores one entity, ``POST /predict/batch`` many.

Consumes ``models`` (from the beginning, no consumer group: every replica sees every event)
to hot-swap models and run rollouts (full / shadow / canary, rollback); version 0 (the spec's
baseline) serves until the first promotion. Reads online features from Redis (one round trip
per request: HGETALL, or a pipeline of them, on ``rv:{fs}:f:{entity}``). Produces
``predictions`` (key: prediction id, value: PredictionRecord; role champion / challenger /
shadow), off the request path through a bounded queue that survives broker outages. Stores
nothing. Also serves ``/health``, ``/ready``, ``/models`` and ``/metrics`` (Prometheus).
Optional API keys (``RIVULET_SERVING_API_KEYS``).
"""

from __future__ import annotations

import asyncio
import gc
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from services.serving import handlers, schemas
from services.serving.auth import ApiKeyMiddleware, document_api_key
from services.serving.background import ModelWatcher
from services.serving.loopwatch import LoopWatch
from services.serving.metrics import MetricsMiddleware
from services.serving.predictor import Predictor
from services.serving.settings import ServingSettings
from shared import codec
from shared.kafka import ensure_topics, make_producer
from shared.runtime import run_service, setup_logging

log = logging.getLogger(__name__)


def json_response(body: Any, status: int = 200) -> Response:
    return Response(codec.dumps(body), status_code=status, media_type="application/json")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it is known to exceed ``limit`` (never buffered past it)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise handlers.too_large(int(declared), limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise handlers.too_large(len(body), limit)
    return bytes(body)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    svc: Predictor = app.state.serving
    settings = svc.settings
    await ensure_topics(settings.kafka_bootstrap)
    # No socket_timeout: every call is already bounded by the caller (the feature read by its
    # latency budget, readiness by 1 s), and redis-py would wrap each send in asyncio.wait_for,
    # a Task per request on Python 3.11.
    svc.attach(Redis.from_url(settings.redis_url, decode_responses=True, retry=Retry(NoBackoff(), 0),
                              socket_connect_timeout=1.0, socket_timeout=None))
    stop = asyncio.Event()
    tasks = [asyncio.create_task(svc.plog.run(lambda: make_producer(settings), stop), name="prediction-log"),
             asyncio.create_task(ModelWatcher(settings, svc.registry).run(stop), name="model-watcher"),
             asyncio.create_task(LoopWatch(svc.metrics).run(stop), name="loop-watch")]
    # Start-up objects (FastAPI, pydantic, River, the model) live as long as the process:
    # freezing them keeps the cyclic GC from re-scanning them, a p99 pause on the event loop.
    gc.collect()
    gc.freeze()
    log.info("serving on model version %d; spec %s; api keys %s", svc.registry.current.version,
             svc.spec.name, "required" if settings.api_keys() else "off")
    try:
        yield
    finally:
        stop.set()  # the log drains its queue before returning
        await asyncio.wait(tasks, timeout=12)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if svc.redis is not None:
            await svc.redis.aclose()


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": schemas.ErrorResponse, "description": "missing or wrong API key (when keys are set)"},
    413: {"model": schemas.ErrorResponse, "description": "body too large"},
    422: {"model": schemas.ErrorResponse, "description": "invalid body; `loc` names the field"},
}


def add_predict_routes(app: FastAPI, svc: Predictor) -> None:
    item = schemas.example_item(schemas.inline_schema(svc.request_model)["properties"]["features"])
    batch = {"items": [item, {**item, "entity_id": "card-7"}]}

    def body_doc(model: type[BaseModel], example: dict[str, Any]) -> dict[str, Any]:
        content: dict[str, Any] = {"schema": schemas.inline_schema(model)}
        try:
            model.model_validate(example)  # documented only if the spec's own rules accept it
            content["example"] = example
        except ValueError:
            pass
        return {"requestBody": {"required": True, "content": {"application/json": content}}}

    @app.post("/predict", openapi_extra=body_doc(svc.request_model, item),
              responses={200: {"model": schemas.PredictResponse}, **ERRORS})
    async def predict(request: Request) -> Response:
        """Score one entity: its online features merged with the request-time fields."""
        started = time.perf_counter()
        body = await read_body(request, svc.settings.serving_max_body_bytes)
        result = await svc.predict(body, started)
        request.state.model_version = result["model_version"]
        return json_response(result)

    @app.post("/predict/batch", openapi_extra=body_doc(svc.batch_model, batch),
              responses={200: {"model": schemas.PredictBatchResponse}, **ERRORS})
    async def predict_batch(request: Request) -> Response:
        """Score up to `RIVULET_SERVING_BATCH_MAX_ITEMS` entities with one Redis round trip.
        Any invalid item refuses the whole batch (422, `loc` = ["items", i, ...])."""
        started = time.perf_counter()
        body = await read_body(request, svc.settings.serving_max_batch_body_bytes)
        results = await svc.predict_batch(body, started)
        return json_response({"items": results})


def add_ops_routes(app: FastAPI, svc: Predictor) -> None:
    @app.get("/health")
    async def health() -> Response:
        """The process is up (never checks dependencies; no API key needed)."""
        return json_response({"status": "ok"})

    @app.get("/ready", responses={200: {"model": schemas.ReadyResponse},
                                  503: {"model": schemas.ReadyResponse, "description": "not ready"}})
    async def ready() -> Response:
        """Ready = the `models` topic has been replayed and Redis answers."""
        redis_ok = await svc.redis_reachable()
        model_ok = svc.registry.caught_up
        body = {"ready": redis_ok and model_ok, "model_loaded": model_ok, "redis": redis_ok,
                "model_version": svc.registry.current.version}
        return json_response(body, 200 if body["ready"] else 503)

    @app.get("/models", responses={200: {"model": schemas.ModelsResponse}, 401: ERRORS[401]})
    async def models() -> Response:
        """Champion, challenger (shadow or canary) and routing; each version's lineage as announced
        on `models` (parent, trigger, trained_on, metrics, who, reason...); recent model events."""
        return json_response(svc.describe_models())

    @app.get("/metrics", responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, 401: ERRORS[401]})
    async def metrics() -> Response:
        """Prometheus metrics: `rivulet_serving_requests_total` and
        `rivulet_serving_request_latency_seconds` (per endpoint and model version),
        `rivulet_serving_feature_fetch_latency_seconds`, `rivulet_serving_prediction_log_queue_depth`,
        `rivulet_serving_prediction_log_dropped_total` (per reason), `rivulet_serving_degraded_total`
        (per reason), `rivulet_serving_model_version`, `rivulet_serving_event_loop_lag_seconds` and
        `rivulet_serving_gc_pause_seconds` (per generation): what requests wait for besides their work."""
        return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def add_error_handlers(app: FastAPI) -> None:
    async def refused(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, handlers.RequestError)
        return json_response({"detail": exc.detail}, exc.status)

    async def invalid(_: Request, exc: Exception) -> Response:
        # Replaces FastAPI's handler, which echoes the input (and can fail on NaN).
        assert isinstance(exc, RequestValidationError)
        return json_response({"detail": handlers.safe_details(exc.errors())}, 422)

    app.add_exception_handler(handlers.RequestError, refused)
    app.add_exception_handler(RequestValidationError, invalid)


def create_app(settings: ServingSettings) -> FastAPI:
    """The app, with no I/O: clients are created when the lifespan starts."""
    svc = Predictor(settings)
    app = FastAPI(title="Rivulet serving", version="1", lifespan=lifespan,
                  description="Online predictions over Rivulet's feature store. See README, API section.")
    app.state.serving = svc
    add_predict_routes(app, svc)
    add_ops_routes(app, svc)
    add_error_handlers(app)
    keys = settings.api_keys()
    if keys:
        document_api_key(app)
        app.add_middleware(ApiKeyMiddleware, keys=keys)  # inner: a 401 is still counted in metrics
    app.add_middleware(MetricsMiddleware, metrics=svc.metrics, current_version=lambda: svc.registry.current.version)
    return app


class _Server(uvicorn.Server):
    """uvicorn without its own signal capture: run_service owns SIGINT/SIGTERM, so a clean
    stop exits 0 (uvicorn would re-raise the signal after shutdown)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def main() -> None:
    """Load settings, log, run uvicorn (uvloop + httptools, no access log) until SIGTERM."""
    settings = ServingSettings()
    setup_logging("serving", settings.log_level)
    config = uvicorn.Config(create_app(settings), host=settings.serving_host, port=settings.serving_port,
                            loop="uvloop", http="httptools", access_log=False, log_config=None,
                            lifespan="on", log_level=settings.log_level.lower())
    server = _Server(config)

    async def serve(stop: asyncio.Event) -> None:
        task = asyncio.create_task(server.serve())
        await asyncio.wait([task, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        await task
        if not server.started:
            raise SystemExit(3)  # startup failed (uvicorn's STARTUP_FAILURE code)

    run_service(serve)
