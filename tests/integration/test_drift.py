"""Drift service as a real process against the real broker and Redis: stationary traffic
raises nothing, an amount shift raises a data_drift alert naming ``amount``, and the
cool-down (in Redis) suppresses the repeat, also across a restart of the service."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import numpy as np
import redis
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared import codec, modeling, redis_keys
from shared.config import RivuletSettings
from shared.contracts import DriftAlert, ModelEvent, PredictionRecord
from shared.profile import build_profile
from shared.spec import load_spec
from shared.topics import PREDICTIONS
from tests.helpers import Stack, produce_json, read_topic, wait_for
from tests.unit.test_drift_monitor import synth_rows

SPEC_PATH = Path(__file__).with_name("drift_test_spec.toml")
SPEC = load_spec(SPEC_PATH)
GROUP = "rivulet-drift"


def _promoted_v1(rng: np.random.Generator) -> tuple[ModelEvent, object]:
    """A real small model trained on synthetic rows, announced like retrain does."""
    rows = synth_rows(rng, SPEC.drift.reference_size, SPEC)
    labels = [bool(r["amount"] > 60 or r["merchant_category"] == "travel") for r in rows]
    model = modeling.train(SPEC, list(zip(rows, labels)))
    scores = [modeling.score(model, r, SPEC) for r in rows]
    artifact = modeling.serialize(model)
    secret = RivuletSettings().model_secret.get_secret_value()
    event = ModelEvent(
        event="promoted", version=1, parent=0, created_at=1.0, trigger="test",
        metrics=modeling.evaluate(model, list(zip(rows, labels)), SPEC, 0.5),
        reference_profile=build_profile(rows, scores, SPEC),
        artifact_b64=base64.b64encode(artifact).decode(), artifact_sha256=modeling.sha256(artifact),
        signature=modeling.sign(artifact, secret),
    )
    return event, model


def _predictions(model: object, rows: list[dict], start: int, role: str = "champion") -> list[tuple[str, dict]]:
    out = []
    for i, row in enumerate(rows):
        score = modeling.score(model, row, SPEC)  # type: ignore[arg-type]
        rec = PredictionRecord(prediction_id=f"p{start + i}", entity_id=f"c{i % 20}", model_version=1,
                               role=role, features=row, score=score, label=score >= 0.5, threshold=0.5,
                               served_at=1_000.0 + start + i)
        out.append((rec.prediction_id, rec.model_dump()))
    return out


def _committed(bootstrap: str, group: str = GROUP) -> int:
    """Records of `predictions` the group has committed (i.e. fully processed).
    A consumer that never subscribes only fetches offsets: it does not join the group."""
    async def fetch() -> int:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
        await consumer.start()
        try:
            parts = [TopicPartition("predictions", p) for p in range(PREDICTIONS.partitions)]
            return sum([await consumer.committed(tp) or 0 for tp in parts])
        finally:
            await consumer.stop()
    return asyncio.run(fetch())


def _alerts(stack: Stack, at_least: int = 0) -> list[DriftAlert]:
    """Every alert published so far (waiting for ``at_least`` of them)."""
    if at_least:
        wait_for(lambda: _end(stack.broker.url) >= at_least, timeout=20, what="an alert")
    end = _end(stack.broker.url)
    recs = read_topic(stack.broker.url, "drift.alerts", timeout=20, until=lambda rs: len(rs) >= end)
    assert all(r.key == b"1" for r in recs)
    return [DriftAlert.model_validate(codec.loads(r.value)) for r in recs]


def _end(bootstrap: str) -> int:
    async def end() -> int:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
        await consumer.start()
        try:
            tp = TopicPartition("drift.alerts", 0)
            return (await consumer.end_offsets([tp]))[tp]
        finally:
            await consumer.stop()
    return asyncio.run(end())


def _produce_and_wait(stack: Stack, items: list[tuple[str, dict]], total: int, group: str = GROUP) -> None:
    if items:
        produce_json(stack.broker.url, "predictions", items)
    wait_for(lambda: _committed(stack.broker.url, group) >= total, timeout=25, interval=0.3,
             what=f"drift to commit {total} predictions\n{stack.logs()}")


def test_stationary_then_shift_then_cooldown_across_restart(stack: Stack) -> None:
    rng = np.random.default_rng(21)
    event, model = _promoted_v1(rng)
    produce_json(stack.broker.url, "models", [("1", event.model_dump())])
    stack.spawn("services.drift", RIVULET_SPEC=SPEC_PATH)

    stationary = _predictions(model, synth_rows(rng, 400, SPEC), 0)
    ignored = _predictions(model, synth_rows(rng, 200, SPEC, amount_scale=5.0), 400, role="shadow")
    _produce_and_wait(stack, stationary + ignored + stationary[:50], total=650)  # + redeliveries
    assert _alerts(stack) == []  # 2 stationary windows; shadow traffic is not monitored

    shifted = _predictions(model, synth_rows(rng, 200, SPEC, amount_scale=3.0), 1_000)
    produce_json(stack.broker.url, "predictions", shifted)
    alerts = _alerts(stack, at_least=1)
    amount = [a for a in alerts if a.feature == "amount"]
    assert len(amount) == 1, stack.logs()
    a = amount[0]
    assert (a.kind, a.test, a.model_version) == ("data_drift", "ks", 1)
    assert a.p_value is not None and a.p_value < a.threshold == SPEC.drift.alpha / 5
    assert (a.window.count, a.window.start, a.window.end) == (200, 2_000.0, 2_199.0)
    assert "amount" in a.message and len(a.alert_id) == 32

    key = redis_keys.drift_cooldown(1, "data_drift", "amount")
    ttl = redis.Redis.from_url(stack.redis.url).ttl(key)
    assert 0 < ttl <= 60

    more = _predictions(model, synth_rows(rng, 200, SPEC, amount_scale=3.0), 2_000)
    _produce_and_wait(stack, more, total=1050)
    first = _alerts(stack)
    # the repeat is suppressed; the score moved with amount; nothing else alerted
    assert sorted((x.kind, x.feature or "-") for x in first) == [
        ("data_drift", "amount"), ("prediction_drift", "-")]

    # A new process (fresh group, so it replays all 1050 predictions and sees two shifted
    # windows again) publishes nothing new: the cool-down lives in Redis, not in memory.
    stack.stop_services()
    stack.spawn("services.drift", RIVULET_SPEC=SPEC_PATH, RIVULET_DRIFT_GROUP="drift-replay")
    _produce_and_wait(stack, [], total=1050, group="drift-replay")
    assert {x.alert_id for x in _alerts(stack)} == {x.alert_id for x in first}
    assert stack.logs().count("suppressed by cool-down: v1 data_drift amount") >= 3
