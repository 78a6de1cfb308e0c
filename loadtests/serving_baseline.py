"""The serving benchmark's baseline: the least a /predict can do. One Redis HGETALL, one River
predict, one aiokafka send; no validation, metrics, routing or degraded modes.

Run by ``loadtests/serving.py`` as ``python -m loadtests.serving_baseline`` with
BASELINE_PORT, BASELINE_REDIS_URL, BASELINE_KAFKA, BASELINE_MODEL (pickle path), BASELINE_KEY_PREFIX.
"""

from __future__ import annotations

import os
import pickle
import uuid

import orjson
import uvicorn
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI, Request, Response
from redis.asyncio import Redis

TOPIC = "bench.baseline"
app = FastAPI()
state: dict = {}


@app.on_event("startup")
async def startup() -> None:
    with open(os.environ["BASELINE_MODEL"], "rb") as fh:
        state["model"] = pickle.load(fh)  # noqa: S301 - the benchmark's own file
    state["redis"] = Redis.from_url(os.environ["BASELINE_REDIS_URL"], decode_responses=True)
    state["producer"] = AIOKafkaProducer(bootstrap_servers=os.environ["BASELINE_KAFKA"], linger_ms=2)
    await state["producer"].start()
    state["prefix"] = os.environ["BASELINE_KEY_PREFIX"]


@app.post("/predict")
async def predict(request: Request) -> Response:
    body = orjson.loads(await request.body())
    raw = await state["redis"].hgetall(state["prefix"] + body["entity_id"])
    x = {k: float(v) for k, v in raw.items() if not k.startswith("_")} | body.get("features", {})
    score = state["model"].predict_proba_one(x).get(True, 0.0)
    out = orjson.dumps({"prediction_id": uuid.uuid4().hex, "score": score, "label": score >= 0.5})
    await state["producer"].send(TOPIC, out)  # queued, not awaited: like serving's log
    return Response(out, media_type="application/json")


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["BASELINE_PORT"]), loop="uvloop",
                http="httptools", access_log=False, log_level="warning")
