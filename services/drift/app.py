"""Drift service wiring.

Consumes: ``models`` (no group, from the beginning, to know every version's reference
profile and validation accuracy), ``predictions``, ``predictions.labeled`` and
``events.dlq`` (consumer group ``rivulet-drift``, at-least-once via
:class:`shared.kafka.BatchLoop`).
Produces: ``drift.alerts`` (key = model version): incident messages opened/updated/resolved.
Stores (Redis): ``rv:drift:incidents`` (incident trackers), ``rv:drift:state:{model}``
(latest per-test state, for ``rivulet drift report``) and ``rv:drift:selfref``
(self-built references, e.g. version 0's).

Alert delivery: alerts wait in ``outbox`` until the broker acked them (a failed batch is
retried and the outbox re-sent with the same alert ids); trackers are persisted after
the ack, so a crash in between may repeat, never lose, an alert.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import redis.asyncio as aioredis
from aiokafka import ConsumerRecord

from services.drift import handlers, incidents
from services.drift.incidents import Tracker
from services.drift.monitor import DriftMonitor, Evaluation
from services.drift.settings import DriftSettings
from shared import codec, redis_keys
from shared.contracts import DriftAlert, LabeledPrediction, ModelEvent, PredictionRecord
from shared.kafka import (
    BatchLoop,
    Out,
    ensure_topics,
    make_consumer,
    make_producer,
    publish,
)
from shared.runtime import run_service, setup_logging
from shared.topics import (
    DRIFT_ALERTS,
    EVENTS_DLQ,
    MODELS,
    PREDICTIONS,
    PREDICTIONS_LABELED,
)

log = logging.getLogger("services.drift")


class DriftService:
    def __init__(self, settings: DriftSettings) -> None:
        self.settings = settings
        self.spec = settings.use_case
        self.monitor = DriftMonitor(self.spec)
        self.trackers: dict[int, Tracker] = {}
        self.latest: dict[int, Evaluation] = {}
        self.outbox: list[DriftAlert] = []
        self.unsaved: dict[int, dict[str, object]] = {}
        self.published = 0

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        await ensure_topics(s.kafka_bootstrap)
        self.redis = aioredis.from_url(s.redis_url)
        self.producer = make_producer(s)
        self.models = make_consumer(s, MODELS.name, group_id=None)
        consumer = make_consumer(s, PREDICTIONS.name, PREDICTIONS_LABELED.name, EVENTS_DLQ.name,
                                 group_id=s.drift_group)
        try:
            await self.producer.start()
            await self.models.start()
            await self._load_trackers()
            await self._catch_up_models()
            await self._load_self_references()
            await consumer.start()
            d = self.spec.drift
            log.info("drift started: window=%d step=%d family alpha=%g (budget %g per 100k) cooldown=%gs",
                     d.window, d.step, handlers.family_alpha(self.spec), d.false_alarms_per_100k, d.cooldown)
            loop = BatchLoop(consumer, None, self.handle, name="drift", max_records=s.drift_max_records)
            await loop.run(stop)
        finally:
            for close in (consumer.stop, self.models.stop, self.producer.stop, self.redis.aclose):
                try:
                    await close()
                except Exception:
                    log.debug("close failed", exc_info=True)

    async def handle(self, records: list[ConsumerRecord]) -> list[Out]:
        """One batch: refresh models, feed the monitor, advance incidents, publish, persist."""
        await self._drain_models()
        parsed = [(r, handlers.parse(r.topic, r.value) if r.topic != EVENTS_DLQ.name else None)
                  for r in records]
        unknown = {p.model_version for _, p in parsed if isinstance(p, PredictionRecord)
                   and not self.monitor.knows(p.model_version)}
        if unknown:  # serving announces before it serves: read `models` to its end
            await self._catch_up_models()
        now = time.time()
        parsed.sort(key=lambda item: item[0].topic != EVENTS_DLQ.name)  # dead letters first (stable)
        for r, rec in parsed:
            if r.topic == EVENTS_DLQ.name:
                self.monitor.add_dead_letter(handlers.dead_letter_time(r.headers, r.timestamp))
            elif isinstance(rec, LabeledPrediction) and r.topic == PREDICTIONS_LABELED.name:
                self.monitor.add_labeled(rec)
            elif isinstance(rec, PredictionRecord) and r.topic == PREDICTIONS.name:
                ev = self.monitor.add(rec)
                if ev is not None:
                    self.latest[ev.model_version] = ev
                    tracker = self.trackers.setdefault(ev.model_version, Tracker())
                    self.outbox.extend(incidents.observe(tracker, ev, self.spec, now, lambda: uuid.uuid4().hex))
        await self._store_self_references()
        await self._flush_outbox()
        await self._persist()
        return []

    async def _flush_outbox(self) -> None:
        if not self.outbox:
            return
        outs = [Out(DRIFT_ALERTS.name, codec.dumps(a.model_dump()), str(a.model_version).encode())
                for a in self.outbox]
        await publish(self.producer, outs)
        for a in self.outbox:
            log.warning("DRIFT %s", a.message)
        self.published += len(self.outbox)
        self.outbox.clear()

    async def _persist(self) -> None:
        """Trackers (after the ack) and the latest state per evaluated version."""
        if self.trackers:
            await self.redis.hset(redis_keys.drift_incidents(), mapping={
                str(v): codec.dumps(t.to_json()) for v, t in self.trackers.items()})
        for version, ev in self.latest.items():
            tracker = self.trackers.get(version)
            mapping = handlers.state_fields(ev, tracker.incident.incident_id if tracker and tracker.incident else None,
                                            time.time())
            await self.redis.hset(redis_keys.drift_state(version), mapping=mapping)
        self.latest.clear()

    async def _load_trackers(self) -> None:
        for version, blob in (await self.redis.hgetall(redis_keys.drift_incidents())).items():
            try:
                self.trackers[int(version)] = Tracker.from_json(codec.loads(blob))
            except (ValueError, TypeError, codec.JSONDecodeError):
                log.warning("ignoring unreadable incident tracker for version %r", version)

    def _apply_models(self, records: list[ConsumerRecord]) -> None:
        for r in records:
            event = handlers.parse(r.topic, r.value)
            if isinstance(event, ModelEvent):
                self.monitor.apply_model_event(event)
                if event.event == "promoted" and event.strategy in (None, "full"):
                    self._supersede(event.version)  # a shadow or canary does not replace the champion

    def _supersede(self, version: int) -> None:
        """A newer promoted version: incidents of older versions are resolved (they no longer serve)."""
        for old, tracker in self.trackers.items():
            if old < version and tracker.incident is not None:
                span = self.latest[old].span if old in self.latest else handlers.AlertWindow(
                    start=tracker.last_end, end=tracker.last_end, count=0)
                self.outbox.extend(incidents.resolve(tracker, span, time.time(), f"v{version} was promoted"))

    async def _drain_models(self) -> None:
        batch = await self.models.getmany(timeout_ms=0)
        for recs in batch.values():
            self._apply_models(recs)

    async def _catch_up_models(self) -> None:
        """Read `models` until every partition reaches the end offset seen now."""
        deadline = time.monotonic() + self.settings.drift_catch_up_timeout_s
        while not self.models.assignment() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        parts = list(self.models.assignment())
        end = await self.models.end_offsets(parts) if parts else {}
        while time.monotonic() < deadline:
            positions = {tp: await self.models.position(tp) for tp in parts}
            if all(positions[tp] >= end[tp] for tp in parts):
                return
            batch = await self.models.getmany(timeout_ms=200)
            for recs in batch.values():
                self._apply_models(recs)
        log.warning("models catch-up timed out; unknown versions will use self-references")

    async def _load_self_references(self) -> None:
        stored = await self.redis.hgetall(redis_keys.drift_self_references())
        for version, blob in stored.items():
            try:
                self.monitor.load_self_reference(int(version), codec.loads(blob))
            except (ValueError, codec.JSONDecodeError):
                log.warning("ignoring unreadable stored reference for version %r", version)

    async def _store_self_references(self) -> None:
        self.unsaved.update(self.monitor.take_self_references())
        if self.unsaved:
            mapping = {str(v): codec.dumps(p) for v, p in self.unsaved.items()}
            await self.redis.hset(redis_keys.drift_self_references(), mapping=mapping)
            log.info("self-reference stored for version(s) %s", sorted(self.unsaved))
            self.unsaved.clear()


def create_app(settings: DriftSettings) -> DriftService:
    return DriftService(settings)


def main() -> None:
    settings = DriftSettings()
    setup_logging("drift", settings.log_level)
    run_service(create_app(settings).run)
