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
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.errors import InconsistentGroupProtocolError

from services.features.handlers import compute_features
from shared import codec, redis_keys
from shared.contracts import DeadLetter
from shared.spec import UseCaseSpec, load_spec
from tests.helpers import Stack, read_topic, wait_for

SPEC: UseCaseSpec = load_spec()
GROUP = "rivulet-features"
FAST = {"RIVULET_SESSION_TIMEOUT_S": 4, "RIVULET_LOG_LEVEL": "INFO"}


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


class BackgroundFeed(threading.Thread):
    """Produces ``pool`` 30 events every 0.1 s (so events keep flowing through kills and
    rebalances) and records what went out and the last offset per partition (Tansu's
    ListOffsets counts batches, not records, so the producer's offsets are the truth)."""

    def __init__(self, stack: Stack, pool: list[dict[str, Any]]) -> None:
        super().__init__(daemon=True)
        self.stack, self.pool = stack, pool
        self.produced: list[dict[str, Any]] = []
        self.end: dict[int, int] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        for i in range(0, len(self.pool), 30):
            if self.halt.is_set():
                return
            for part, off in produce(self.stack, self.pool[i:i + 30]).items():
                self.end[part] = max(self.end.get(part, -1), off)
            self.produced.extend(self.pool[i:i + 30])
            time.sleep(0.1)

    def finish(self) -> list[dict[str, Any]]:
        self.halt.set()
        self.join()
        return list(self.produced)


def applied(r: redis_sync.Redis) -> dict[int, int]:
    return {int(k): int(v) for k, v in r.hgetall(redis_keys.applied_offsets(SPEC, GROUP)).items()}


def all_applied(r: redis_sync.Redis, last: dict[int, int]) -> bool:
    done = applied(r)
    return all(done.get(p, -1) >= o for p, o in last.items())


def assert_store_matches_batch_engine(r: redis_sync.Redis, events: list[dict[str, Any]],
                                      spec: UseCaseSpec = SPEC) -> None:
    by_entity: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for ev in events:
        by_entity[ev["entity_id"]].append(ev)
    for entity, evs in by_entity.items():
        at = max(e["event_time"] for e in evs)
        expected = compute_features(evs, at, spec)
        stored = {k.decode(): v.decode() for k, v in r.hgetall(redis_keys.features(spec, entity)).items()}
        assert float(stored.pop("_event_time")) == at, entity
        assert float(stored.pop("_written_at")) > 0
        assert set(stored) == {k for k, v in expected.items() if v is not None}, entity
        for name, value in stored.items():
            assert float(value) == pytest.approx(expected[name], rel=1e-9, abs=1e-9), (entity, name)
        assert 0 < r.ttl(redis_keys.features(spec, entity)) <= spec.features_config.entity_ttl


def test_features_equal_batch_engine(stack: Stack) -> None:
    r = redis_sync.Redis.from_url(stack.redis.url)
    base = time.time() - 4 * 3600
    events = make_events(seed=1, entities=50, per_entity=38, base=base)
    assert len(events) >= 1900
    # after each entity's newest event, one an hour older than its oldest: beyond the lateness
    late = [{**events[0], "entity_id": f"card-{e}", "event_id": f"late-{e}", "event_time": base - 3600}
            for e in range(5)]
    proc = stack.spawn("services.features", **FAST)
    last = produce(stack, events + late, junk=3)
    wait_for(lambda: all_applied(r, last), timeout=45, what="all offsets applied")
    assert proc.poll() is None
    assert_store_matches_batch_engine(r, events)  # late events are not applied...
    counts = {int(float(r.hget(redis_keys.features(SPEC, f"card-{e}"), "txn_count_24h"))) for e in range(50)}
    assert counts == {38}  # duplicates counted once
    dead = read_topic(stack.broker.url, "events.late", count=5, timeout=10)  # ...they are dead-lettered
    assert sorted(rec.value for rec in dead) == sorted(codec.dumps(e) for e in late)  # original bytes
    for rec in dead:
        meta = DeadLetter.from_headers(rec.headers)
        assert meta.reason == "late_event" and meta.field == "event_time" and meta.source_topic == "events.valid"
        assert rec.key == codec.loads(rec.value)["entity_id"].encode()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0  # clean stop on SIGTERM


