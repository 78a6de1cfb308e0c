"""Applies batches of ``events.valid`` records to Redis, in order, never giving up.

Owns the Redis client, the late-events producer, the :class:`FeatureStore` (with its
window cache) and the :class:`ScriptPipe` its pipelined writes are queued on. A batch
runs as its own task, shielded from the caller: a rebalance or a shutdown that cancels the
drain loop lets the in-flight write finish (bounded by ``shutdown_grace_s``) instead of
tearing the Redis connection mid-script; either way Redis stays exact, since the write is
one compare-and-set script and redelivery is skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, KeysView, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.features.handlers import (
    BatchPlan,
    LateRecord,
    RawRecord,
    late_dead_letter,
)
from services.features.settings import FeaturesSettings
from services.features.state import Cache
from services.features.pipe import ScriptPipe
from services.features.store import Conflict, FeatureStore, check_reply
from shared.kafka import Out, make_producer, publish
from shared.topics import EVENTS_LATE

log = logging.getLogger("services.features")
# Called once a chunk is in Redis (acks it); False: stop before writing the next one.
Done = Callable[[Sequence[RawRecord]], Awaitable[bool]]


@dataclass
class _Write:
    """A planned chunk in the pipeline: its script sent (unless nothing was new), its reply read."""

    chunk: Sequence[RawRecord]
    plan: BatchPlan
    landed: bool = False

    @property
    def sent(self) -> bool:
        """A chunk of redelivered records only has no script."""
        return bool(self.plan.offsets)

    @property
    def entities(self) -> KeysView[str]:
        """The entities the script writes."""
        return self.plan.features.keys()


class _Writes:
    """One batch's chunks whose scripts were sent on the pipe, oldest first: their replies
    are read in order (``land``), then the chunks acked in order (``finish_until``)."""

    def __init__(self, pipe: ScriptPipe, done: Done, finished: list[Sequence[RawRecord]]) -> None:
        self.pipe, self.done, self.finished = pipe, done, finished
        self.queue: deque[_Write] = deque()

    async def land(self, write: _Write) -> None:
        """Read ``write``'s reply (every earlier one was read): Conflict if refused."""
        if write.sent and not write.landed:
            write.landed = True
            check_reply(await self.pipe.receive())

    async def settle(self, entities: Collection[str] | None) -> None:
        """Before a read of Redis: the sent scripts that write any of ``entities`` (None: any
        script) have run, and those before them (a failed one raises). Why not all: an entity
        seen for the first time (a cache miss) is in no write, so its read need not wait for
        Redis to run the queue (it did for every chunk with a new entity)."""
        last = -1
        for i, write in enumerate(self.queue):
            if entities is None or not write.entities.isdisjoint(entities):
                last = i
        for write in list(self.queue)[:last + 1]:
            await self.land(write)

    async def finish_until(self, in_flight: int) -> bool:
        """Ack the oldest chunks once written until at most ``in_flight`` remain; False:
        stopped (those in flight land unacked: redelivered later, skipped)."""
        while len(self.queue) > in_flight:
            await self.land(self.queue[0])
            write = self.queue.popleft()
            self.finished.append(write.chunk)
            _log_plan(write.plan, len(write.chunk))
            if not await self.done(write.chunk):
                await self.pipe.drain()
                return False
        return True


