"""Kafka plumbing shared by every service: client factories, topic creation, the
at-least-once batch loop, and dead-lettering.

Delivery model: consume a batch, compute outputs, publish them, wait for every ack,
then commit. A crash anywhere before the commit redelivers the batch, so every sink
and consumer downstream is idempotent (dedupe by id or by applied offset).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.partitioner import murmur2

from shared.config import RivuletSettings
from shared.contracts import DeadLetter
from shared.errors import RejectedRecord
from shared.topics import CATALOG, Topic

log = logging.getLogger(__name__)
MAX_MESSAGE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Out:
    """One record to publish."""

    topic: str
    value: bytes
    key: bytes | None = None
    headers: list[tuple[str, bytes]] | None = None


def make_producer(settings: RivuletSettings, **overrides: Any) -> AIOKafkaProducer:
    """acks=all; idempotence only where the broker supports it (not Tansu)."""
    config: dict[str, Any] = dict(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        linger_ms=2,
        max_request_size=MAX_MESSAGE_BYTES,
        # One batch per partition per publish (see publish): fewer, larger batches are
        # fewer requests, and fewer objects in Tansu, whose fetch cost grows with them.
        max_batch_size=1024 * 1024,
        enable_idempotence=settings.kafka_idempotence,
        request_timeout_ms=15000,
    )
    config.update(overrides)
    return AIOKafkaProducer(**config)


def make_consumer(
    settings: RivuletSettings, *topics: str, group_id: str | None, **overrides: Any
) -> AIOKafkaConsumer:
    """Manual commits, start from the earliest offset when the group has none."""
    config: dict[str, Any] = dict(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
        fetch_max_bytes=4 * MAX_MESSAGE_BYTES,
    )
    config.update(overrides)
    return AIOKafkaConsumer(*topics, **config)


async def ensure_topics(bootstrap: str, topics: Iterable[Topic] = CATALOG, timeout: float = 30) -> None:
    """Create the catalog's topics (idempotent); waits for the broker to answer."""
    deadline = time.monotonic() + timeout
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [NewTopic(t.name, t.partitions, 1) for t in topics if t.name not in existing]
            if missing:
                try:
                    await admin.create_topics(missing)
                except TopicAlreadyExistsError:
                    pass
            return
        except KafkaError as exc:
            if time.monotonic() > deadline:
                raise
            log.info("broker not ready yet (%s); retrying", exc)
            await asyncio.sleep(0.5)
        finally:
            await admin.close()


def dead_letter(record: ConsumerRecord, dlq_topic: str, error: RejectedRecord) -> Out:
    """The original key and bytes, verbatim, with the reason and source in headers."""
    meta = DeadLetter(
        reason=error.reason.value,
        field=error.field,
        message=error.message[:1000],
        source_topic=record.topic,
        source_partition=record.partition,
        source_offset=record.offset,
        failed_at=time.time(),
    )
    return Out(dlq_topic, record.value or b"", record.key, meta.to_headers())


async def publish(producer: AIOKafkaProducer, outs: Sequence[Out]) -> None:
    """Send all, then wait for every ack (raises if any send failed).

    Why not ``send()`` per record: its per-record futures and partitioner were ~a fifth of
    ingestion's CPU. Records go out as one batch per topic partition (``send_batch``), in
    order, partitioned as aiokafka's default partitioner does (murmur2 of the key, so any
    other producer of the topic agrees; no key: a random partition).
    """
    groups: dict[tuple[str, int], list[Out]] = {}
    counts: dict[str, int] = {}
    for o in outs:
        n = counts.get(o.topic)
        if n is None:
            n = counts[o.topic] = len(await producer.partitions_for(o.topic))
        partition = random.randrange(n) if o.key is None else _partition(o.key, n)
        groups.setdefault((o.topic, partition), []).append(o)
    futures = []
    for (topic, partition), group in groups.items():
        batch = producer.create_batch()
        for o in group:
            if batch.append(timestamp=None, key=o.key, value=o.value, headers=o.headers or []) is None:
                futures.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()  # full: the record goes first in a new one
                batch.append(timestamp=None, key=o.key, value=o.value, headers=o.headers or [])
        futures.append(await producer.send_batch(batch, topic, partition=partition))
    if futures:
        await asyncio.gather(*futures)


