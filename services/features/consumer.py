"""The features service's faust consumer: batches straight from the fetch, resume from Redis.

Why hook faust here: faust delivers one message at a time (Conductor -> channel queue ->
Stream -> Event, a task per message, one ack per message); that machinery cost more CPU
than computing the features, and feeding a batch applier through it made batches tiny
(a few events each, every one paying a Redis round trip). This consumer keeps everything
else of faust (the worker, the consumer group and its rebalances, the consumer thread, the
periodic commits of acked offsets) and replaces only the drain loop: each fetched record
map goes to the :class:`~services.features.applier.Applier` as one batch (split at
``batch_size`` entities), and its offsets are acked in bulk once Redis holds them.

Exactly-once effect: Redis' applied offsets are the truth. Every seek faust makes (after
each assignment) goes to Redis' applied offset + 1; the Kafka commit only follows.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, cast

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types.tuples import ack_lock
from redis.asyncio import Redis

from services.features.applier import Applier
from services.features.handlers import RawRecord, chunks, resume_positions
from services.features.settings import FeaturesSettings
from services.features.store import applied_offsets
from shared.topics import EVENTS_VALID

log = logging.getLogger("services.features")


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust hard-codes fetch_max_wait_ms=1500; a broker that holds an empty fetch that long
    (Tansu does, even when data arrives) would add up to 1.5 s to the event-to-feature time."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        settings: FeaturesSettings = self.app.rivulet_settings  # type: ignore[attr-defined]
        consumer._fetch_max_wait_ms = settings.fetch_max_wait_ms  # read by start() (aiokafka 0.14)
        return consumer


class BatchConsumer(faust_aiokafka.Consumer):
    """faust's aiokafka consumer, draining whole fetches into the applier."""

    _applier: Applier | None = None

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    @property
    def settings(self) -> FeaturesSettings:
        return cast(FeaturesSettings, self.app.rivulet_settings)  # type: ignore[attr-defined]

    async def applier(self) -> Applier:
        """Created on first use and kept across rebalances (the fetcher restarts, not this)."""
        if self._applier is None:
            self._applier = Applier(self.settings)
            await self._applier.start()
            gc.freeze()  # the worker is up: its objects need no more collecting (see shared.runtime.tune_gc)
        return self._applier

    async def on_stop(self) -> None:
        await super().on_stop()
        if self._applier is not None:
            await self._applier.stop()

    async def seek_to_committed(self) -> Mapping[TP, int]:
        """Seek every assigned partition to Redis' applied offset + 1 (see module doc)."""
        committed = dict(await super().seek_to_committed())
        if self._applier is not None:
            await self._applier.forget()  # in-flight batch done, windows of revoked partitions dropped
        redis = Redis.from_url(self.settings.redis_url, socket_timeout=5)
        try:
            applied = await applied_offsets(redis, self.settings.use_case, self.settings.group_id)
        finally:
            await redis.aclose()
        ours = {tp.partition: off for tp, off in committed.items() if tp.topic == EVENTS_VALID.name}
        log.info("assigned %s partitions %s", EVENTS_VALID.name, ",".join(map(str, sorted(ours))) or "-")
        for partition, position in resume_positions(ours, applied).items():
            tp = next(t for t in committed if t.topic == EVENTS_VALID.name and t.partition == partition)
            if committed[tp] != position:
                log.info("partition %d resumes at %d (Redis applied), not %s (committed)",
                         partition, position, committed[tp])
                await self._seek(tp, position)
                committed[tp] = position
        return committed

    async def _drain_messages(self, fetcher: Any) -> None:
        """faust's drain loop, a batch at a time: fetch, apply to Redis, ack, repeat; the
        next fetch is awaited while a batch is applied (it was ~a tenth of the loop's time)."""
        applier = await self.applier()
        consumer_stopped, fetcher_stopped = self._stopped.is_set, fetcher._stopped.is_set
        upcoming: asyncio.Future[tuple[int, list[RawRecord]]] | None = None
        try:
            while not (consumer_stopped() or fetcher_stopped()):
                generation, batch = await (upcoming or self._fetch_ahead())
                upcoming = None

                async def done(chunk: Sequence[RawRecord], generation: int = generation) -> bool:
                    if self._moved(generation):
                        return False  # a rebalance: the rest is re-read from Redis' offsets
                    await self._ack(chunk)
                    return True

                if batch and not self._moved(generation):
                    upcoming = self._fetch_ahead()
                    settings = self.settings
                    await applier.apply_chunks(
                        list(chunks(batch, settings.batch_max_events, settings.batch_size)), done)
        except self.consumer_stopped_errors:
            if not self.transport.app.should_stop:
                raise
            log.info("broker stopped the consumer; shutting down")
        finally:
            if upcoming is not None:
                upcoming.cancel()

    def _fetch_ahead(self) -> asyncio.Future[tuple[int, list[RawRecord]]]:
        """The next batch with the group generation it was fetched in (a batch of an older
        one is dropped: faust's seek after the rebalance re-reads it from Redis' offsets)."""
        async def fetch() -> tuple[int, list[RawRecord]]:
            generation = self.app.consumer_generation_id
            return generation, await self._next_batch()
        return asyncio.ensure_future(fetch())

    def _moved(self, generation: int) -> bool:
        return not self.flow_active or self.app.consumer_generation_id != generation

    async def _next_batch(self) -> list[RawRecord]:
        """The next fetch as RawRecords; empty if the flow stopped or the group moved on
        meanwhile (then faust's seek puts every partition back at Redis' offsets)."""
        generation = self.app.consumer_generation_id
        records, active = await self._wait_next_records(1.0)
        if not records or self.should_stop:
            return []
        if not self.flow_active or self.app.consumer_generation_id != generation:
            await self.perform_seek()
            return []
        return [
            RawRecord(r.partition, r.offset, r.value, r.key, r.topic)
            for tp, recs in records.items()
            if active is None or tp in active or tp in self._buffered_partitions
            for r in recs
        ]

    async def _ack(self, batch: Sequence[RawRecord]) -> None:
        """faust's per-message ack bookkeeping, in bulk: its commit handler then commits.
        Also marks the partitions as processing, as streams do per event: faust's livelock
        detector reads that time to tell a stuck partition from a working one."""
        inbound, now = self.app.monitor.stream_inbound_time, time.monotonic()
        by_tp: dict[TP, list[int]] = {}
        for rec in batch:
            by_tp.setdefault(self._new_topicpartition(rec.topic, rec.partition), []).append(rec.offset)
        for tp, offsets in by_tp.items():
            previous = self._read_offset[tp]
            if previous and offsets[0] - previous > 1:
                await self._add_gap(tp, previous + 1, offsets[0])
            self._read_offset[tp] = offsets[-1]
            inbound[tp] = now
            with ack_lock:
                committed = self._committed_offset[tp]
                fresh = [o for o in offsets if committed is None or o >= committed]
                fresh = [o for o in fresh if o not in self._acked_index[tp]]
                self._acked[tp].extend(fresh)
                self._acked_index[tp].update(fresh)
                self._n_acked += len(fresh)
        if self._commit_every is not None and self._n_acked >= self._commit_every:
            self._n_acked = 0
            await self.commit()


class Transport(faust_aiokafka.Transport):
    Consumer = BatchConsumer
