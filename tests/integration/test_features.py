"""The features service as a real process against the real broker and Redis.

Every entity's Redis hash must equal the batch engine (compute_features) over that
entity's deduplicated events at its newest event time: with duplicates and out-of-order
events, and across a SIGKILL mid-stream plus a restart (nothing lost, nothing twice).
"""

from __future__ import annotations

import asyncio
import random
import signal
import threading
import time
from collections import defaultdict
from typing import Any

import pytest
import redis as redis_sync
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from shared import codec, redis_keys
from shared.spec import UseCaseSpec, load_spec
from shared.topics import EVENTS_VALID
from services.features.handlers import compute_features
from tests.helpers import Stack, wait_for

SPEC: UseCaseSpec = load_spec()
GROUP = "rivulet-features"
FAST = {"RIVULET_SESSION_TIMEOUT_S": 6, "RIVULET_LOG_LEVEL": "INFO"}


def make_events(seed: int, entities: int, per_entity: int, base: float) -> list[dict[str, Any]]:
    """Valid events in arrival order: disorder < lateness/2, ~5% produced twice."""
    rng = random.Random(seed)
    events = []
    for e in range(entities):
        t = base
        for i in range(per_entity):
            t += rng.uniform(0, 240)
            events.append({
                "schema_version": 1, "event_id": f"s{seed}-c{e}-{i}", "entity_id": f"card-{e}",
                "event_time": t, "amount": round(rng.uniform(0, 500), 2),
                "merchant_category": rng.choice(["grocery", "fuel", "travel", "online_retail"]),
                "country": rng.choice(["DE", "FR", "US"]), "channel": rng.choice(["online", "pos", "atm"]),
                "ingested_at": time.time(),
            })
    lateness = SPEC.features_config.allowed_lateness
    arrival = sorted(events, key=lambda ev: ev["event_time"] + rng.uniform(0, lateness / 2))
    for ev in rng.sample(events, len(events) // 20):
        arrival.insert(min(len(arrival), arrival.index(ev) + rng.randint(1, 30)), dict(ev))
    return arrival


async def _produce(bootstrap: str, values: list[tuple[bytes, bytes]]) -> dict[int, int]:
    """Produce in order; returns partition -> highest offset written."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send("events.valid", v, key=k) for k, v in values]
        metas = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    last: dict[int, int] = {}
    for m in metas:
        last[m.partition] = max(last.get(m.partition, -1), m.offset)
    return last


def produce(stack: Stack, events: list[dict[str, Any]], junk: int = 0) -> dict[int, int]:
    values = [(e["entity_id"].encode(), codec.dumps(e)) for e in events]
    values += [(b"card-0", b"\xffnot json")] * junk
    return asyncio.run(_produce(stack.broker.url, values))


def applied(r: redis_sync.Redis) -> dict[int, int]:
    return {int(k): int(v) for k, v in r.hgetall(redis_keys.applied_offsets(SPEC, GROUP)).items()}


def all_applied(r: redis_sync.Redis, last: dict[int, int]) -> bool:
    done = applied(r)
    return all(done.get(p, -1) >= o for p, o in last.items())


def assert_store_matches_batch_engine(r: redis_sync.Redis, events: list[dict[str, Any]]) -> None:
    by_entity: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for ev in events:
        by_entity[ev["entity_id"]].append(ev)
    for entity, evs in by_entity.items():
        at = max(e["event_time"] for e in evs)
        expected = compute_features(evs, at, SPEC)
        stored = {k.decode(): v.decode() for k, v in r.hgetall(redis_keys.features(SPEC, entity)).items()}
        assert float(stored.pop("_event_time")) == at, entity
        assert float(stored.pop("_written_at")) > 0
        assert set(stored) == {k for k, v in expected.items() if v is not None}, entity
        for name, value in stored.items():
            assert float(value) == pytest.approx(expected[name], rel=1e-9, abs=1e-9), (entity, name)
        assert 0 < r.ttl(redis_keys.features(SPEC, entity)) <= SPEC.features_config.entity_ttl


def test_features_equal_batch_engine(stack: Stack) -> None:
    r = redis_sync.Redis.from_url(stack.redis.url)
    events = make_events(seed=1, entities=50, per_entity=38, base=time.time() - 4 * 3600)
    assert len(events) >= 1900
    proc = stack.spawn("services.features", **FAST)
    last = produce(stack, events, junk=3)
    wait_for(lambda: all_applied(r, last), timeout=45, what="all offsets applied")
    assert proc.poll() is None
    assert_store_matches_batch_engine(r, events)
    counts = {int(float(r.hget(redis_keys.features(SPEC, f"card-{e}"), "txn_count_24h"))) for e in range(50)}
    assert counts == {38}  # duplicates counted once
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0  # clean stop on SIGTERM


def test_sigkill_mid_stream_loses_nothing_and_counts_nothing_twice(stack: Stack) -> None:
    r = redis_sync.Redis.from_url(stack.redis.url)
    first = make_events(seed=2, entities=40, per_entity=25, base=time.time() - 6 * 3600)
    second = make_events(seed=3, entities=40, per_entity=25, base=first[-1]["event_time"] - 60)
    # Commits to Kafka are rare here, so the restart redelivers what Redis already applied.
    proc = stack.spawn("services.features", RIVULET_COMMIT_INTERVAL_S=60, RIVULET_BATCH_SIZE=50, **FAST)
    last = produce(stack, first)
    wait_for(lambda: all_applied(r, last), timeout=45, what="first half applied")
    before = sum(applied(r).values())

    def feed() -> None:
        for i in range(0, len(second), 100):
            produce(stack, second[i:i + 100])
            time.sleep(0.05)

    feeder = threading.Thread(target=feed)
    feeder.start()
    wait_for(lambda: sum(applied(r).values()) > before, timeout=20, what="progress on the second half")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    feeder.join()

    end = asyncio.run(_end_offsets(stack.broker.url))
    assert not all_applied(r, end), "kill came too late to test anything"
    restarted = stack.spawn("services.features", **FAST)
    wait_for(lambda: all_applied(r, end), timeout=60, what="everything applied after restart")
    assert restarted.poll() is None
    assert_store_matches_batch_engine(r, first + second)
    assert "redelivered record(s) skipped" in stack.logs()


async def _end_offsets(bootstrap: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition("events.valid", p) for p in range(EVENTS_VALID.partitions)])
    finally:
        await consumer.stop()
    return {tp.partition: off - 1 for tp, off in ends.items() if off > 0}

