"""Serving while its dependencies fail, against real servers that are stopped and restarted on
the same port (or paused: a slow Redis): Redis comes back by itself; with the broker down predictions are still
answered, records wait in the bounded queue (overflow counted) and are sent when it returns."""

from __future__ import annotations

import asyncio
import time

import redis

from services.serving.handlers import FEATURES_UNAVAILABLE
from shared import codec
from shared.contracts import PredictionRecord
from shared.embedded import start_broker, start_redis
from shared.kafka import ensure_topics
from tests.helpers import Stack, consume_all
from tests.integration.test_serving import REQUEST, running, sample, serving_settings, write_features


async def _until_async(check, what: str, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


async def test_redis_outage_then_recovery_without_a_restart(stack: Stack) -> None:
    write_features(stack.redis.url, "card-1", {"txn_count_5m": 7.0}, time.time())
    settings = serving_settings(stack).model_copy(update={"serving_redis_timeout_s": 0.2})
    async with running(settings) as client:
        assert (await client.post("/predict", json=REQUEST)).json()["degraded"] == []
        stack.redis.stop()
        down = (await client.post("/predict", json=REQUEST)).json()
        assert down["degraded"] == [FEATURES_UNAVAILABLE]
        restarted = start_redis(port=stack.redis.port, workdir=stack.tmp)  # empty: data was in memory
        try:
            write_features(restarted.url, "card-1", {"txn_count_5m": 7.0}, time.time())

            async def healthy() -> bool:
                body = (await client.post("/predict", json=REQUEST)).json()
                return body["degraded"] == [] and body["feature_age_s"] is not None

            await _until_async(healthy, "features served again after Redis returned", timeout=15)
            assert (await client.get("/ready")).status_code == 200
        finally:
            restarted.stop()


async def test_broker_outage_queues_records_and_sends_them_when_it_returns(stack: Stack) -> None:
    write_features(stack.redis.url, "card-1", {"txn_count_5m": 1.0}, time.time())
    queue_size, batch = 30, 10
    settings = serving_settings(stack).model_copy(update={"serving_log_queue_size": queue_size,
                                                          "serving_log_batch": batch})
    async with running(settings) as client:
        before = (await client.post("/predict", json=REQUEST)).json()["prediction_id"]
        stack.broker.stop()
        answered = []
        for _ in range(60):  # more than the queue holds
            resp = await client.post("/predict", json=REQUEST)
            assert resp.status_code == 200, resp.text
            answered.append(resp.json()["prediction_id"])
        metrics = (await client.get("/metrics")).text
        dropped = sample(metrics, "rivulet_serving_prediction_log_dropped_total", reason="queue_full")
        depth = sample(metrics, "rivulet_serving_prediction_log_queue_depth")
        assert dropped and dropped > 0 and depth is not None
        assert depth + dropped >= 60 and depth <= queue_size + batch  # bounded, and nothing vanished

        broker = start_broker(port=stack.broker.port, log_file=stack.tmp / "tansu-2.log")
        try:
            await ensure_topics(broker.url)  # Tansu is in-memory: the new broker starts empty

            async def drained() -> bool:
                m = (await client.get("/metrics")).text
                return sample(m, "rivulet_serving_prediction_log_queue_depth") == 0.0

            await _until_async(drained, "queued records sent after the broker returned", timeout=30)
            records = await consume_all(broker.url, "predictions", timeout=20,
                                        until=lambda recs: len({r.key for r in recs}) >= depth)
        finally:
            await asyncio.sleep(0)  # the app's lifespan stops its producer before the broker goes
    broker.stop()
    delivered = {r.key.decode() for r in records}
    assert len(delivered) == depth and delivered <= {before, *answered}  # unsent ones may include `before`
    first = PredictionRecord.model_validate(codec.loads(records[0].value))
    assert first.entity_id == "card-1" and first.model_version == 0


async def test_slow_redis_answers_within_the_budget_degraded_then_recovers(stack: Stack) -> None:
    """Redis alive but not answering (CLIENT PAUSE: every command waits): /predict and
    /predict/batch still answer, without waiting for Redis, degraded; then normal again."""
    write_features(stack.redis.url, "card-1", {"txn_count_5m": 7.0}, time.time())
    settings = serving_settings(stack).model_copy(update={"serving_redis_timeout_s": 0.2})
    pause_s = 3.0
    async with running(settings) as client:
        assert (await client.post("/predict", json=REQUEST)).json()["degraded"] == []
        admin = redis.Redis.from_url(stack.redis.url)
        admin.execute_command("CLIENT", "PAUSE", int(pause_s * 1000), "ALL")
        paused_at = time.monotonic()
        try:
            started = time.monotonic()
            single = await client.post("/predict", json=REQUEST)
            batch = await client.post("/predict/batch", json={"items": [REQUEST, REQUEST | {"entity_id": "x"}]})
            elapsed = time.monotonic() - started
            assert time.monotonic() - paused_at < pause_s, "the pause ended before the check: inconclusive"
        finally:
            admin.close()
        assert single.status_code == 200 and batch.status_code == 200
        assert single.json()["degraded"] == [FEATURES_UNAVAILABLE] and single.json()["feature_age_s"] is None
        assert [r["degraded"] for r in batch.json()["items"]] == [[FEATURES_UNAVAILABLE]] * 2
        assert elapsed < pause_s  # answered on the budget, not when Redis came back
        metrics = (await client.get("/metrics")).text
        assert sample(metrics, "rivulet_serving_degraded_total", reason=FEATURES_UNAVAILABLE) == 3.0
        assert sample(metrics, "rivulet_serving_feature_fetch_latency_seconds_count") >= 3.0

        async def healthy() -> bool:
            body = (await client.post("/predict", json=REQUEST)).json()
            return body["degraded"] == [] and body["feature_age_s"] is not None

        await _until_async(healthy, "features served again after the pause", timeout=15)
