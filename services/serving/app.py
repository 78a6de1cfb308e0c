"""Serving service (FastAPI): ``POST /predict`` scores one entity with the current champion.

Consumes ``models`` (from the beginning, no consumer group: every replica sees every event)
to hot-swap the champion; version 0 (the spec's baseline) serves until the first promotion.
Reads the entity's online features from Redis (one HGETALL on ``rv:{fs}:f:{entity}``).
Produces ``predictions`` (key: prediction id, value: PredictionRecord), off the request path
through a bounded queue. Stores nothing. Also serves ``/health``, ``/ready``, ``/models`` and
``/metrics`` (Prometheus).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from services.serving import handlers
from services.serving.background import ModelWatcher, PredictionLog
from services.serving.metrics import Metrics, MetricsMiddleware
from services.serving.registry import ModelRegistry
from services.serving.settings import ServingSettings
from shared import codec, modeling, redis_keys
from shared.kafka import ensure_topics, make_producer
from shared.runtime import run_service, setup_logging

log = logging.getLogger(__name__)
WARN_EVERY_S = 10.0


def json_response(body: Any, status: int = 200) -> Response:
    return Response(codec.dumps(body), status_code=status, media_type="application/json")


class Serving:
    """What the routes share; the Redis client and Kafka producer are attached in the lifespan."""

    def __init__(self, settings: ServingSettings) -> None:
        self.settings = settings
        self.spec = settings.use_case
        self.request_model = handlers.build_request_model(self.spec)
        self.metrics = Metrics()
        self.registry = ModelRegistry(self.spec, settings.model_secret.get_secret_value())
        self.plog = PredictionLog(settings.serving_log_queue_size, settings.serving_log_batch,
                                  on_drop=lambda reason, n: self.metrics.dropped.labels(reason).inc(n))
        self.metrics.queue_depth.set_function(self.plog.queue.qsize)
        self.metrics.model_version.set_function(lambda: self.registry.current.version)
        self.redis: Redis | None = None
        self._last_warning = 0.0

    async def online_features(self, entity_id: str) -> tuple[dict[str, float], float | None, tuple[str, ...]]:
        """(features with defaults, event time, degraded): never raises, never waits past the budget."""
        try:
            if self.redis is None:
                raise RedisError("redis client not started")
            key = redis_keys.features(self.spec, entity_id)
            raw = await asyncio.wait_for(self.redis.hgetall(key), self.settings.serving_redis_timeout_s)
        except (RedisError, OSError, TimeoutError) as exc:
            self.metrics.degraded.labels(handlers.FEATURES_UNAVAILABLE).inc()
            self._warn(f"online features unavailable, serving degraded: {exc!r}")
            return handlers.with_defaults({}, self.spec), None, (handlers.FEATURES_UNAVAILABLE,)
        values, event_time = handlers.parse_feature_hash(raw, self.spec)
        return handlers.with_defaults(values, self.spec), event_time, ()

    async def predict(self, body: bytes, started: float) -> dict[str, Any]:
        request = handlers.parse_request(body, self.request_model, self.settings.serving_max_body_bytes)
        champion = self.registry.current  # one read: this request keeps this model object
        online, event_time, degraded = await self.online_features(request.entity_id)
        raw, used = handlers.merge(online, request.features.model_dump(exclude_none=True), self.spec)
        score = modeling.score(champion.model, raw, self.spec)
        record = handlers.build_record(
            prediction_id=uuid.uuid4().hex, entity_id=request.entity_id, version=champion.version,
            used=used, score=score, threshold=champion.threshold, now=time.time(),
            latency_ms=(time.perf_counter() - started) * 1000, event_time=event_time,
            degraded=degraded, spec=self.spec)
        self.plog.offer(record.prediction_id.encode(), codec.dumps(record.model_dump(mode="json")))
        return handlers.response_body(record)

    async def redis_reachable(self) -> bool:
        try:
            return self.redis is not None and bool(await asyncio.wait_for(self.redis.ping(), 1.0))
        except (RedisError, OSError, TimeoutError):
            return False

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY_S:  # one line per 10 s, not one per request
            self._last_warning = now
            log.warning(message)


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
    svc: Serving = app.state.serving
    settings = svc.settings
    await ensure_topics(settings.kafka_bootstrap)
    svc.redis = Redis.from_url(settings.redis_url, decode_responses=True, retry=Retry(NoBackoff(), 0),
                               socket_connect_timeout=1.0, socket_timeout=1.0)
    producer = make_producer(settings)
    await producer.start()
    stop = asyncio.Event()
    tasks = [asyncio.create_task(svc.plog.run(producer, stop), name="prediction-log"),
             asyncio.create_task(ModelWatcher(settings, svc.registry).run(stop), name="model-watcher")]
    log.info("serving on model version %d; spec %s", svc.registry.current.version, svc.spec.name)
    try:
        yield
    finally:
        stop.set()  # the log drains its queue before returning
        await asyncio.wait(tasks, timeout=10)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await producer.stop()
        await svc.redis.aclose()


def add_predict_route(app: FastAPI, svc: Serving) -> None:
    body_doc = {"required": True, "content": {"application/json": {
        "schema": handlers.inline_schema(svc.request_model)}}}

    @app.post("/predict", openapi_extra={"requestBody": body_doc},
              responses={200: {"model": handlers.PredictResponse},
                         413: {"model": handlers.ErrorResponse, "description": "body too large"},
                         422: {"model": handlers.ErrorResponse, "description": "invalid body"}})
    async def predict(request: Request) -> Response:
        """Score one entity: its online features merged with the request-time fields."""
        started = time.perf_counter()
        body = await read_body(request, svc.settings.serving_max_body_bytes)
        result = await svc.predict(body, started)
        request.state.model_version = result["model_version"]
        return json_response(result)


def add_ops_routes(app: FastAPI, svc: Serving) -> None:
    @app.get("/health")
    async def health() -> Response:
        return json_response({"status": "ok"})

    @app.get("/ready")
    async def ready() -> Response:
        redis_ok = await svc.redis_reachable()
        model_ok = svc.registry.caught_up
        body = {"ready": redis_ok and model_ok, "model_loaded": model_ok, "redis": redis_ok,
                "model_version": svc.registry.current.version}
        return json_response(body, 200 if body["ready"] else 503)

    @app.get("/models")
    async def models() -> Response:
        return json_response({"champion": svc.registry.current.describe(), "versions": svc.registry.versions,
                              "history": list(svc.registry.history), "caught_up": svc.registry.caught_up})

    @app.get("/metrics")
    async def metrics() -> Response:
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
    svc = Serving(settings)
    app = FastAPI(title="Rivulet serving", version="1", lifespan=lifespan)
    app.state.serving = svc
    add_predict_route(app, svc)
    add_ops_routes(app, svc)
    add_error_handlers(app)
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
