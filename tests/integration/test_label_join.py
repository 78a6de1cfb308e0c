"""label_join as a real process against a real broker and Redis: pairs join in either
arrival order, exactly once, corrections bump the revision, and neither a SIGKILL nor a
full redelivery of both input topics loses or repeats a pair."""

from __future__ import annotations

import asyncio
from collections import Counter

import redis
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from shared import codec, redis_keys
from shared.contracts import Label, LabeledPrediction, PredictionRecord
from shared.spec import load_spec
from shared.topics import LABELS_VALID, PREDICTIONS, PREDICTIONS_LABELED
from tests.helpers import Stack, produce_json, read_topic, wait_for

FAST = {"RIVULET_SESSION_TIMEOUT_MS": 3000}


def pred(pid: str, i: int = 0) -> PredictionRecord:
    return PredictionRecord(prediction_id=pid, entity_id=f"card-{i % 7}", model_version=i % 3,
                            features={"amount": float(i), "country": "FR"}, score=(i % 10) / 10,
                            label=i % 10 >= 5, threshold=0.5, served_at=1.7e9 + i, latency_ms=1.0)


def lab(pid: str, value: bool, i: int = 0) -> Label:
    return Label(prediction_id=pid, label=value, event_time=1.7e9 + 100 + i)


def send(stack: Stack, recs: list[PredictionRecord] | list[Label]) -> None:
    topic = PREDICTIONS.name if recs and isinstance(recs[0], PredictionRecord) else LABELS_VALID.name
    produce_json(stack.broker.url, topic, [(r.prediction_id, r.model_dump(mode="json")) for r in recs])


def outputs(stack: Stack, count: int, timeout: float = 30.0) -> list[LabeledPrediction]:
    recs = read_topic(stack.broker.url, PREDICTIONS_LABELED.name, count=count, timeout=timeout)
    out = [LabeledPrediction.model_validate(codec.loads(r.value)) for r in recs]
    assert all(r.key == o.prediction_id.encode() for r, o in zip(recs, out))
    return out


def assert_pairs(out: list[LabeledPrediction], preds: dict[str, PredictionRecord], labels: dict[str, Label]) -> None:
    for o in out:
        p, lb = preds[o.prediction_id], labels[o.prediction_id]
        assert PredictionRecord.model_validate(o.model_dump()) == p
        assert (o.actual, o.label_event_time) == (lb.label, lb.event_time)
        assert o.labeled_at > 1.7e9


def test_joins_in_either_order_exactly_once(stack: Stack) -> None:
    proc = stack.spawn("services.label_join", **FAST)
    early = [pred(f"early{i}", i) for i in range(100)]        # labels arrive first
    late = [pred(f"late{i}", i) for i in range(100)]          # labels arrive after
    labels = {p.prediction_id: lab(p.prediction_id, i % 2 == 0, i) for i, p in enumerate(early + late)}
    orphans = [lab(f"orphan{i}", True, i) for i in range(10)]  # prediction never comes
    send(stack, [labels[p.prediction_id] for p in early] + orphans)
    produce_json(stack.broker.url, LABELS_VALID.name, [("junk", b"{not json")])
    send(stack, early + late)
    send(stack, [labels[p.prediction_id] for p in late] + [labels["late7"]])  # + one exact duplicate
    first = outputs(stack, 200)
    assert Counter(o.prediction_id for o in first) == Counter({p.prediction_id: 1 for p in early + late})
    assert {o.revision for o in first} == {1}
    assert_pairs(first, {p.prediction_id: p for p in early + late}, labels)

    fixed = lab("early3", not labels["early3"].label, 500)   # a correction
    send(stack, [fixed, fixed, labels["late7"]])             # ... sent twice, plus a stale duplicate
    outputs(stack, 201)
    assert proc.poll() is None, "an invalid record must not stop the service"
    out = [LabeledPrediction.model_validate(codec.loads(rec.value)) for rec in _all(stack)]  # nothing extra
    assert len(out) == 201
    corrected = [o for o in out if o.revision != 1]
    assert [(c.prediction_id, c.revision, c.actual, c.label_event_time) for c in corrected] == [
        ("early3", 2, fixed.label, fixed.event_time)]

    r = redis.Redis.from_url(stack.redis.url)
    ttl_max = load_spec().labels.maturity + 600
    assert r.get(redis_keys.join_prediction("orphan0")) is None
    assert r.get(redis_keys.join_label("orphan0")) is not None
    assert 0 < r.ttl(redis_keys.join_label("orphan0")) <= ttl_max
    assert 0 < r.ttl(redis_keys.join_done("early3")) <= ttl_max
    assert codec.loads(r.get(redis_keys.join_done("early3"))) == {"revision": 2, "actual": fixed.label}


async def _caught_up(bootstrap: str, group: str) -> bool:
    """True when ``group`` has committed up to the end of both input topics (a group-less
    look: this consumer never joins, it only fetches the group's committed offsets)."""
    tps = [TopicPartition(t.name, p) for t in (PREDICTIONS, LABELS_VALID) for p in range(t.partitions)]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(tps)
        committed = {tp: await consumer.committed(tp) for tp in tps}
    finally:
        await consumer.stop()
    return all(ends[tp] == 0 or (committed[tp] or 0) >= ends[tp] for tp in tps)


def test_sigkill_restart_and_full_redelivery_lose_and_repeat_nothing(stack: Stack) -> None:
    r = redis.Redis.from_url(stack.redis.url)
    proc = stack.spawn("services.label_join", **FAST)
    first = [pred(f"a{i}", i) for i in range(100)]
    second = [pred(f"b{i}", i) for i in range(50)]
    labels = {p.prediction_id: lab(p.prediction_id, i % 3 == 0, i) for i, p in enumerate(first + second)}
    send(stack, first)
    send(stack, [labels[p.prediction_id] for p in first[:50] + second])  # b* labels wait for predictions
    wait_for(lambda: all(r.exists(redis_keys.join_done(p.prediction_id)) for p in first[:50]),
             timeout=30, what="first 50 pairs marked done")
    proc.kill()
    proc.wait()

    send(stack, second)                                            # joins with labels stored in Redis
    send(stack, [labels[p.prediction_id] for p in first[50:]])
    stack.spawn("services.label_join", **FAST)                     # same group: resumes after commit
    outputs(stack, 150, timeout=40)
    wait_for(lambda: asyncio.run(_caught_up(stack.broker.url, "rivulet-label-join")), timeout=20,
             what="restarted service caught up")
    replay = stack.spawn("services.label_join", RIVULET_GROUP_ID="replay", **FAST)  # redelivers everything
    wait_for(lambda: asyncio.run(_caught_up(stack.broker.url, "replay")), timeout=30, what="replay caught up")
    assert replay.poll() is None

    out = [LabeledPrediction.model_validate(codec.loads(rec.value)) for rec in _all(stack)]
    assert Counter(o.prediction_id for o in out) == Counter({p.prediction_id: 1 for p in first + second})
    assert {o.revision for o in out} == {1}
    assert_pairs(out, {p.prediction_id: p for p in first + second}, labels)


def _all(stack: Stack) -> list[ConsumerRecord]:
    return read_topic(stack.broker.url, PREDICTIONS_LABELED.name, count=10_000, timeout=2.0)
