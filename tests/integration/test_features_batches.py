"""The features service's batch path through faust (real process, broker, Redis).

The service replaces faust's per-message drain loop with whole-fetch batches and acks
their offsets to faust in bulk (services.features.consumer). What that must keep:

* faust still commits: once everything is applied to Redis, the group's Kafka commit
  reaches the end of every partition (the bulk acks feed faust's commit handler), even
  with batches split at a small ``batch_size``;
* the result is exact with those small split batches.
"""

from __future__ import annotations

import asyncio
import time

import redis as redis_sync
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.helpers import Stack, wait_for
from tests.integration.test_features import (
    FAST,
    GROUP,
    all_applied,
    assert_store_matches_batch_engine,
    make_events,
    produce,
)


async def _committed(bootstrap: str, partitions: list[int]) -> dict[int, int | None]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=GROUP, enable_auto_commit=False)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition("events.valid", p)) for p in partitions}
    finally:
        await consumer.stop()


def test_bulk_acks_are_committed_and_small_split_batches_stay_exact(stack: Stack) -> None:
    r = redis_sync.Redis.from_url(stack.redis.url)
    events = make_events(seed=7, entities=30, per_entity=30, base=time.time() - 3 * 3600)
    last = produce(stack, events)  # produced before the start: the first fetches are large
    stack.spawn("services.features", RIVULET_BATCH_SIZE=7, RIVULET_BATCH_MAX_EVENTS=37, RIVULET_COMMIT_INTERVAL_S=0.5, **FAST)
    wait_for(lambda: all_applied(r, last), timeout=45, what="all offsets applied")
    assert_store_matches_batch_engine(r, events)

    def committed_to_end() -> bool:
        done = asyncio.run(_committed(stack.broker.url, sorted(last)))
        return all(done[p] == o + 1 for p, o in last.items())

    wait_for(committed_to_end, timeout=20, interval=0.5, what="faust committed every applied offset")
