"""Ingestion service.

Consumes ``events.raw`` and ``labels.raw`` (group ``rivulet-ingestion``), validates each
record against the use-case spec and the contracts, and produces ``events.valid`` (key:
entity id) and ``labels.valid`` (key: prediction id). Invalid records go to ``events.dlq`` /
``labels.dlq`` with the original bytes and reason/field/source in headers. Stores nothing;
offsets are committed only after every output is acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiokafka import ConsumerRecord

from services.ingestion import handlers
from services.ingestion.settings import IngestionSettings
from shared import codec
from shared.errors import RejectedRecord
from shared.kafka import (
    BatchLoop,
    Out,
    dead_letter,
    ensure_topics,
    make_consumer,
    make_producer,
)
from shared.runtime import run_service, setup_logging, tune_gc
from shared.spec import UseCaseSpec
from shared.topics import EVENTS_RAW, EVENTS_VALID, LABELS_RAW, LABELS_VALID

log = logging.getLogger(__name__)

Validator = Callable[[bytes, UseCaseSpec, float], dict[str, Any]]
# source topic -> (validator, valid topic, key field, dlq topic)
ROUTES: dict[str, tuple[Validator, str, str, str]] = {
    EVENTS_RAW.name: (handlers.validate_event, EVENTS_VALID.name, "entity_id", EVENTS_RAW.dlq or ""),
    LABELS_RAW.name: (handlers.validate_label, LABELS_VALID.name, "prediction_id", LABELS_RAW.dlq or ""),
}


class Ingestion:
    def __init__(self, settings: IngestionSettings) -> None:
        self.settings = settings
        self.spec = settings.use_case
        self.counts: Counter[str] = Counter()

    def route(self, record: ConsumerRecord, now: float) -> Out:
        validate, topic, key_field, dlq = ROUTES[record.topic]
        try:
            valid = validate(record.value or b"", self.spec, now)
        except RejectedRecord as err:
            self.counts[f"{record.topic}:{err.reason.value}"] += 1
            return dead_letter(record, dlq, err)
        self.counts[f"{record.topic}:valid"] += 1
        return Out(topic, codec.dumps(valid), str(valid[key_field]).encode())

    async def handle(self, records: list[ConsumerRecord]) -> list[Out]:
        now = time.time()
        return [self.route(r, now) for r in records]

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        await ensure_topics(s.kafka_bootstrap)
        consumer = make_consumer(s, EVENTS_RAW.name, LABELS_RAW.name, group_id=s.ingestion_group,
                                 fetch_max_wait_ms=s.ingestion_fetch_max_wait_ms,
                                 session_timeout_ms=s.ingestion_session_timeout_ms,
                                 heartbeat_interval_ms=max(100, s.ingestion_session_timeout_ms // 5))
        producer = make_producer(s)
        await consumer.start()
        await producer.start()
        log.info("ingestion started: %s -> %s", list(ROUTES), [r[1] for r in ROUTES.values()])
        loop = BatchLoop(consumer, producer, self.handle, name="ingestion", max_records=s.ingestion_batch,
                         commit_interval_s=s.ingestion_commit_interval_s)
        try:
            await loop.run(stop)
        finally:
            log.info("ingestion stopping; counts %s", dict(self.counts))
            await consumer.stop()
            await producer.stop()


def create_app(settings: IngestionSettings) -> Ingestion:
    return Ingestion(settings)


def main() -> None:
    settings = IngestionSettings()
    setup_logging("ingestion", settings.log_level)
    app = create_app(settings)
    tune_gc()
    run_service(app.run)
