"""label_join: predictions + ground truth -> labeled predictions.

Consumes ``predictions`` and ``labels.valid`` (one consumer, group ``rivulet-label-join``).
Produces ``predictions.labeled`` (key prediction_id): LabeledPrediction, revision 1 for the
first pair, n + 1 for each label correction (a label with a different value).
Stores the join state in Redis (``rv:join:p|l|done:{prediction_id}``, TTL =
spec.labels.maturity + ``ttl_margin_s``), so it survives restarts and stays bounded.

Per batch: store sides / fetch the other side (atomic Lua) -> publish + await acks ->
mark done in Redis -> commit (BatchLoop). A crash before "mark done" re-emits the same
revision on redelivery (at-least-once; consumers dedupe by prediction_id + revision); a
crash after it emits nothing again. Labels whose prediction never arrives expire with
the TTL (no ``labels.unmatched`` output yet).
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from redis.asyncio import Redis

from services.label_join.handlers import Step, plan_emissions, to_step
from services.label_join.join_state import JoinState
from services.label_join.settings import LabelJoinSettings
from shared import codec
from shared.contracts import LabeledPrediction
from shared.errors import RejectedRecord
from shared.kafka import BatchLoop, Out, ensure_topics, make_consumer, make_producer, publish
from shared.runtime import run_service, setup_logging
from shared.topics import LABELS_VALID, PREDICTIONS, PREDICTIONS_LABELED

log = logging.getLogger(__name__)


def to_out(lp: LabeledPrediction) -> Out:
    return Out(PREDICTIONS_LABELED.name, codec.dumps(lp.model_dump(mode="json")), lp.prediction_id.encode())


class LabelJoin:
    """The batch handler: it publishes itself, because "done" may only be marked after the acks."""

    def __init__(self, settings: LabelJoinSettings, consumer: AIOKafkaConsumer,
                 producer: AIOKafkaProducer, redis: Redis) -> None:
        self.settings = settings
        self.consumer, self.producer, self.redis = consumer, producer, redis
        self.state = JoinState(redis, settings.use_case.labels.maturity + settings.ttl_margin_s)
        self.loop = BatchLoop(consumer, None, self.handle, name="label_join", max_records=settings.max_records)
        self.counts: dict[str, int] = {}
        self.logged_at = time.monotonic()

    def steps(self, records: list[ConsumerRecord]) -> list[Step]:
        steps = []
        for r in records:
            try:
                steps.append(to_step(r.topic, r.value))
            except RejectedRecord as exc:
                self.count({"invalid": 1})
                log.warning("skipping invalid %s p%d@%d: %s", r.topic, r.partition, r.offset, exc.as_dict())
        return steps

    async def handle(self, records: list[ConsumerRecord]) -> list[Out]:
        steps = self.steps(records)
        plan = plan_emissions(steps, await self.state.store_and_fetch(steps), time.time())
        await publish(self.producer, [to_out(e.output) for e in plan.emissions])
        await self.state.mark_done(plan.final_done())
        self.count(plan.counts)
        return []

    def count(self, counts: dict[str, int]) -> None:
        for key, n in counts.items():
            self.counts[key] = self.counts.get(key, 0) + n
        if time.monotonic() - self.logged_at >= self.settings.stats_interval_s:
            self.logged_at = time.monotonic()
            log.info("totals %s", self.counts)


def create_app(settings: LabelJoinSettings) -> LabelJoin:
    consumer = make_consumer(
        settings, PREDICTIONS.name, LABELS_VALID.name, group_id=settings.group_id,
        session_timeout_ms=settings.session_timeout_ms, heartbeat_interval_ms=settings.session_timeout_ms // 3,
    )
    redis = Redis.from_url(settings.redis_url)
    return LabelJoin(settings, consumer, make_producer(settings), redis)


async def serve(settings: LabelJoinSettings, stop: asyncio.Event) -> None:
    await ensure_topics(settings.kafka_bootstrap)
    app = create_app(settings)
    await app.producer.start()
    await app.consumer.start()
    try:
        await app.loop.run(stop)
    finally:
        await app.consumer.stop()
        await app.producer.stop()
        await app.redis.aclose()
        log.info("stopped; totals %s", app.counts)


def main() -> None:
    settings = LabelJoinSettings()
    setup_logging("label_join", settings.log_level)
    run_service(lambda stop: serve(settings, stop))