def test_sigkill_at_random_moments_loses_nothing_and_counts_nothing_twice(stack: Stack) -> None:
    """Three SIGKILLs at seeded random moments while events flow, a restart after each.
    Kafka commits are rare here, so every restart resumes from the Redis offsets."""
    rng = random.Random(20240611)
    r = redis_sync.Redis.from_url(stack.redis.url)
    pool = make_events(seed=2, entities=40, per_entity=400, base=time.time() - 12 * 3600)
    env = {"RIVULET_COMMIT_INTERVAL_S": 60, "RIVULET_BATCH_SIZE": 50, **FAST}
    proc = stack.spawn("services.features", **env)
    feeder = BackgroundFeed(stack, pool)
    feeder.start()
    for _ in range(3):
        done = sum(applied(r).values())
        wait_for(lambda: sum(applied(r).values()) > done, timeout=30, what="progress before a kill")
        time.sleep(rng.uniform(0.0, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert feeder.is_alive(), "the stream ended before the kill"
        proc = stack.spawn("services.features", **env)
    time.sleep(0.5)
    events = feeder.finish()

    wait_for(lambda: all_applied(r, feeder.end), timeout=60, what="everything applied after the last restart")
    assert proc.poll() is None
    assert_store_matches_batch_engine(r, events)
    logs = stack.logs()
    assert "resumes at" in logs  # the restarts resumed from Redis, not from the (absent) commits
    assert "were never applied" not in logs


def test_commit_ahead_of_redis_loses_nothing(stack: Stack) -> None:
    """The weak spot of acking in faust: a commit beyond what Redis applied (a batch acked but
    never written, e.g. a shutdown that timed out while Redis was down). The restart must
    resume from Redis' offsets, not from the commit."""
    r = redis_sync.Redis.from_url(stack.redis.url)
    first = make_events(seed=4, entities=20, per_entity=20, base=time.time() - 6 * 3600)
    second = make_events(seed=5, entities=20, per_entity=20, base=max(e["event_time"] for e in first))
    proc = stack.spawn("services.features", **FAST)
    last = produce(stack, first)
    wait_for(lambda: all_applied(r, last), timeout=45, what="first half applied")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    end = produce(stack, second)
    asyncio.run(_commit(stack.broker.url, {p: o + 1 for p, o in end.items()}))  # "acked", never applied
    assert not all_applied(r, end)
    stack.spawn("services.features", **FAST)
    wait_for(lambda: all_applied(r, end), timeout=45, what="second half applied after restart")
    assert_store_matches_batch_engine(r, first + second)


class _FaustNamedAssignor(RoundRobinPartitionAssignor):
    name = "faust"  # Tansu keeps the group's protocol; as its only member we assign ourselves


async def _commit(bootstrap: str, positions: dict[int, int]) -> None:
    """Commit the features group's offsets as a faust worker would have. Joins the group
    (Tansu refuses commits from outside it) once the stopped worker's session has expired."""
    tps = {TopicPartition("events.valid", p): o for p, o in positions.items()}
    deadline = time.monotonic() + 20
    while True:
        consumer = AIOKafkaConsumer("events.valid", bootstrap_servers=bootstrap, group_id=GROUP,
                                    enable_auto_commit=False, session_timeout_ms=4000,
                                    partition_assignment_strategy=(_FaustNamedAssignor,))
        try:
            await consumer.start()
            while not set(tps) <= consumer.assignment():
                await consumer.getmany(timeout_ms=200, max_records=1)
            await consumer.commit(tps)
            for tp, offset in tps.items():
                assert await consumer.committed(tp) == offset
            return
        except InconsistentGroupProtocolError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(1)
        finally:
            await consumer.stop()
