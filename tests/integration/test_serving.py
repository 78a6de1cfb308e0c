"""Serving against a real broker and Redis: a real uvicorn process for predict + bad bodies,
the app in-process (with its lifespan) for hot swaps and the Redis outage."""

from __future__ import annotations

import asyncio
import base64
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

from services.serving.app import create_app
from services.serving.handlers import FEATURES_UNAVAILABLE
from services.serving.settings import ServingSettings
from shared import codec, modeling, redis_keys
from shared.contracts import ModelEvent, PredictionRecord
from shared.embedded import free_port
from shared.spec import load_spec
from tests.helpers import Stack, consume_all, produce, read_topic, wait_for

SPEC = load_spec()
SECRET = "integration-secret"
REQUEST = {"entity_id": "card-1", "features": {"amount": 250.0, "merchant_category": "grocery",
                                               "country": "US", "channel": "online"}}


def write_features(url: str, entity: str, values: dict[str, float], event_time: float) -> None:
    client = redis.Redis.from_url(url)
    mapping = {k: str(v) for k, v in values.items()}
    mapping |= {redis_keys.EVENT_TIME_FIELD: str(event_time), redis_keys.WRITTEN_AT_FIELD: str(time.time())}
    client.hset(redis_keys.features(SPEC, entity), mapping=mapping)
    client.close()


def serving_settings(stack: Stack) -> ServingSettings:
    return ServingSettings(kafka_bootstrap=stack.broker.url, redis_url=stack.redis.url,
                           data_dir=stack.tmp / "data", model_secret=SECRET, serving_redis_timeout_s=2.0)


def test_predict_in_a_real_process(stack: Stack) -> None:
    event_time = time.time() - 30
    online = {"txn_count_5m": 3.0, "amount_sum_5m": 400.0, "amount_mean_24h": 120.0, "amount_max_24h": 300.0}
    write_features(stack.redis.url, "card-1", online, event_time)
    port = free_port()
    proc = stack.spawn("services.serving", RIVULET_SERVING_PORT=port, RIVULET_SERVING_REDIS_TIMEOUT_S=2,
                RIVULET_MODEL_SECRET=SECRET)
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: _get(base + "/ready") == 200, timeout=30, what="serving /ready")

    with httpx.Client(base_url=base, timeout=10) as client:
        resp = client.post("/predict", json=REQUEST)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        expected_used = {name: None for name in SPEC.model_inputs}
        expected_used |= {"txn_count_1h": 0.0, "amount_sum_1h": 0.0, "txn_count_24h": 0.0,
                          "merchant_distinct_24h": 0.0}  # spec defaults for absent features
        expected_used |= {k: v for k, v in online.items() if k in expected_used} | REQUEST["features"]
        baseline = modeling.BaselineModel(SPEC.model.baseline)
        assert body["model_version"] == 0 and body["degraded"] == []
        assert body["score"] == modeling.score(baseline, expected_used, SPEC)
        assert body["label"] == (body["score"] >= SPEC.model.threshold)
        assert 29 <= body["feature_age_s"] < 120

        records = read_topic(stack.broker.url, "predictions", timeout=20,
                             until=lambda recs: any(r.key == body["prediction_id"].encode() for r in recs))
        record = PredictionRecord.model_validate(codec.loads(
            next(r.value for r in records if r.key == body["prediction_id"].encode())))
        assert record.features == expected_used
        assert record.model_version == 0 and record.feature_event_time == event_time

        _assert_bad_bodies_refused(client)
        assert client.get("/health").json() == {"status": "ok"}
        assert client.get("/models").json()["champion"]["version"] == 0
        metrics = client.get("/metrics").text
        ok = dict(endpoint="/predict", method="POST", status="200", model_version="0")
        assert sample(metrics, "rivulet_serving_requests_total", **ok) == 1.0
        assert sample(metrics, "rivulet_serving_requests_total", **(ok | {"status": "422"})) == 8.0
        assert sample(metrics, "rivulet_serving_request_latency_seconds_count", endpoint="/predict",
                      model_version="0") == 10.0
        assert sample(metrics, "rivulet_serving_prediction_log_queue_depth") is not None
        assert "requestBody" in client.get("/openapi.json").json()["paths"]["/predict"]["post"]

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0, stack.logs()


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one Prometheus sample (None if absent), whatever the label order."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None