@functools.lru_cache(maxsize=1 << 16)
def _partition(key: bytes, partitions: int) -> int:
    """aiokafka's (and the Java client's) default: murmur2(key) mod partitions (cached:
    murmur2 is pure Python, and keys repeat)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


Handler = Callable[[list[ConsumerRecord]], Awaitable[list[Out]]]


@dataclass
class BatchLoop:
    """consume -> handle -> publish + await acks -> commit, forever, until ``stop`` is set.

    If the handler or a publish fails, nothing is committed: the loop seeks back to the
    batch start and retries after a back-off, so no record is lost (at-least-once).
    """

    consumer: AIOKafkaConsumer
    producer: AIOKafkaProducer | None
    handle: Handler
    name: str = "loop"
    max_records: int = 1000
    timeout_ms: int = 100
    retry_backoff_s: float = 1.0
    # 0: commit after every batch. > 0: commit the acked batches' offsets at most this often
    # (and when idle or stopping): fewer broker round trips in the loop, at the price of
    # more redelivery after a crash (still at-least-once: only acked batches are committed).
    commit_interval_s: float = 0.0
    processed: int = field(default=0, init=False)
    _pending: dict[TopicPartition, int] = field(default_factory=dict, init=False)
    _committed_at: float = field(default=0.0, init=False)

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                batches = await self.consumer.getmany(timeout_ms=self.timeout_ms, max_records=self.max_records)
                records = [r for recs in batches.values() for r in recs]
                if not records:
                    await self._commit_idle()
                    continue
                try:
                    outs = await self.handle(records)
                    if outs and self.producer is not None:
                        await publish(self.producer, outs)
                    self._pending.update(_next_offsets(records))
                    await self._commit(force=False)
                    self.processed += len(records)
                except Exception:  # noqa: BLE001 - any failure means "retry the batch"
                    log.exception("%s: batch of %d failed; will retry", self.name, len(records))
                    _seek_back(self.consumer, records)
                    await _sleep_or_stop(stop, self.retry_backoff_s)
        finally:
            await self._commit_idle()

    async def _commit_idle(self) -> None:
        """Commit what is pending when idle or stopping; a failure is retried later."""
        try:
            await self._commit(force=True)
        except KafkaError as exc:
            log.warning("%s: commit failed (%s); will retry", self.name, exc)

    async def _commit(self, force: bool) -> None:
        """Commit the acked batches' offsets (every batch, or per ``commit_interval_s``).
        Partitions revoked meanwhile are dropped: their new owner redelivers (at-least-once)."""
        now = time.monotonic()
        if not self._pending or (not force and now - self._committed_at < self.commit_interval_s):
            return
        assigned = self.consumer.assignment()
        offsets = {tp: o for tp, o in self._pending.items() if tp in assigned}
        self._pending = {}
        try:
            if offsets:
                await self.consumer.commit(offsets)
        except Exception:
            self._pending = {**offsets, **self._pending}  # retried with the next commit
            raise
        self._committed_at = now


def _next_offsets(records: Sequence[ConsumerRecord]) -> dict[TopicPartition, int]:
    offsets: dict[TopicPartition, int] = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        offsets[tp] = max(offsets.get(tp, 0), r.offset + 1)
    return offsets


def _seek_back(consumer: AIOKafkaConsumer, records: Sequence[ConsumerRecord]) -> None:
    first: dict[TopicPartition, int] = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        first[tp] = min(first.get(tp, r.offset), r.offset)
    assigned = consumer.assignment()
    for tp, offset in first.items():
        if tp in assigned:
            consumer.seek(tp, offset)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except asyncio.TimeoutError:
        pass