class Applier:
    """One batch at a time into Redis; ``forget`` drops the window cache between batches."""

    def __init__(self, settings: FeaturesSettings) -> None:
        self.settings = settings
        spec = settings.use_case
        self.cache = Cache(settings.state_cache_entities, spec.features_config.entity_ttl / 2,
                           settings.state_cache_events)
        self.redis = Redis.from_url(settings.redis_url)
        self.store = FeatureStore(self.redis, spec, settings.group_id, self.cache)
        self.pipe = ScriptPipe(self.redis, self.store.script)
        self.producer: AIOKafkaProducer = make_producer(settings)
        self.inflight: asyncio.Future[Any] | None = None
        self.fallbacks = 0  # pipelined batches that went on one chunk at a time after a failure

    async def start(self) -> None:
        await self.producer.start()

    async def apply(self, records: Sequence[RawRecord]) -> BatchPlan:
        """Returns once the batch is in Redis (its late events acked on events.late)."""
        await self._settle()
        self.inflight = asyncio.ensure_future(self._apply_until_done(records))
        return await asyncio.shield(self.inflight)

    async def apply_chunks(self, chunks: Sequence[Sequence[RawRecord]], done: Done) -> None:
        """Apply ``chunks`` in order, calling ``done(chunk)`` once each is in Redis (it acks;
        False stops before the next write, e.g. after a rebalance; writes already in flight
        land). Each chunk is planned while earlier ones' scripts run in Redis, in order: the
        planning overlaps the writes (see ``_pipeline``)."""
        await self._settle()
        self.inflight = asyncio.ensure_future(self._chunks_until_done(chunks, done))
        await asyncio.shield(self.inflight)

    async def _chunks_until_done(self, chunks: Sequence[Sequence[RawRecord]], done: Done) -> None:
        finished: list[Sequence[RawRecord]] = []
        try:
            await self._pipeline(chunks, done, finished)
            return
        except (RedisError, OSError, KafkaError, Conflict) as exc:
            self.fallbacks += 1
            log.info("pipelined batch interrupted (%r); applying the rest one chunk at a time", exc)
        for chunk in chunks[len(finished):]:  # redelivery-safe: applied offsets are skipped
            await self._apply_until_done(chunk)
            if not await done(chunk):
                return

    async def _pipeline(self, chunks: Sequence[Sequence[RawRecord]], done: Done,
                        finished: list[Sequence[RawRecord]]) -> None:
        """Plan chunk k+1 while up to ``write_depth`` earlier chunks' scripts are queued or
        running in Redis, in order (one connection: see :mod:`services.features.pipe`); any
        failure clears the window cache (it was updated as if every planned write succeeded)
        once no write is in flight.

        Why more than one in flight: Redis shares the 2 cores with the services and the
        broker, so a script's wall time swings (measured: 26 ms for 8 ms of CPU); with one in
        flight the planner waited for it a third of its time. A script whose predecessor
        failed fails its compare-and-set where it depends on it (same partition); one that
        does not is right on its own, and the rest is replanned from Redis anyway."""
        writes = _Writes(self.pipe, done, finished)
        try:
            for chunk in chunks:
                prepared = await self.store.prepare(chunk, self._send_late, writes.settle)
                if not await writes.finish_until(self.settings.write_depth - 1):
                    self.cache.clear()  # holds the plan of a chunk that will not be written
                    return
                write = _Write(chunk, prepared.plan)
                if write.sent:
                    await self.pipe.send(*self.store.script_call(prepared))
                writes.queue.append(write)
            await writes.finish_until(0)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                await self.pipe.reset()  # replies out of step; sent scripts run whole or not at all
            else:
                await self.pipe.drain()  # never two writers
            self.cache.clear()
            raise

    async def forget(self) -> None:
        """After an assignment: windows of other partitions may have changed in Redis."""
        await self._settle()
        self.cache.clear()

    async def stop(self) -> None:
        await self._settle()
        await self.pipe.close()
        await self.redis.aclose()
        await self.producer.stop()

    async def _settle(self) -> None:
        """Wait for the in-flight batch (at most the grace period, then cancel it)."""
        task, self.inflight = self.inflight, None
        if task is None or task.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), self.settings.shutdown_grace_s)
        except TimeoutError:
            log.error("a batch of events.valid was not applied to Redis in time; it will be redelivered")
            task.cancel()
        except Exception as exc:  # noqa: BLE001 - it failed its own caller already
            log.debug("the in-flight batch had failed: %r", exc)

    async def _apply_until_done(self, records: Sequence[RawRecord]) -> BatchPlan:
        """Never give up on a batch: its offsets are acked to faust once it is applied."""
        while True:
            try:
                plan = await self.store.apply(records, late_sink=self._send_late)
                _log_plan(plan, len(records))
                return plan
            except (RedisError, OSError, KafkaError) as exc:
                log.error("batch of %d not applied (%s); retrying", len(records), exc)
                await asyncio.sleep(self.settings.retry_backoff_s)

    async def _send_late(self, late: Sequence[LateRecord]) -> None:
        now, spec = time.time(), self.settings.use_case
        await publish(self.producer, [
            Out(EVENTS_LATE.name, r.record.value or b"", r.record.key, late_dead_letter(r, spec, now).to_headers())
            for r in late
        ])


def _log_plan(plan: BatchPlan, size: int) -> None:
    if plan.late:
        log.warning("%d event(s) later than the allowed lateness sent to %s", plan.late, EVENTS_LATE.name)
    if plan.invalid:
        log.warning("%d invalid record(s) skipped", plan.invalid)
    if plan.redelivered:
        log.info("%d redelivered record(s) skipped (already applied)", plan.redelivered)
    log.debug("batch of %d: %d entities updated", size, len(plan.buffers))