def _get(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0


BAD_BODIES: list[tuple[bytes, int, list[Any]]] = [
    (b'{"entity_id": "c", "features": {"amount": 1', 422, ["body"]),
    (b'{"entity_id": "c", "features": {"amount": NaN}}', 422, ["features", "amount"]),
    (b'{"entity_id": "c", "features": {"amount": Infinity}}', 422, ["features", "amount"]),
    (b'{"entity_id": "c", "features": {"amount": 1e999}}', 422, ["features", "amount"]),
    (b'{"entity_id": "c", "features": {"amount": "lots"}}', 422, ["features", "amount"]),
    (b'{"features": {"amount": 3}}', 422, ["entity_id"]),
    (b'{"entity_id": "c", "features": {"channel": "carrier_pigeon"}}', 422, ["features", "channel"]),
    (b'{"entity_id": "c", "features": {"shoe_size": 44}}', 422, ["features", "shoe_size"]),
    (b'{"entity_id": "' + b"x" * 70_000 + b'"}', 413, ["body"]),
]


def _assert_bad_bodies_refused(client: httpx.Client) -> None:
    for body, status, loc in BAD_BODIES:
        resp = client.post("/predict", content=body, headers={"content-type": "application/json"})
        assert resp.status_code == status, (body[:60], resp.text)
        detail = resp.json()["detail"]
        assert detail[0]["loc"] == loc and detail[0]["msg"] and detail[0]["type"], detail


@asynccontextmanager
async def running(settings: ServingSettings) -> AsyncIterator[httpx.AsyncClient]:
    """The app in-process with its lifespan (startup/shutdown) around an httpx client."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serving", timeout=10) as client:
            await _until(client, lambda c: c.get("/ready"), lambda r: r.status_code == 200, "ready")
            yield client


async def _until(client: httpx.AsyncClient, call: Any, ok: Any, what: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        resp = await call(client)
        if ok(resp):
            return resp
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _model_event(version: int, model: Any, secret: str, *, threshold: float = 0.3) -> bytes:
    artifact = modeling.serialize(model)
    event = ModelEvent(event="promoted", version=version, created_at=time.time(), threshold=threshold,
                       metrics={"accuracy": 0.8, "log_loss": 0.4},
                       artifact_b64=base64.b64encode(artifact).decode(),
                       artifact_sha256=modeling.sha256(artifact), signature=modeling.sign(artifact, secret))
    return codec.dumps(event.model_dump(mode="json"))


async def _publish(stack: Stack, version: int, value: bytes) -> None:
    await produce(stack.broker.url, "models", [(str(version).encode(), value)])


def _predict(version: int) -> Any:
    async def call(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post("/predict", json=REQUEST)
    return call, lambda r: r.status_code == 200 and r.json()["model_version"] == version


async def test_hot_swap_refuses_tampered_artifacts_and_rolls_back(stack: Stack) -> None:
    rows = [({"amount": float(a), "channel": "online" if a % 2 else "pos"}, a > 500) for a in range(0, 1000, 7)]
    model = modeling.train(SPEC, rows)
    settings = serving_settings(stack)
    async with running(settings) as client:
        assert (await client.post("/predict", json=REQUEST)).json()["model_version"] == 0
        await _publish(stack, 1, _model_event(1, model, SECRET))
        call, ok = _predict(1)
        body = (await _until(client, call, ok, "version 1 serving")).json()
        assert body["threshold"] == 0.3
        raw = {"txn_count_5m": 0.0, "amount_sum_5m": 0.0, "txn_count_1h": 0.0, "amount_sum_1h": 0.0,
               "txn_count_24h": 0.0, "amount_sum_24h": 0.0, "merchant_distinct_24h": 0.0} | REQUEST["features"]
        assert body["score"] == modeling.score(model, raw, SPEC)

        other = modeling.train(SPEC, [(x, not y) for x, y in rows])
        await _publish(stack, 2, _model_event(2, other, "not-the-secret"))
        models = await _until(client, lambda c: c.get("/models"),
                              lambda r: any(h["version"] == 2 for h in r.json()["history"]), "v2 seen")
        refused = [h for h in models.json()["history"] if h["version"] == 2]
        assert refused[0]["outcome"] == "refused" and "signature" in refused[0]["reason"]
        assert (await client.post("/predict", json=REQUEST)).json()["model_version"] == 1

        async with running(settings) as fresh:  # a new replica replays `models` before it is ready
            assert (await fresh.post("/predict", json=REQUEST)).json()["model_version"] == 1

        rollback = ModelEvent(event="rolled_back", version=0, created_at=time.time(), reason="test")
        await _publish(stack, 0, codec.dumps(rollback.model_dump(mode="json")))
        call, ok = _predict(0)
        await _until(client, call, ok, "rollback to version 0")
        assert (await client.get("/models")).json()["versions"] == [0, 1]


async def test_redis_outage_degrades_but_still_answers(stack: Stack) -> None:
    write_features(stack.redis.url, "card-1", {"txn_count_5m": 7.0}, time.time())
    async with running(serving_settings(stack)) as client:
        first = (await client.post("/predict", json=REQUEST)).json()
        assert first["degraded"] == [] and first["feature_age_s"] is not None
        stack.redis.stop()
        resp = await client.post("/predict", json=REQUEST)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["degraded"] == [FEATURES_UNAVAILABLE] and body["feature_age_s"] is None
        assert body["model_version"] == 0
        assert (await client.get("/ready")).status_code == 503
        assert (await client.get("/health")).status_code == 200
        metrics = (await client.get("/metrics")).text
        assert sample(metrics, "rivulet_serving_degraded_total", reason=FEATURES_UNAVAILABLE) == 1.0
    # shutdown drained the log: the degraded record is on the topic, with defaults as features
    pid = body["prediction_id"].encode()
    records = await consume_all(stack.broker.url, "predictions", timeout=20,
                                until=lambda recs: any(r.key == pid for r in recs))
    record = PredictionRecord.model_validate(codec.loads(next(r.value for r in records if r.key == pid)))
    assert record.degraded == (FEATURES_UNAVAILABLE,)
    assert record.features["txn_count_5m"] == 0.0 and record.features["amount"] == 250.0
