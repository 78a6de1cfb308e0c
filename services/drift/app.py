"""Drift service wiring.

Consumes: ``models`` (no group, from the beginning, to know every version's reference
profile and validation accuracy), ``predictions`` and ``predictions.labeled`` (consumer
group ``rivulet-drift``, at-least-once via :class:`shared.kafka.BatchLoop`).
Produces: ``drift.alerts`` (key = model version).
Stores (Redis): ``rv:drift:cool:*`` cool-down markers (SET NX EX, so a restart does not
repeat an alert) and ``rv:drift:selfref`` (self-built references, e.g. version 0's).

Alert delivery: findings wait in ``pending`` until their cool-down is decided, admitted
alerts wait in ``outbox`` until the broker acked them; both survive a failed batch,
so a retry neither loses nor re-decides an alert.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import redis.asyncio as aioredis
from aiokafka import ConsumerRecord

from services.drift import handlers
from services.drift.handlers import Finding
from services.drift.monitor import DriftMonitor
from services.drift.settings import DriftSettings
from shared import codec, redis_keys
from shared.contracts import DriftAlert, LabeledPrediction, ModelEvent, PredictionRecord
from shared.kafka import BatchLoop, Out, ensure_topics, make_consumer, make_producer, publish
from shared.runtime import run_service, setup_logging
from shared.topics import DRIFT_ALERTS, MODELS, PREDICTIONS, PREDICTIONS_LABELED

log = logging.getLogger("services.drift")


class DriftService:
    def __init__(self, settings: DriftSettings) -> None:
        self.settings = settings
        self.spec = settings.use_case
        self.monitor = DriftMonitor(self.spec)
        self.pending: list[Finding] = []
        self.outbox: list[DriftAlert] = []
        self.unsaved: dict[int, dict[str, object]] = {}
        self.published = 0

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        await ensure_topics(s.kafka_bootstrap)
        self.redis = aioredis.from_url(s.redis_url)
        self.producer = make_producer(s)
        self.models = make_consumer(s, MODELS.name, group_id=None)
        consumer = make_consumer(s, PREDICTIONS.name, PREDICTIONS_LABELED.name, group_id=s.drift_group)
        try:
            await self.producer.start()
            await self.models.start()
            await self._catch_up_models()
            await self._load_self_references()
            await consumer.start()
            log.info("drift started: window=%d alpha=%g cooldown=%gs", self.spec.drift.window,
                     self.spec.drift.alpha, self.spec.drift.cooldown)
            loop = BatchLoop(consumer, None, self.handle, name="drift", max_records=s.drift_max_records)
            await loop.run(stop)
        finally:
            for close in (consumer.stop, self.models.stop, self.producer.stop, self.redis.aclose):
                try:
                    await close()
                except Exception:  # noqa: BLE001 - best effort on shutdown
                    log.debug("close failed", exc_info=True)

    async def handle(self, records: list[ConsumerRecord]) -> list[Out]:
        """One batch: refresh models, feed the monitor, cool-down, publish (then commit)."""
        await self._drain_models()
        parsed = [(r.topic, handlers.parse(r.topic, r.value)) for r in records]
        unknown = {p.model_version for _, p in parsed if isinstance(p, PredictionRecord)
                   and not self.monitor.knows(p.model_version)}
        if unknown:  # serving announces before it serves: read `models` to its end
            await self._catch_up_models()
        for topic, rec in parsed:
            if isinstance(rec, LabeledPrediction) and topic == PREDICTIONS_LABELED.name:
                self.pending.extend(self.monitor.add_labeled(rec))
            elif isinstance(rec, PredictionRecord) and topic == PREDICTIONS.name:
                self.pending.extend(self.monitor.add_prediction(rec))
        await self._store_self_references()
        await self._admit_pending()
        await self._flush_outbox()
        return []

    async def _admit_pending(self) -> None:
        """Cool-down: SET NX EX per (version, kind, feature); only the first one is sent."""
        while self.pending:
            f = self.pending[0]
            key = redis_keys.drift_cooldown(f.model_version, f.outcome.kind, f.outcome.feature)
            ttl = max(1, int(round(self.spec.drift.cooldown)))
            if await self.redis.set(key, "1", nx=True, ex=ttl):
                self.outbox.append(handlers.to_alert(f, uuid.uuid4().hex, time.time()))
            else:
                log.info("suppressed by cool-down: v%d %s %s", f.model_version, f.outcome.kind,
                         f.outcome.feature or "-")
            self.pending.pop(0)

    async def _flush_outbox(self) -> None:
        if not self.outbox:
            return
        outs = [Out(DRIFT_ALERTS.name, codec.dumps(a.model_dump()), str(a.model_version).encode())
                for a in self.outbox]
        await publish(self.producer, outs)
        for a in self.outbox:
            log.warning("DRIFT ALERT %s", a.message)
        self.published += len(self.outbox)
        self.outbox.clear()

    def _apply_models(self, records: list[ConsumerRecord]) -> None:
        for r in records:
            event = handlers.parse(r.topic, r.value)
            if isinstance(event, ModelEvent):
                self.monitor.apply_model_event(event)

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
