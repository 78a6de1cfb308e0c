"""Features service (faust): the streaming engine of the online features.

Consumes ``events.valid`` (raw bytes; decoded and type-checked here, invalid records are
logged and skipped) in batches. Stores, per entity, in Redis: the window events
(``rv:{fs}:wh:{entity}``) and the feature hash (``rv:{fs}:f:{entity}``) that serving reads,
plus the applied offset of every partition (``rv:{fs}:offsets:{group}``), all written by
one Lua script per batch (a compare-and-set on the offsets). Keeps recently used windows
in a bounded in-process cache, dropped on every assignment. Produces ``events.late``:
events later than the allowed lateness, original bytes + reason headers (acked before
the batch's Redis write, so none is lost).

Features are computed by ``services.features.handlers.compute_features``, the same function
batch code uses. Exactly-once effect: Redis offsets make any redelivery a no-op, and on
every partition assignment the consumer resumes right after the offset Redis says was
applied (not at faust's commit, which may lag, or run ahead when a batch was acked
without being applied, e.g. a shutdown that timed out mid-write).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import faust
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.features.handlers import (
    BatchPlan,
    LateRecord,
    RawRecord,
    late_dead_letter,
    resume_positions,
)
from services.features.settings import FeaturesSettings
from services.features.state import Cache
from services.features.store import FeatureStore, LateSink, applied_offsets
from shared.kafka import Out, ensure_topics, make_producer, publish
from shared.runtime import setup_logging
from shared.topics import EVENTS_LATE, EVENTS_VALID

log = logging.getLogger("services.features")


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust hard-codes fetch_max_wait_ms=1500; a broker that holds an empty fetch that long
    (Tansu does, even when data arrives) would add up to 1.5 s to the event-to-feature time."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        settings: FeaturesSettings = self.app.rivulet_settings  # type: ignore[attr-defined]
        consumer._fetch_max_wait_ms = settings.fetch_max_wait_ms  # read by start() (aiokafka 0.14)
        return consumer


class _ResumeFromRedisConsumer(faust_aiokafka.Consumer):
    """Every seek faust makes (after each assignment) goes to Redis' applied offset + 1."""

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        committed = dict(await super().seek_to_committed())
        settings: FeaturesSettings = self.app.rivulet_settings  # type: ignore[attr-defined]
        self.app.rivulet_cache.clear()  # type: ignore[attr-defined]  # windows of revoked partitions
        redis = Redis.from_url(settings.redis_url, socket_timeout=5)
        try:
            applied = await applied_offsets(redis, settings.use_case, settings.group_id)
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


class _Transport(faust_aiokafka.Transport):
    Consumer = _ResumeFromRedisConsumer


class _FeaturesApp(faust.App):
    """faust.App whose consumer resumes from Redis; carries the settings for it."""

    rivulet_settings: FeaturesSettings
    rivulet_cache: Cache

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)


def create_app(settings: FeaturesSettings) -> faust.App:
    """The faust app with its one agent. ``env={}``: faust must not read unprefixed env vars."""
    settings.use_case  # noqa: B018 - load and validate the spec now, not at the first batch
    app = _FeaturesApp(
        settings.group_id,
        env={},
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        web_enabled=False,
        datadir=str(settings.data_dir / "features"),
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=EVENTS_VALID.partitions,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=settings.commit_interval_s,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(0.5, settings.session_timeout_s / 5),
    )
    topic = app.topic(
        EVENTS_VALID.name, partitions=EVENTS_VALID.partitions, key_type=bytes, value_type=bytes,
        key_serializer="raw", value_serializer="raw",
    )

    app.rivulet_settings = settings
    app.rivulet_cache = Cache(settings.state_cache_entities, settings.use_case.features_config.entity_ttl / 2)

    @app.agent(topic, concurrency=1)
    async def features(stream: faust.StreamT[bytes]) -> None:
        redis = Redis.from_url(settings.redis_url)
        store = FeatureStore(redis, settings.use_case, settings.group_id, app.rivulet_cache)
        producer = make_producer(settings)
        await producer.start()
        applier = _Applier(store, producer, settings)
        try:
            async for event in stream.events():
                await applier.put(_raw(event.message))
        finally:
            await applier.stop()
            await redis.aclose()
            await producer.stop()

    return app


