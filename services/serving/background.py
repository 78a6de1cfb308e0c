"""Serving's background work: the prediction log (-> ``predictions``) and the model watcher
(``models`` -> :class:`ModelRegistry`). Both run as tasks beside the HTTP server.

Why a queue for the log: /predict must never wait on Kafka. Records go on a bounded queue; a
task sends them in batches. When the queue is full the record is dropped and counted, which
is the documented trade-off (the answer matters more than its log line).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable

from aiokafka import AIOKafkaProducer, TopicPartition
from pydantic import ValidationError

from shared import codec
from shared.config import RivuletSettings
from shared.contracts import ModelEvent
from shared.kafka import make_consumer
from shared.topics import MODELS, PREDICTIONS

from services.serving.registry import ModelRegistry

log = logging.getLogger(__name__)
SEND_ATTEMPTS = 3


class PredictionLog:
    def __init__(self, size: int, batch: int, on_drop: Callable[[str, int], None] | None = None) -> None:
        self.queue: asyncio.Queue[tuple[bytes, bytes]] = asyncio.Queue(maxsize=size)
        self.batch = batch
        self.dropped: Counter[str] = Counter()
        self.sent = 0
        self._on_drop = on_drop

    def offer(self, key: bytes, value: bytes) -> bool:
        """Enqueue without ever blocking; False (and counted) when the queue is full."""
        try:
            self.queue.put_nowait((key, value))
            return True
        except asyncio.QueueFull:
            self._drop("queue_full", 1)
            return False

    def _drop(self, reason: str, count: int) -> None:
        self.dropped[reason] += count
        if self._on_drop:
            self._on_drop(reason, count)

    async def run(self, producer: AIOKafkaProducer, stop: asyncio.Event) -> None:
        """Send batches until ``stop`` is set AND the queue is empty (drains on shutdown)."""
        while not (stop.is_set() and self.queue.empty()):
            try:
                first = await asyncio.wait_for(self.queue.get(), timeout=0.2)
            except TimeoutError:
                continue
            items = [first]
            while len(items) < self.batch and not self.queue.empty():
                items.append(self.queue.get_nowait())
            await self._send(producer, items)

    async def _send(self, producer: AIOKafkaProducer, items: list[tuple[bytes, bytes]]) -> None:
        for attempt in range(1, SEND_ATTEMPTS + 1):
            try:
                futures = [await producer.send(PREDICTIONS.name, value, key=key) for key, value in items]
                await asyncio.gather(*futures)
                self.sent += len(items)
                return
            except Exception as exc:  # noqa: BLE001 - any send failure: retry, then drop
                log.warning("prediction log: send of %d failed (attempt %d): %s", len(items), attempt, exc)
                await asyncio.sleep(0.5 * attempt)
        self._drop("send_failed", len(items))


class ModelWatcher:
    """Reads ``models`` from the beginning with no consumer group: every replica sees every
    event and rebuilds the same champion. ``registry.caught_up`` turns true at the end of the
    initial replay (readiness waits for it, so a restarted replica never serves a stale model).
    """

    def __init__(self, settings: RivuletSettings, registry: ModelRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self._next: dict[TopicPartition, int] = {}  # resume point after a reconnect

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._consume(stop)
            except Exception:  # noqa: BLE001 - reconnect and resume where we were
                log.exception("model watcher failed; reconnecting")
                try:
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
                except TimeoutError:
                    pass

    async def _consume(self, stop: asyncio.Event) -> None:
        consumer = make_consumer(self.settings, group_id=None)
        await consumer.start()
        try:
            await consumer.topics()  # refresh metadata so the partitions are known
            tps = [TopicPartition(MODELS.name, p) for p in sorted(consumer.partitions_for_topic(MODELS.name) or [])]
            if not tps:
                raise RuntimeError(f"topic {MODELS.name!r} has no partitions yet")
            consumer.assign(tps)
            for tp in tps:
                if tp in self._next:
                    consumer.seek(tp, self._next[tp])
                else:
                    await consumer.seek_to_beginning(tp)
            end = await consumer.end_offsets(tps)
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=200)
                for tp, records in batches.items():
                    for record in records:
                        self._apply(record.value or b"", record.offset)
                        self._next[tp] = record.offset + 1
                if not self.registry.caught_up:
                    positions = [await consumer.position(tp) for tp in tps]
                    self.registry.caught_up = all(pos >= end[tp] for pos, tp in zip(positions, tps))
        finally:
            await consumer.stop()

    def _apply(self, value: bytes, offset: int) -> None:
        try:
            event = ModelEvent.model_validate(codec.loads(value))
        except (codec.JSONDecodeError, ValidationError) as exc:
            log.warning("models offset %d: not a ModelEvent, skipped: %s", offset, str(exc)[:300])
            return
        self.registry.apply(event)
