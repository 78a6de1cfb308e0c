"""Closing the re-emit gap: pending outputs and their reconciliation after a crash.

Without transactions, "publish" and "remember that we published" cannot be one step.
So the order is: write the done markers AND the planned outputs (``pending``) to Redis in
one MULTI, publish, await the acks, delete the pending entries, commit the input offsets.

* crash before the MULTI: nothing is marked; the redelivered inputs plan the same outputs.
* crash after it: the redelivered inputs see the done markers and plan nothing; instead,
  before that input partition is consumed again, every pending output is looked up in
  ``predictions.labeled`` (from the offset the topic had reached before it was published,
  to the end) and only the ones not found are published. Nothing is lost, nothing twice.

Each output goes to an explicit partition (the default partitioner's choice for its key),
so where to look for it is known before it is sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import murmur2

from shared import codec
from shared.contracts import LabeledPrediction
from shared.topics import PREDICTIONS_LABELED

log = logging.getLogger(__name__)
TOPIC = PREDICTIONS_LABELED.name


def output_partition(key: bytes, partitions: int = PREDICTIONS_LABELED.partitions) -> int:
    """Same choice as the Java / aiokafka default partitioner for a non-null key."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def entry_field(lp: LabeledPrediction) -> str:
    return f"{lp.prediction_id}#{lp.revision}"


def encode_entry(lp: LabeledPrediction, partition: int, low: int) -> bytes:
    """A planned output: the record, its partition, and an offset it cannot land below."""
    return codec.dumps({"partition": partition, "low": low, "record": lp.model_dump(mode="json")})


def decode_entry(raw: bytes) -> tuple[LabeledPrediction, int, int]:
    data = codec.loads(raw)
    return LabeledPrediction.model_validate(data["record"]), int(data["partition"]), int(data["low"])


async def end_offsets(reader: AIOKafkaConsumer, partitions: set[int]) -> dict[int, int]:
    tps = [TopicPartition(TOPIC, p) for p in sorted(partitions)]
    ends = await reader.end_offsets(tps)
    return {tp.partition: off for tp, off in ends.items()}


async def published(reader: AIOKafkaConsumer, lows: Mapping[int, int], timeout_s: float = 30.0) -> set[str]:
    """``prediction_id#revision`` of every record in ``predictions.labeled`` from ``lows``
    (partition -> offset) to the current end. Reads with a group-less consumer."""
    ends = await end_offsets(reader, set(lows))
    todo = {TopicPartition(TOPIC, p): end for p, end in ends.items() if end > lows[p]}
    found: set[str] = set()
    if not todo:
        return found
    reader.assign(list(todo))
    for tp in todo:
        reader.seek(tp, lows[tp.partition])
    deadline = asyncio.get_running_loop().time() + timeout_s
    try:
        while todo:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"reading {TOPIC} for reconciliation took more than {timeout_s}s")
            for tp, records in (await reader.getmany(*todo, timeout_ms=200)).items():
                for r in records:
                    if r.offset < todo.get(tp, 0):
                        data = codec.loads(r.value or b"{}")
                        found.add(f"{data.get('prediction_id')}#{data.get('revision', 1)}")
            for tp in list(todo):
                if await reader.position(tp) >= todo[tp]:
                    del todo[tp]
    finally:
        reader.assign([])
    return found


def to_publish(entries: Mapping[str, bytes], found: set[str]) -> list[tuple[LabeledPrediction, int]]:
    """The pending outputs that never reached the topic, with their partitions."""
    out = []
    for field_name, raw in sorted(entries.items()):
        if field_name not in found:
            lp, partition, _ = decode_entry(raw)
            out.append((lp, partition))
    return out