class _Applier:
    """Applies whatever is queued as one batch, as soon as the previous batch is written.

    Why not ``stream.take_events``: it stops filling its buffer while a batch is processed
    and then waits ``within`` for the next one, so at a moderate rate every batch paid the
    Redis round trips plus the wait, and a backlog built up. Here the stream keeps reading
    (bounded by the queue) while a batch is written, and a batch is whatever arrived
    meanwhile: large under load, small (fresh) when idle. faust acks a record once it is
    queued, so its commit may run ahead of Redis: harmless, since every assignment
    resumes from Redis' applied offsets and the write is a compare-and-set.
    """

    def __init__(self, store: FeatureStore, producer: AIOKafkaProducer, settings: FeaturesSettings) -> None:
        self.store, self.producer, self.settings = store, producer, settings
        self.queue: asyncio.Queue[RawRecord] = asyncio.Queue(maxsize=settings.batch_size * 4)
        self.idle = asyncio.Event()
        self.idle.set()
        self.task = asyncio.ensure_future(self._run())

    async def put(self, record: RawRecord) -> None:
        if self.task.done():
            self.task.result()  # re-raise what stopped it
        await self.queue.put(record)

    async def _run(self) -> None:
        while True:
            records = [await self.queue.get()]
            self.idle.clear()
            while len(records) < self.settings.batch_size and not self.queue.empty():
                records.append(self.queue.get_nowait())
            await _apply_until_done(self.store, self.producer, records, self.settings)
            self.idle.set()

    async def stop(self) -> None:
        """Let an in-flight batch finish (queued records are re-read from Redis' offsets)."""
        try:
            await asyncio.wait_for(self.idle.wait(), self.settings.shutdown_grace_s)
        except (TimeoutError, asyncio.CancelledError):
            log.error("shutdown: a batch of events.valid was not applied to Redis")
        self.task.cancel()


def _raw(message: Any) -> RawRecord:
    return RawRecord(message.partition, message.offset, message.value, message.key, message.topic)


def _late_sink(producer: AIOKafkaProducer, settings: FeaturesSettings) -> LateSink:
    async def send(late: Sequence[LateRecord]) -> None:
        now = time.time()
        await publish(producer, [
            Out(EVENTS_LATE.name, r.record.value or b"", r.record.key,
                late_dead_letter(r, settings.use_case, now).to_headers())
            for r in late
        ])
    return send


async def _apply_until_done(
    store: FeatureStore, producer: AIOKafkaProducer, records: Sequence[RawRecord], settings: FeaturesSettings
) -> BatchPlan:
    """Never give up on a batch: faust acks it when we return, so it must be applied first."""
    sink = _late_sink(producer, settings)
    while True:
        try:
            plan = await store.apply(records, late_sink=sink)
            _log_plan(plan, len(records))
            return plan
        except (RedisError, OSError, KafkaError) as exc:
            log.error("batch of %d not applied (%s); retrying", len(records), exc)
            await asyncio.sleep(settings.retry_backoff_s)


def _log_plan(plan: BatchPlan, size: int) -> None:
    if plan.late:
        log.warning("%d event(s) later than the allowed lateness sent to %s", plan.late, EVENTS_LATE.name)
    if plan.invalid:
        log.warning("%d invalid record(s) skipped", plan.invalid)
    if plan.redelivered:
        log.info("%d redelivered record(s) skipped (already applied)", plan.redelivered)
    log.debug("batch of %d: %d entities updated", size, len(plan.buffers))


class _Worker(faust.Worker):
    """faust's worker, logging in the house format, without the terminal spinner."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spinner = None

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        setup_logging("features", logging.getLevelName(level))


def main() -> None:
    """Ensure topics, then run the faust worker until SIGINT/SIGTERM (handled by the worker)."""
    settings = FeaturesSettings()
    setup_logging("features", settings.log_level)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(ensure_topics(settings.kafka_bootstrap))
    (settings.data_dir / "features").mkdir(parents=True, exist_ok=True)
    app = create_app(settings)
    worker = _Worker(app, loop=loop, loglevel=settings.log_level, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
