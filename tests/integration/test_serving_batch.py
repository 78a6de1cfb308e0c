"""/predict/batch of 100 on a promoted (vectorised) model against a real broker and Redis: the
same answers as single calls (to 1e-9), one record per prediction on ``predictions``, and
/models showing each version's lineage as announced. Plus the OpenAPI examples are valid."""

from __future__ import annotations

import asyncio
import base64
import random
import time

import pytest
import redis

from shared import codec, modeling, redis_keys
from shared.contracts import ModelEvent, PredictionRecord, TrainingWindow
from shared.spec import load_spec
from tests.helpers import Stack, consume_all, produce
from tests.integration.test_serving import SECRET, running, serving_settings

SPEC = load_spec()
CATEGORIES = {"merchant_category": ["grocery", "travel"], "country": ["US", "FR"], "channel": ["online", "atm"]}


def _features(url: str, n: int, rng: random.Random) -> None:
    client = redis.Redis.from_url(url)
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        values = {f.name: str(rng.uniform(0, 50)) for f in SPEC.features if rng.random() < 0.8}
        pipe.hset(redis_keys.features(SPEC, f"card-{i}"), mapping=values | {
            redis_keys.EVENT_TIME_FIELD: str(time.time() - 10)})
    pipe.execute()
    client.close()


async def test_batch_of_100_matches_single_calls_and_models_shows_lineage(stack: Stack) -> None:
    rng = random.Random(3)
    _features(stack.redis.url, 100, rng)
    rows = [({"amount": rng.lognormvariate(3, 1), "txn_count_5m": float(rng.randrange(6))}
             | {k: rng.choice(v) for k, v in CATEGORIES.items()}, rng.random() < 0.3) for _ in range(600)]
    model = modeling.train(SPEC, rows)
    artifact = modeling.serialize(model)
    event = ModelEvent(event="promoted", version=1, parent=0, created_at=time.time(), trigger="drift",
                       reason="psi on amount", who="retrain", threshold=0.35, metrics={"accuracy": 0.8},
                       trained_on=TrainingWindow(start=1.0, end=2.0, count=600), reference_profile={"x": 1},
                       artifact_b64=base64.b64encode(artifact).decode(), artifact_sha256=modeling.sha256(artifact),
                       signature=modeling.sign(artifact, SECRET))
    items = [{"entity_id": f"card-{i}", "features": {"amount": round(rng.uniform(1, 900), 2)}
              | {k: rng.choice(v) for k, v in CATEGORIES.items()}} for i in range(100)]
    async with running(serving_settings(stack)) as client:
        await produce(stack.broker.url, "models", [(b"1", codec.dumps(event.model_dump(mode="json")))])
        for _ in range(100):
            models = (await client.get("/models")).json()
            if models["champion"]["version"] == 1:
                break
            await asyncio.sleep(0.1)
        lineage = models["champion"]["lineage"]
        assert lineage == models["lineage"]["1"] and "artifact_b64" not in lineage and "reference_profile" not in lineage
        assert (lineage["parent"], lineage["trigger"], lineage["who"], lineage["reason"]) == (0, "drift", "retrain",
                                                                                            "psi on amount")
        assert lineage["trained_on"]["count"] == 600 and lineage["metrics"] == {"accuracy": 0.8}
        assert lineage["artifact_sha256"] == modeling.sha256(artifact) and models["lineage"]["0"]["event"] == "baseline"

        batch = await client.post("/predict/batch", json={"items": items})
        assert batch.status_code == 200, batch.text
        answers = batch.json()["items"]
        singles = [(await client.post("/predict", json=item)).json() for item in items]
    assert [a["entity_id"] for a in answers] == [item["entity_id"] for item in items]
    assert {a["model_version"] for a in answers} == {1} and len({a["prediction_id"] for a in answers}) == 100
    for answer, single in zip(answers, singles):
        assert answer["score"] == pytest.approx(single["score"], abs=1e-9, rel=0)
        assert answer["label"] == (answer["score"] >= 0.35) and answer["feature_age_s"] is not None
    assert len({round(a["score"], 6) for a in answers}) > 20  # the inputs really differ

    want = {a["prediction_id"] for a in answers}
    records = await consume_all(stack.broker.url, "predictions", timeout=20,
                                until=lambda recs: want <= {r.key.decode() for r in recs})
    logged = {r.key.decode(): PredictionRecord.model_validate(codec.loads(r.value)) for r in records}
    for answer in answers:
        record = logged[answer["prediction_id"]]
        assert (record.score, record.model_version, record.entity_id) == (answer["score"], 1, answer["entity_id"])
        assert record.features["amount"] == next(i for i in items if i["entity_id"] == answer["entity_id"]
                                                 )["features"]["amount"]


async def test_openapi_documents_valid_examples_and_every_response(stack: Stack) -> None:
    async with running(serving_settings(stack)) as client:
        spec = (await client.get("/openapi.json")).json()
        single = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["example"]
        batch = spec["paths"]["/predict/batch"]["post"]["requestBody"]["content"]["application/json"]["example"]
        assert (await client.post("/predict", json=single)).status_code == 200
        assert (await client.post("/predict/batch", json=batch)).status_code == 200
        assert set(single["features"]) == set(SPEC.event.fields)  # every request-time field shown
        for path in ("/predict", "/predict/batch", "/models", "/ready", "/health", "/metrics"):
            op = next(iter(spec["paths"][path].values()))
            assert op.get("description") or op.get("summary"), path
            assert "200" in op["responses"], path
        assert "lineage" in spec["components"]["schemas"]["ModelsResponse"]["properties"]
        assert spec["components"]["schemas"]["PredictResponse"]["examples"]
