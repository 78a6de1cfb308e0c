"""shared.kafka.publish against the real broker: one batch per partition, yet every record
lands, in order, with its headers, in the partition aiokafka's send() picks for its key; a
publish larger than the producer's max batch size is split into several batches, not dropped."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer

from shared.kafka import Out, ensure_topics, publish
from shared.topics import Topic
from tests.helpers import Stack, read_topic

TOPIC = Topic("publish.test", None, "k", 4)


async def _send_then_publish(bootstrap: str, outs: list[Out]) -> dict[bytes, int]:
    """Where send() puts each key (one b"ref" record per key), then publish ``outs``."""
    await ensure_topics(bootstrap, (TOPIC,))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_batch_size=16 * 1024)
    await producer.start()
    try:
        where = {}
        for key in sorted({o.key for o in outs if o.key is not None}):
            where[key] = (await (await producer.send(TOPIC.name, b"ref", key=key))).partition
        await publish(producer, outs)
        return where
    finally:
        await producer.stop()


def test_publish_batches_land_in_order_with_headers(stack: Stack) -> None:
    outs = [Out(TOPIC.name, f'{{"i": {i}, "pad": "{"x" * 200}"}}'.encode(), f"card-{i % 13}".encode(),
                [("n", str(i).encode())]) for i in range(600)]  # ~130 KB: several 16 KB batches
    where = asyncio.run(_send_then_publish(stack.broker.url, outs))
    got = [r for r in read_topic(stack.broker.url, TOPIC.name, count=613, timeout=30) if r.value != b"ref"]
    assert len(got) == 600
    assert len(set(where.values())) > 1  # the keys spread over several partitions
    for partition in range(TOPIC.partitions):
        seq = [int(dict(r.headers)["n"]) for r in got if r.partition == partition]
        assert seq == sorted(seq)  # order kept within a partition
    for r in got:
        i = int(dict(r.headers)["n"])
        assert r.key == outs[i].key and r.value == outs[i].value
        assert r.partition == where[r.key]
