"""Drift service as a real process against the real broker and Redis: stationary traffic
raises nothing; an amount shift opens ONE incident naming ``amount`` (covariate shift);
its state is readable with ``rivulet drift report``; clean traffic resolves it; a restarted
service replaying everything publishes nothing new (the incident tracker lives in Redis).
In-process: dead letters and stale predictions make an ``upstream_data`` incident."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import numpy as np
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from typer.testing import CliRunner

from services.drift.app import DriftService
from services.drift.settings import DriftSettings
from shared import codec, modeling, redis_keys
from shared.cli import app as cli_app
from shared.config import RivuletSettings
from shared.contracts import DeadLetter, DriftAlert, ModelEvent, PredictionRecord
from shared.profile import build_profile
from shared.spec import load_spec
from shared.topics import PREDICTIONS
from tests.helpers import (
    Stack,
    consume_all,
    produce,
    produce_json,
    read_topic,
    wait_for,
)
from tests.unit.test_drift_monitor import synth_rows, synth_score

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


def test_incident_opens_reports_resolves_and_survives_a_replay(stack: Stack) -> None:
    rng = np.random.default_rng(21)
    event, model = _promoted_v1(rng)
    produce_json(stack.broker.url, "models", [("1", event.model_dump())])
    stack.spawn("services.drift", RIVULET_SPEC=SPEC_PATH)

    stationary = _predictions(model, synth_rows(rng, 400, SPEC), 0)
    ignored = _predictions(model, synth_rows(rng, 200, SPEC, amount_scale=5.0), 400, role="shadow")
    _produce_and_wait(stack, stationary + ignored + stationary[:50], total=650)  # + redeliveries
    assert _alerts(stack) == []  # 3 stationary evaluations; shadow traffic is not monitored

    shifted = _predictions(model, synth_rows(rng, 400, SPEC, amount_scale=3.0), 1_000)
    _produce_and_wait(stack, shifted, total=1050)
    opened = _alerts(stack, at_least=1)[0]
    assert opened.status == "opened" and opened.incident_id and opened.model_version == 1
    assert opened.probable_cause == "covariate_shift" and opened.severity == "high"
    assert "amount" in {f.feature for f in opened.top_features}
    assert opened.kind in ("data_drift", "prediction_drift") and opened.test == "ks"
    assert opened.p_value is not None and opened.p_value < opened.threshold
    assert opened.window.count == 200 and opened.window.end >= 2_000.0  # never before the shift
    # change_point_at: served time from which the data looks changed (the shift starts at 2000;
    # stationary traffic was served at 1000..1399). The window interleaves the topic's
    # partitions, so it is sparse before the gap: the split lies after the window's start and
    # no later than the shift (tests/unit/test_drift_robustness.py checks it on a dense stream).
    assert opened.change_point_at is not None
    assert opened.window.start < opened.change_point_at <= 2_020.0

    state = redis.Redis.from_url(stack.redis.url).hgetall(redis_keys.drift_state(1))
    amount = codec.loads(state[b"amount|ks"])
    assert amount["drifted"] is True and amount["statistic"] > amount["critical"]
    assert codec.loads(state[b"_meta"])["incident_id"] == opened.incident_id
    result = CliRunner().invoke(cli_app, ["drift", "report", "--redis-url", stack.redis.url],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "amount" in result.output and "merchant_category" in result.output and "yes" in result.output

    calm = _predictions(model, synth_rows(rng, 400, SPEC), 2_000)
    _produce_and_wait(stack, calm, total=1450)
    try:
        wait_for(lambda: _alerts(stack)[-1].status == "resolved", timeout=20, interval=0.5, what="resolution")
    except AssertionError:
        st = redis.Redis.from_url(stack.redis.url).hgetall(redis_keys.drift_state(1))
        raise AssertionError(f"DBG {[(a.status, a.window) for a in _alerts(stack)]} {st.get(b'_meta')} "
                             f"{[v for k, v in st.items() if b'true' in v]} {stack.logs()[-3000:]}")
    alerts = _alerts(stack)
    statuses = [a.status for a in alerts]
    assert statuses == ["opened"] + ["updated"] * (len(alerts) - 2) + ["resolved"], (alerts, stack.logs())
    assert {a.incident_id for a in alerts} == {opened.incident_id} and alerts[-1].window.end >= 3_000.0
    assert {a.change_point_at for a in alerts} == {opened.change_point_at}

    # A new process with a fresh group replays all 1450 predictions: nothing new is published.
    stack.stop_services()
    stack.spawn("services.drift", RIVULET_SPEC=SPEC_PATH, RIVULET_DRIFT_GROUP="drift-replay")
    _produce_and_wait(stack, [], total=1450, group="drift-replay")
    assert [a.alert_id for a in _alerts(stack)] == [a.alert_id for a in alerts]


async def test_dead_letters_and_stale_predictions_make_an_upstream_incident(stack: Stack) -> None:
    settings = DriftSettings(kafka_bootstrap=stack.broker.url, redis_url=stack.redis.url, spec=SPEC_PATH)
    rng = np.random.default_rng(22)
    rows = synth_rows(rng, 400, SPEC)
    profile = build_profile(rows, [synth_score(r) for r in rows], SPEC)
    event = ModelEvent(event="promoted", version=1, created_at=1.0, reference_profile=profile)
    await produce(stack.broker.url, "models", [(b"1", codec.dumps(event.model_dump()))])
    recs = []
    for i, row in enumerate(synth_rows(rng, 200, SPEC)):
        rec = PredictionRecord(prediction_id=f"u{i}", entity_id="c", model_version=1, features=row,
                               score=synth_score(row), label=False, threshold=0.5, served_at=5_000.0 + i,
                               degraded=("stale_features",) if i % 2 else ())
        recs.append((rec.prediction_id.encode(), codec.dumps(rec.model_dump())))
    dead = [DeadLetter(reason="invalid", message="bad", source_topic="events.raw", source_partition=0,
                       source_offset=i, failed_at=5_000.0 + 4 * i) for i in range(40)]
    await produce_with_headers(stack.broker.url, "events.dlq", [(b"k", b"{bad", d.to_headers()) for d in dead])
    service = DriftService(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await asyncio.sleep(1.0)  # dead letters first (same consumer, other topic)
        await produce(stack.broker.url, "predictions", recs)
        got = await consume_all(stack.broker.url, "drift.alerts", until=lambda rs: len(rs) >= 1, timeout=20)
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
    [alert] = [DriftAlert.model_validate(codec.loads(a.value)) for a in got]
    assert alert.status == "opened" and alert.probable_cause == "upstream_data"
    assert {"dlq_rate", "stale_rate"} <= {f.test for f in alert.top_features}


async def produce_with_headers(bootstrap: str, topic: str, items: list[tuple[bytes, bytes, list]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for key, value, headers in items:
            await producer.send_and_wait(topic, value, key=key, headers=headers)
    finally:
        await producer.stop()
