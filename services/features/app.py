"""Features service (faust): the streaming engine of the online features.

Consumes ``events.valid`` (raw bytes; decoded and validated here against the spec's event
contract, invalid records are logged and skipped) in batches. Stores, per entity, in
Redis: the window buffer (``rv:{fs}:w:{entity}``) and the feature hash
(``rv:{fs}:f:{entity}``) that serving reads, plus the applied offset of every partition
(``rv:{fs}:offsets:{group}``), all written in one MULTI/EXEC per batch. Produces nothing.

Features are computed by ``services.features.handlers.compute_features``, the same function
batch code uses. Faust acks (and later commits) a batch only after its Redis transaction,
and Redis offsets make any redelivery a no-op: each event is applied exactly once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import faust
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.kafka import ensure_topics
from shared.runtime import setup_logging
from shared.topics import EVENTS_VALID
from services.features.handlers import BatchPlan, RawRecord
from services.features.settings import FeaturesSettings
from services.features.store import apply_batch

log = logging.getLogger("services.features")


def create_app(settings: FeaturesSettings) -> faust.App:
    """The faust app with its one agent. ``env={}``: faust must not read unprefixed env vars."""
    settings.use_case  # noqa: B018 - load and validate the spec now, not at the first batch
    app = faust.App(
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

    @app.agent(topic, concurrency=1)
    async def features(stream: faust.StreamT[bytes]) -> None:
        redis = Redis.from_url(settings.redis_url)
        try:
            async for events in stream.take_events(settings.batch_size, within=settings.batch_within_s):
                records = [RawRecord(e.message.partition, e.message.offset, e.message.value) for e in events]
                await _finish_even_if_cancelled(_apply_until_done(redis, records, settings),
                                                settings.shutdown_grace_s)
        finally:
            await redis.aclose()

    return app


async def _apply_until_done(redis: Redis, records: Sequence[RawRecord], settings: FeaturesSettings) -> BatchPlan:
    """Never give up on a batch: faust acks it when we return, so it must be applied first."""
    while True:
        try:
            plan = await apply_batch(redis, records, settings.use_case, settings.group_id)
            _log_plan(plan, len(records))
            return plan
        except (RedisError, OSError) as exc:
            log.error("redis write failed (%s); retrying the batch of %d", exc, len(records))
            await asyncio.sleep(settings.retry_backoff_s)


async def _finish_even_if_cancelled(coro: Any, grace_s: float) -> Any:
    """On shutdown faust cancels the agent and acks the batch: let the write finish first."""
    task = asyncio.ensure_future(coro)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        try:
            await asyncio.wait_for(asyncio.shield(task), grace_s)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            task.cancel()
            log.error("shutdown: a batch of events.valid was not applied to Redis")
        raise


def _log_plan(plan: BatchPlan, size: int) -> None:
    if plan.late:
        log.warning("%d event(s) later than the allowed lateness were not applied", plan.late)
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
