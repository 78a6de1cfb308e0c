"""performance: online model metrics, measured from labels or estimated from scores.

Consumes ``predictions`` (scores, for the estimate), ``predictions.labeled`` and
``labels.missing``, WITHOUT a consumer group: on start every partition is replayed from
``replay_records`` before its end, which rebuilds the rolling windows (``tracker``), so
the service stores nothing and a restart loses nothing that matters.
Produces ``metrics`` (key ``"{model_version}"`` or ``"{model_version}:{slice}"``): a
MetricsRecord snapshot per model version and slice every ``publish_interval_s``
(``estimated: true`` while fewer than ``spec.monitoring.min_labels`` labels matured),
plus label coverage and delay per model version. The same values are Prometheus gauges
on ``http://0.0.0.0:{RIVULET_PERFORMANCE_PORT}/metrics``.
Delivery: snapshots are idempotent (latest per key wins); corrections replace, never add.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from services.performance.settings import PerformanceSettings
from services.performance.tracker import Tracker
from shared import codec
from shared.contracts import (
    LabeledPrediction,
    LabelMissing,
    MetricsRecord,
    PredictionRecord,
    parse_record,
)
from shared.errors import RejectedRecord
from shared.kafka import Out, ensure_topics, make_consumer, make_producer, publish
from shared.runtime import run_service, setup_logging
from shared.topics import LABELS_MISSING, METRICS, PREDICTIONS, PREDICTIONS_LABELED

log = logging.getLogger(__name__)
INPUTS = {PREDICTIONS.name: PredictionRecord, PREDICTIONS_LABELED.name: LabeledPrediction,
          LABELS_MISSING.name: LabelMissing}


class Gauges:
    """Prometheus view of the snapshots (own registry: no process-global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.performance = Gauge("rivulet_model_performance", "Rolling model metric per version and slice",
                                 ["model_version", "slice", "metric"], registry=self.registry)
        self.estimated = Gauge("rivulet_model_performance_estimated",
                               "1 while the metrics are estimated from scores (no labels yet)",
                               ["model_version", "slice"], registry=self.registry)
        self.labels = Gauge("rivulet_labels", "Label coverage and delay per model version",
                            ["model_version", "metric"], registry=self.registry)

    def update(self, records: list[MetricsRecord]) -> None:
        for r in records:
            version, slice_ = str(r.model_version), r.slice or "all"
            if r.kind == "labels":
                for name, value in r.metrics.items():
                    self.labels.labels(version, name).set(value)
                continue
            self.estimated.labels(version, slice_).set(1.0 if r.estimated else 0.0)
            for name, value in r.metrics.items():
                self.performance.labels(version, slice_, name).set(value)


class Performance:
    def __init__(self, settings: PerformanceSettings, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer) -> None:
        self.settings, self.consumer, self.producer = settings, consumer, producer
        self.tracker = Tracker(settings.use_case.monitoring, settings.use_case.model.task)
        self.gauges = Gauges()
        self.invalid = 0

    def apply(self, record: ConsumerRecord) -> None:
        try:
            rec = parse_record(INPUTS[record.topic], record.value)
        except RejectedRecord as exc:
            self.invalid += 1
            log.debug("skipping invalid %s p%d@%d: %s", record.topic, record.partition, record.offset, exc.as_dict())
            return
        if isinstance(rec, LabeledPrediction):
            self.tracker.on_labeled(rec)
        elif isinstance(rec, LabelMissing):
            self.tracker.on_missing(rec)
        else:
            self.tracker.on_prediction(rec)

    async def publish_snapshot(self) -> list[MetricsRecord]:
        records = self.tracker.snapshot(time.time())
        self.gauges.update(records)
        outs = [Out(METRICS.name, codec.dumps(r.model_dump(mode="json")), _key(r).encode()) for r in records]
        await publish(self.producer, outs)
        return records

    async def assign(self) -> None:
        """Every partition of the inputs, from ``replay_records`` before the end."""
        for _ in range(50):  # fresh topics may take a moment to show up in metadata
            await self.consumer.topics()
            if all(self.consumer.partitions_for_topic(t) for t in INPUTS):
                break
            await asyncio.sleep(0.2)
        tps = [TopicPartition(t, p) for t in INPUTS for p in sorted(self.consumer.partitions_for_topic(t) or ())]
        self.consumer.assign(tps)
        begin, end = await self.consumer.beginning_offsets(tps), await self.consumer.end_offsets(tps)
        for tp in tps:
            self.consumer.seek(tp, max(begin[tp], end[tp] - self.settings.replay_records))

    async def run(self, stop: asyncio.Event) -> None:
        await self.assign()
        next_publish = time.monotonic() + self.settings.publish_interval_s
        while not stop.is_set():
            batches = await self.consumer.getmany(timeout_ms=200, max_records=self.settings.max_records)
            for records in batches.values():
                for record in records:
                    self.apply(record)
            if time.monotonic() >= next_publish:
                next_publish = time.monotonic() + self.settings.publish_interval_s
                try:
                    await self.publish_snapshot()
                except Exception:
                    log.exception("publishing metrics failed; next interval retries")


def _key(r: MetricsRecord) -> str:
    return f"{r.model_version}:{r.slice}" if r.slice else str(r.model_version)


def create_app(settings: PerformanceSettings) -> Performance:
    return Performance(settings, make_consumer(settings, group_id=None), make_producer(settings))


async def serve(settings: PerformanceSettings, stop: asyncio.Event) -> None:
    await ensure_topics(settings.kafka_bootstrap)
    app = create_app(settings)
    if settings.performance_port:
        start_http_server(settings.performance_port, registry=app.gauges.registry)
    await app.producer.start()
    await app.consumer.start()
    try:
        await app.run(stop)
    finally:
        await app.consumer.stop()
        await app.producer.stop()
        log.info("stopped (%d invalid input records skipped)", app.invalid)


def main() -> None:
    settings = PerformanceSettings()
    setup_logging("performance", settings.log_level)
    run_service(lambda stop: serve(settings, stop))
