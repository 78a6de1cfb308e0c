"""Ingestion against the real broker: valid records pass, bad ones land in the DLQ with
the original bytes, reason and source offset, and the valid records around them survive."""

from __future__ import annotations

import asyncio
import signal
import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from shared import codec
from shared.contracts import DeadLetter
from tests.helpers import Stack, produce_json, read_topic, wait_for


def _event(i: int, now: float) -> dict:
    return {"event_id": f"e{i}", "entity_id": f"card-{i % 7}", "event_time": now - 60 + i * 0.01,
            "amount": 10.0 + i, "merchant_category": "grocery", "country": "FR", "channel": "pos"}


BAD_EVENTS: list[tuple[bytes, str]] = [
    (b"{malformed", "invalid_json"),
    (b'{"event_id": "x", "amount": NaN}', "non_finite"),
    (b'{"event_id": "x", "amount": Infinity}', "non_finite"),
    (b'{"event_id":"x","entity_id":"c","event_time":1,"amount":"ten","merchant_category":"a",'
     b'"country":"FR","channel":"pos"}', "wrong_type"),
    (b'{"entity_id":"c","event_time":1,"amount":1,"merchant_category":"a","country":"FR","channel":"pos"}',
     "missing_field"),
    (b"{}", "missing_field"),
]


def test_events_and_labels_validated_and_dead_lettered(stack: Stack) -> None:
    now = time.time()
    unknown_channel = {**_event(999, now), "channel": "telepathy"}
    big = {**_event(998, now), "note": "x" * (1 << 20)}  # a 1 MB payload
    items: list[tuple[str | None, object]] = []
    for i in range(40):
        items.append((f"card-{i % 7}", _event(i, now)))
        if i % 5 == 0 and i // 5 < len(BAD_EVENTS):
            items.append(("bad", BAD_EVENTS[i // 5][0]))
    items += [("card-1", unknown_channel), ("card-2", codec.dumps(big))]
    items += [(f"card-{i % 7}", _event(i, now)) for i in range(40, 50)]
    stack.spawn("services.ingestion")
    produce_json(stack.broker.url, "events.raw", items)
    labels = [("p1", {"prediction_id": "p1", "label": True, "event_time": now}),
              ("p2", b'{"prediction_id": "p2", "label": "maybe", "event_time": 1}'),
              ("p3", {"prediction_id": "p3", "label": 0, "event_time": now}),
              ("p4", b"\xff\xfe not json"),
              ("p5", codec.dumps({"prediction_id": "p5", "label": False, "event_time": now, "pad": "y" * (1 << 20)}))]
    produce_json(stack.broker.url, "labels.raw", labels)

    valid = read_topic(stack.broker.url, "events.valid", count=50, timeout=40)
    dlq = read_topic(stack.broker.url, "events.dlq", count=len(BAD_EVENTS) + 2, timeout=20)
    assert sorted(codec.loads(r.value)["event_id"] for r in valid) == sorted(f"e{i}" for i in range(50))
    assert all(r.key == codec.loads(r.value)["entity_id"].encode() for r in valid)

    raw = read_topic(stack.broker.url, "events.raw", count=len(items))
    offsets = {r.value: r.offset for r in raw}
    got = {(r.value, DeadLetter.from_headers(r.headers).reason) for r in dlq}
    expected_bad = {(b, reason) for b, reason in BAD_EVENTS}
    expected_bad.add((codec.dumps(unknown_channel), "not_allowed"))
    expected_bad.add((codec.dumps(big), "payload_too_large"))
    assert got == expected_bad
    for r in dlq:
        meta = DeadLetter.from_headers(r.headers)
        assert meta.source_topic == "events.raw" and meta.source_offset == offsets[r.value]
        assert meta.message
    channel = next(DeadLetter.from_headers(r.headers) for r in dlq if r.value == codec.dumps(unknown_channel))
    assert channel.field == "channel"

    good_labels = read_topic(stack.broker.url, "labels.valid", count=2, timeout=20)
    assert sorted(codec.loads(r.value)["prediction_id"] for r in good_labels) == ["p1", "p3"]
    bad_labels = read_topic(stack.broker.url, "labels.dlq", count=3, timeout=20)
    reasons = sorted(DeadLetter.from_headers(r.headers).reason for r in bad_labels)
    assert reasons == ["invalid_json", "payload_too_large", "wrong_type"]


async def _committed(bootstrap: str, partitions: set[int]) -> dict[int, int | None]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id="rivulet-ingestion", enable_auto_commit=False)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition("events.raw", p)) for p in partitions}
    finally:
        await consumer.stop()


def test_throttled_commits_still_reach_the_end_when_idle_and_on_stop(stack: Stack) -> None:
    """Commits are throttled (``ingestion_commit_interval_s``, here far longer than the test,
    so only the first batch commits on its own): the offsets of later acked batches are
    still committed once the loop goes idle or stops (SIGTERM)."""
    now = time.time()
    proc = stack.spawn("services.ingestion", RIVULET_INGESTION_COMMIT_INTERVAL_S=600)
    for start in (0, 30):
        produce_json(stack.broker.url, "events.raw", [(f"card-{i % 7}", _event(i, now)) for i in range(start, start + 30)])
        read_topic(stack.broker.url, "events.valid", count=start + 30, timeout=30)
        raw = read_topic(stack.broker.url, "events.raw", count=start + 30)
        end = {p: max(r.offset for r in raw if r.partition == p) + 1 for p in {r.partition for r in raw}}
        if start:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
        wait_for(lambda end=end: asyncio.run(_committed(stack.broker.url, set(end))) == end, timeout=20,
                 interval=0.3, what="ingestion committed up to the end of events.raw")

