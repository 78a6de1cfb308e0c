"""prediction_log: the offline store of predictions.

Consumes ``predictions`` (group ``rivulet-prediction-log``) and ``predictions.labeled``
(group ``rivulet-prediction-log-labels``; off with ``RIVULET_STORE_LABELS=false``).
Produces nothing. Stores every valid PredictionRecord (every role, shadow included)
exactly once as Parquet under ``{data_dir}/offline/predictions/date=YYYY-MM-DD/model_version=N/``,
and every label revision under ``{data_dir}/offline/labels/`` (same layout and mechanism,
one sink each; layout in ``handlers``; point-in-time reader in ``reader``). Invalid
records are logged and skipped.

Why not ``BatchLoop``: files want thousands of rows, so records are buffered across many
fetches (``flush_records`` / ``flush_interval_s``) and offsets are committed only after
a flush is durable. Redeliveries are skipped by offset (``store.recover``), so the store
is exactly-once even though Kafka delivery is at-least-once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pyarrow as pa
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from services.prediction_log import store
from services.prediction_log.handlers import (
    FlushBuffer,
    RowBuilder,
    label_row,
    labels_root,
    prediction_row,
    store_root,
)
from services.prediction_log.settings import PredictionLogSettings
from shared.kafka import ensure_topics, make_consumer
from shared.runtime import run_service, setup_logging
from shared.topics import PREDICTIONS, PREDICTIONS_LABELED

log = logging.getLogger(__name__)


class PredictionLog(ConsumerRebalanceListener):
    """Buffer -> write files durably -> commit; repairs a partition's files before consuming it."""

    def __init__(self, settings: PredictionLogSettings, consumer: AIOKafkaConsumer, topic: str = PREDICTIONS.name,
                 root: Path | None = None, schema: pa.Schema = store.SCHEMA, row_of: RowBuilder = prediction_row) -> None:
        self.settings = settings
        self.consumer = consumer
        self.topic, self.schema = topic, schema
        self.root = root or store_root(settings.data_dir)
        self.buffer = FlushBuffer(row_of=row_of)
        self.lock = asyncio.Lock()
        self.loaded: set[int] = set()  # partitions whose high water has been read

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("%s: assigned partitions %s", self.topic, sorted(tp.partition for tp in assigned))

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if not await self.flush():
            self.buffer.discard()  # the new owner gets these records redelivered
        for tp in revoked:
            self.buffer.high_water.pop(tp.partition, None)
            self.loaded.discard(tp.partition)

    async def load(self, partitions: set[int]) -> None:
        """Repair the store and read the high water of newly owned partitions.

        Done here, in the consuming task, right before their first record is buffered:
        aiokafka may hand out records of a new assignment before its listener has run.
        """
        async with self.lock:
            high_water = await asyncio.to_thread(store.recover, self.root, partitions)
            for partition in partitions:
                self.buffer.high_water.pop(partition, None)
            self.buffer.high_water.update(high_water)
            self.loaded |= partitions
        log.info("partitions %s: stored up to %s", sorted(partitions), high_water)

    async def flush(self) -> bool:
        """Write the buffered records, then commit; False if the files could not be written."""
        async with self.lock:
            if self.buffer.started_at is None:
                return True
            specs = self.buffer.plan()
            try:
                files = await asyncio.to_thread(store.write_flush, self.root, specs, self.schema)
            except OSError:
                log.exception("flush of %d file(s) failed; will retry", len(specs))
                return False
            assigned = self.consumer.assignment()
            offsets = {TopicPartition(self.topic, p): o for p, o in self.buffer.next_offsets.items()}
            rows = sum(len(s.rows) for s in specs)
            self.buffer.flushed()
            try:
                await self.consumer.commit({tp: o for tp, o in offsets.items() if tp in assigned})
            except KafkaError as exc:  # files are durable; a redelivery is skipped by offset
                log.warning("commit failed (%s); redelivered records will be skipped", exc)
            if files:
                log.info("%s: flushed %d row(s) in %d file(s); totals %s", self.topic, rows, files,
                         self.buffer.stats)
            return True

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        while not stop.is_set():
            if self.buffer.due(time.time(), s.flush_records, s.flush_interval_s) and not await self.flush():
                await _sleep_or_stop(stop, s.retry_backoff_s)
                continue  # stop consuming until the buffered flush succeeds
            batches = await self.consumer.getmany(timeout_ms=200, max_records=s.flush_records)
            if new := {tp.partition for tp in batches} - self.loaded:
                await self.load(new)
            now = time.time()
            for tp, records in batches.items():
                if tp.partition not in self.loaded:  # revoked while loading
                    continue
                for r in records:
                    self.buffer.add(r.partition, r.offset, r.value, now)
        await self.flush()


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass


def create_app(settings: PredictionLogSettings, labels: bool = False) -> PredictionLog:
    """The predictions sink, or (``labels``) the sink of ``predictions.labeled``."""
    consumer = make_consumer(
        settings, group_id=settings.labels_group_id if labels else settings.group_id,
        session_timeout_ms=settings.session_timeout_ms, heartbeat_interval_ms=settings.session_timeout_ms // 3,
    )
    if labels:
        app = PredictionLog(settings, consumer, PREDICTIONS_LABELED.name, labels_root(settings.data_dir),
                            store.LABEL_SCHEMA, label_row)
    else:
        app = PredictionLog(settings, consumer)
    consumer.subscribe([app.topic], listener=app)
    return app


async def _run_sink(app: PredictionLog, stop: asyncio.Event) -> None:
    await app.consumer.start()
    try:
        await app.run(stop)
    finally:
        await app.consumer.stop()
        log.info("%s: stopped; totals %s", app.topic, app.buffer.stats)


async def serve(settings: PredictionLogSettings, stop: asyncio.Event) -> None:
    await ensure_topics(settings.kafka_bootstrap)
    sinks = [create_app(settings)] + ([create_app(settings, labels=True)] if settings.store_labels else [])
    await asyncio.gather(*(_run_sink(app, stop) for app in sinks))


def main() -> None:
    settings = PredictionLogSettings()
    setup_logging("prediction_log", settings.log_level)
    run_service(lambda stop: serve(settings, stop))
