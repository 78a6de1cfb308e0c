"""The prediction path: one Redis round trip for all entities of a request, routing by ONE
snapshot of the registry, scoring on the event loop, records offered to the log queue.

Why on the event loop: a River model scores one row in tens of microseconds, less than a
thread hop costs. Why one snapshot: an in-flight request finishes with the models it started
with, whatever the ``models`` topic says meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.serving import handlers
from services.serving.background import PredictionLog
from services.serving.metrics import Metrics
from services.serving.registry import Champion, ModelRegistry, Routing
from services.serving.settings import ServingSettings
from shared import codec, modeling, redis_keys
from shared.spec import UseCaseSpec

log = logging.getLogger(__name__)
WARN_EVERY_S = 10.0
NO_FEATURES: dict[str, str] = {}
# Every hash of a request in one round trip AND one reply: a JSON string of the HGETALL arrays
# (EVALSHA; the script is loaded once). Why not HGETALL / a pipeline of them: redis-py parses
# replies in Python, ~30 elements per hash, which cost more than scoring; one JSON string is
# one orjson call. (Single-instance Redis; on Redis Cluster the keys must share a hash slot.)
HGETALL_MANY = """
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('HGETALL', key) end
return cjson.encode(out)
"""


def _score_by_model(models: Sequence[Champion], raws: list[dict[str, Any]], spec: UseCaseSpec) -> list[float]:
    """One ``score_rows`` call per distinct model (a canary splits a batch in two)."""
    first = models[0]
    if all(m is first for m in models):
        return first.score_rows(raws, spec)
    scores = [0.0] * len(raws)
    for model in {id(m): m for m in models}.values():
        idx = [i for i, m in enumerate(models) if m is model]
        for i, value in zip(idx, model.score_rows([raws[i] for i in idx], spec)):
            scores[i] = value
    return scores


class Predictor:
    """What the routes share; the Redis client is attached when the app starts."""

    def __init__(self, settings: ServingSettings) -> None:
        self.settings = settings
        self.spec = settings.use_case
        self.request_model = handlers.build_request_model(self.spec)
        self.batch_model = handlers.build_batch_model(self.request_model, settings.serving_batch_max_items)
        self.metrics = Metrics()
        self.registry = ModelRegistry(self.spec, settings.model_secret.get_secret_value())
        self.plog = PredictionLog(settings.serving_log_queue_size, settings.serving_log_batch,
                                  on_drop=lambda reason, n: self.metrics.dropped.labels(reason).inc(n))
        self.metrics.queue_depth.set_function(self.plog.depth)
        self.metrics.model_version.set_function(lambda: self.registry.current.version)
        self.redis: Redis | None = None
        self._key_prefix = redis_keys.features(self.spec, "")
        self._table = handlers.feature_table(self.spec)
        self._hgetall_many: Any = None  # a registered Lua script, once Redis is attached
        self._last_warning = 0.0

    async def predict(self, body: bytes, started: float) -> dict[str, Any]:
        item = handlers.parse_request(body, self.request_model, self.settings.serving_max_body_bytes)
        routing = self.registry.routing  # one read: this request keeps these models
        hashes, degraded = await self.fetch([item["entity_id"]])
        return self._score_one(routing, item, hashes[0], degraded, started)

    async def predict_batch(self, body: bytes, started: float) -> list[dict[str, Any]]:
        data = handlers.parse_request(body, self.batch_model, self.settings.serving_max_batch_body_bytes)
        items = data["items"]
        routing = self.registry.routing
        hashes, degraded = await self.fetch([item["entity_id"] for item in items])
        return self._score(routing, items, hashes, degraded, started)

    async def fetch(self, entity_ids: Sequence[str]) -> tuple[list[Mapping[str, str]], tuple[str, ...]]:
        """Feature hashes in ONE round trip (the HGETALL_MANY script); never raises and
        never waits past the budget: on failure, empty hashes and ``features_unavailable``."""
        fetch_started = time.perf_counter()
        try:
            if self.redis is None:
                raise RedisError("redis client not started")
            keys = [self._key_prefix + entity_id for entity_id in entity_ids]
            async with asyncio.timeout(self.settings.serving_redis_timeout_s):  # no extra task, unlike wait_for
                packed = await self._hgetall_many(keys=keys)
            hashes = handlers.unpack_hashes(codec.loads(packed), len(keys))
        except (RedisError, OSError, TimeoutError, codec.JSONDecodeError) as exc:
            self.metrics.degraded.labels(handlers.FEATURES_UNAVAILABLE).inc(len(entity_ids))
            self._warn(f"online features unavailable, serving degraded: {exc!r}")
            return [NO_FEATURES] * len(entity_ids), (handlers.FEATURES_UNAVAILABLE,)
        finally:
            self.metrics.fetch_latency.observe(time.perf_counter() - fetch_started)
        return hashes, ()

    def _score(self, routing: Routing, items: Sequence[Mapping[str, Any]], hashes: Sequence[Mapping[str, str]],
               degraded: tuple[str, ...], started: float) -> list[dict[str, Any]]:
        """Score every item with the ONE routing snapshot; records go to the log in one
        enqueue. Each model scores all its rows in one call (vectorised when many)."""
        now = time.time()
        table, inputs, max_age = self._table, self.spec.model_inputs, self.settings.serving_max_feature_age_s
        rows = [handlers.inputs(raw_hash, item, table, inputs) for item, raw_hash in zip(items, hashes)]
        routes = [routing.choose(item["entity_id"]) for item in items]
        answers = _score_by_model([route[0] for route in routes], [row[0] for row in rows], self.spec)
        shadows = None if routing.strategy != "shadow" or routing.challenger is None else \
            routing.challenger.score_rows([row[0] for row in rows], self.spec)
        latency_ms = (time.perf_counter() - started) * 1000
        ids = os.urandom(16 * len(items)).hex()  # 128 random bits per prediction, as uuid4
        spec, stale_count = self.spec, 0
        out: list[dict[str, Any]] = []
        log_records: list[tuple[bytes, bytes]] = []
        for i, (item, (_, used, event_time), (model, role, shadow)) in enumerate(zip(items, rows, routes)):
            age, stale = handlers.freshness(event_time, now, max_age)
            flags = (*degraded, *stale) if stale else degraded
            stale_count += bool(stale)
            prediction_id = ids[32 * i:32 * i + 32]
            common: dict[str, Any] = {"entity_id": item["entity_id"], "used": used, "now": now, "spec": spec,
                                      "event_time": event_time, "age": age, "degraded": flags,
                                      "latency_ms": latency_ms}
            record = handlers.build_record(prediction_id=prediction_id, version=model.version, score=answers[i],
                                           threshold=model.threshold, role=role, **common)
            log_records.append((prediction_id.encode(), codec.dumps(record)))
            if shadow is not None and shadows is not None:  # never answered; its own id
                shadow_id = f"{prediction_id}.shadow"
                log_records.append((shadow_id.encode(), codec.dumps(handlers.build_record(
                    prediction_id=shadow_id, version=shadow.version, score=shadows[i],
                    threshold=shadow.threshold, role="shadow", **common))))
            out.append(handlers.response_body(record))
        if stale_count:
            self.metrics.degraded.labels(handlers.STALE_FEATURES).inc(stale_count)
        self.plog.offer_many(log_records)
        return out

    def _score_one(self, routing: Routing, item: Mapping[str, Any], raw_hash: Mapping[str, str],
                   degraded: tuple[str, ...], started: float) -> dict[str, Any]:
        """:meth:`_score` for one item, without its per-batch set-up (the /predict hot path):
        River scores the row (exact, and cheaper than numpy's set-up for one row)."""
        spec, now = self.spec, time.time()
        entity_id = item["entity_id"]
        raw, used, event_time = handlers.inputs(raw_hash, item, self._table, spec.model_inputs)
        age, stale = handlers.freshness(event_time, now, self.settings.serving_max_feature_age_s)
        if stale:
            degraded = (*degraded, *stale)
            self.metrics.degraded.labels(handlers.STALE_FEATURES).inc()
        model, role, shadow = routing.choose(entity_id)
        prediction_id = os.urandom(16).hex()  # 128 random bits, as uuid4, without the object
        record = handlers.build_record(
            prediction_id=prediction_id, entity_id=entity_id, version=model.version, used=used,
            score=modeling.score(model.model, raw, spec), threshold=model.threshold, role=role, now=now,
            latency_ms=(time.perf_counter() - started) * 1000, event_time=event_time, degraded=degraded,
            spec=spec, age=age)
        self.plog.offer(prediction_id.encode(), codec.dumps(record))
        if shadow is not None:  # never answered; its own id so it is never mistaken for the answer
            shadow_id = f"{prediction_id}.shadow"
            self.plog.offer(shadow_id.encode(), codec.dumps(record | {
                "prediction_id": shadow_id, "model_version": shadow.version, "role": "shadow",
                "score": (p := modeling.score(shadow.model, raw, spec)), "label": p >= shadow.threshold,
                "threshold": shadow.threshold}))
        return handlers.response_body(record)

    def attach(self, redis: Redis) -> None:
        self.redis = redis
        self._hgetall_many = redis.register_script(HGETALL_MANY)

    async def redis_reachable(self) -> bool:
        try:
            return self.redis is not None and bool(await asyncio.wait_for(self.redis.ping(), 1.0))
        except (RedisError, OSError, TimeoutError):
            return False

    def describe_models(self) -> dict[str, Any]:
        reg = self.registry
        routing = reg.routing
        return {"champion": routing.champion.describe(),
                "challenger": routing.challenger.describe() if routing.challenger else None,
                "routing": routing.describe(), "previous": list(reg.state.previous),
                "versions": reg.versions, "history": list(reg.history), "caught_up": reg.caught_up,
                "lineage": {str(v): event for v, event in sorted(reg.lineage.items())}}

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY_S:  # one line per 10 s, not one per request
            self._last_warning = now
            log.warning(message)
