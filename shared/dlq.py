"""Reading dead letters back (for `rivulet dlq` and replay tools)."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.contracts import DeadLetter


async def read_dead_letters(bootstrap: str, topic: str, limit: int) -> list[tuple[DeadLetter, bytes]]:
    """The last ``limit`` records of a DLQ topic, with their parsed headers and original bytes."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()  # fetch metadata: an unsubscribed consumer knows no partitions yet
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        if not partitions:
            return []
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        for tp in partitions:
            consumer.seek(tp, max(0, ends[tp] - limit))
        out: list[tuple[DeadLetter, bytes]] = []
        while await _behind(consumer, ends):
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                out.extend((DeadLetter.from_headers(r.headers), r.value or b"") for r in records)
            if not batch:
                break
        return out[-limit:]
    finally:
        await consumer.stop()


async def _behind(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return True
    return False
