"""The broker's own latency floor for the freshness phase: no Rivulet code at all.

A raw aiokafka relay process (``relay.in`` -> ``relay.out``, fetch_max_wait_ms 5 and linger 2 ms
like the services) and a raw sink consumer in the bench process make the same two broker hops as
``events.raw`` -> ingestion -> ``events.valid`` -> features, at the same paced rate, on the same
broker, in the same run. Its latency (send -> sink receive) is what any two-hop Kafka pipeline
can do here; Rivulet's freshness adds validation, aggregation and the Redis write on top.

Why it is measured: the embedded broker (Tansu 0.6, ``memory://``) stores each produced batch as
an object and a fetch lists the partition's objects, so its CPU per fetch grows with the batches
stored (seen: one producer + one consumer at 1,000 events/s took the broker from 0.3 to 1.0 core
in 30 s). Apache Kafka looks offsets up in an index; this floor says how much of a freshness
number is the broker's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from shared.topics import Topic

RELAY_IN, RELAY_OUT = Topic("relay.in", None, "entity_id", 4), Topic("relay.out", None, "entity_id", 4)
FETCH_MAX_WAIT_MS = 5  # the services' setting (ingestion_fetch_max_wait_ms, features fetch_max_wait_ms)
# The paced "user" producer's linger: Kafka's default linger.ms since 4.0 (KIP-1030). With 0,
# every record is its own batch, and Tansu (in memory) slows down as batches accumulate.
USER_LINGER_MS = 5
SLOT_S = 5.0  # latency percentiles per slot of this many seconds of send time


async def relay_worker(bootstrap: str) -> None:
    """consume -> produce -> await acks -> commit, nothing else (no parsing, no state)."""
    await relay(bootstrap, RELAY_IN.name, RELAY_OUT.name, "bench-relay", fetch_max_wait_ms=FETCH_MAX_WAIT_MS)


async def relay(bootstrap: str, source: str, sink: str, group: str,
                transform: Callable[[bytes], bytes] | None = None, **consumer_options: Any) -> None:
    """The simplest at-least-once loop: getmany -> transform -> send -> await acks -> commit."""
    consumer = AIOKafkaConsumer(source, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                                auto_offset_reset="earliest", **consumer_options)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)
    await consumer.start()
    await producer.start()
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=100, max_records=2000)
            futures = [await producer.send(sink, transform(r.value) if transform else r.value, key=r.key)
                       for recs in batches.values() for r in recs]
            if futures:
                await asyncio.gather(*futures)
                await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()


async def paced(bootstrap: str, topic: str, rate: float, duration: float,
                record: Callable[[int], tuple[bytes, bytes, bool]],
                linger_ms: int = USER_LINGER_MS) -> tuple[dict[bytes, float], int]:
    """Produce ``record(i)`` -> (key, value, sampled) at ``rate`` for ``duration`` s.
    Returns the send time of each sampled key and the number of records sent."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=linger_ms)
    await producer.start()
    sent: dict[bytes, float] = {}
    try:
        start, i, futures = time.time(), 0, []
        while time.time() - start < duration:
            due = start + i / rate
            if due > time.time():
                await asyncio.sleep(due - time.time())
            key, value, sampled = record(i)
            if sampled:
                sent[key] = time.time()
            futures.append(await producer.send(topic, value, key=key))
            i += 1
            if len(futures) >= 5000:
                await asyncio.gather(*futures)
                futures = []
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return sent, i


async def floor_latency(bootstrap: str, rate: float, duration: float,
                        record: Callable[[int], tuple[bytes, bytes, bool]]) -> dict[str, Any]:
    """Paced records through the relay; latency = sink receive - send, for the sampled keys."""
    sink = AIOKafkaConsumer(RELAY_OUT.name, bootstrap_servers=bootstrap, auto_offset_reset="latest",
                            fetch_max_wait_ms=FETCH_MAX_WAIT_MS)
    await sink.start()
    await sink.getmany(timeout_ms=500)  # position at the end before the first record
    received: dict[bytes, float] = {}
    done = asyncio.Event()

    async def consume() -> None:
        while not done.is_set():
            batches = await sink.getmany(timeout_ms=100)
            now = time.time()
            for recs in batches.values():
                for r in recs:
                    received.setdefault(r.key, now)

    task = asyncio.create_task(consume())
    try:
        sent, n = await paced(bootstrap, RELAY_IN.name, rate, duration, record)
        deadline = time.time() + 120
        while not all(k in received for k in sent) and time.time() < deadline:
            await asyncio.sleep(0.05)
    finally:
        done.set()
        await task
        await sink.stop()
    pairs = [(t, (received[k] - t) * 1000) for k, t in sent.items() if k in received]
    return {"rate_events_per_s": rate, "events": n, "missing": len(sent) - len(pairs), **latency_summary(pairs)}


def latency_summary(pairs: list[tuple[float, float]]) -> dict[str, Any]:
    """(send time, latency ms) -> samples, p50/p99/max, and p50/p99 per ``SLOT_S`` of the run
    (``slots``: [start s, p50, p99]; Tansu's latency grows as a run stores more batches)."""
    def pick(values: list[float], q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")

    lat = sorted(x for _, x in pairs)
    start = min((t for t, _ in pairs), default=0.0)
    by_slot: dict[int, list[float]] = {}
    for t, x in pairs:
        by_slot.setdefault(int((t - start) // SLOT_S), []).append(x)
    slots = [[k * SLOT_S, round(pick(v, 0.5), 1), round(pick(v, 0.99), 1)]
             for k, v in sorted((k, sorted(v)) for k, v in by_slot.items())]
    return {"samples": len(lat), "p50_ms": pick(lat, 0.5), "p99_ms": pick(lat, 0.99),
            "max_ms": lat[-1] if lat else float("nan"), "slots": slots}
