"""Retrain controller.

Consumes ``models``, ``predictions.labeled``, ``drift.alerts`` and ``retrain.requests``,
all WITHOUT a consumer group, from the beginning (``predictions.labeled`` only its last
``buffer_factor x retrain.window`` records per partition). Until it has caught up with the
end offsets seen at start it only rebuilds state: champion, highest version, which trigger
ids were already answered (read from the ``trigger`` of every model event), the labeled
rows. Then it decides: bootstrap while the baseline serves, drift alerts about the current
champion, retrain requests. One training at a time, in a child process; later triggers merge
into the pending/running one (debounce).

Produces ``models`` events (``registered`` + ``promoted``, or ``rejected``). Stores the
registry under ``<data_dir>/registry`` (a view of ``models``, see ``registry.py``).
Why no group and no commits: the state is small and fully derivable from the topics, and an
alert or request counts as handled exactly when a model event names it, so a restart neither
loses a pending trigger nor answers one twice (barring a crash between training and publish,
which just retrains). Run exactly one instance.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from pydantic import ValidationError

from services.retrain import handlers as h
from services.retrain import registry, trainer
from services.retrain.settings import RetrainSettings
from shared import codec
from shared.contracts import DriftAlert, LabeledPrediction, ModelEvent, RetrainRequest, TrainingWindow
from shared.kafka import Out, ensure_topics, make_consumer, make_producer, publish
from shared.runtime import run_service, setup_logging
from shared.topics import DRIFT_ALERTS, MODELS, PREDICTIONS_LABELED, RETRAIN_REQUESTS

log = logging.getLogger(__name__)
TOPICS = (MODELS.name, PREDICTIONS_LABELED.name, DRIFT_ALERTS.name, RETRAIN_REQUESTS.name)
CONTRACTS: dict[str, Any] = {
    MODELS.name: ModelEvent, PREDICTIONS_LABELED.name: LabeledPrediction,
    DRIFT_ALERTS.name: DriftAlert, RETRAIN_REQUESTS.name: RetrainRequest,
}


class Retrain:
    def __init__(self, settings: RetrainSettings) -> None:
        self.settings = settings
        self.spec = settings.use_case
        self.state = h.ControllerState()
        self.buffer = h.LabeledBuffer(settings.retrain_buffer_factor * self.spec.retrain.window)
        self.caught_up = False
        self.backlog: list[DriftAlert | RetrainRequest] = []
        self.training: asyncio.Task[None] | None = None
        self.producer: AIOKafkaProducer | None = None
        self.status = ""
        self.status_at = 0.0

    # -- state from records -------------------------------------------------------------
    def apply(self, record: ConsumerRecord) -> None:
        """Validate and fold one record in; a bad record is logged and skipped."""
        try:
            obj = CONTRACTS[record.topic].model_validate(codec.loads(record.value or b""))
        except (codec.JSONDecodeError, ValidationError) as exc:
            log.warning("skipping invalid %s@%d:%d: %s", record.topic, record.partition,
                        record.offset, str(exc)[:300])
            return
        if isinstance(obj, ModelEvent):
            self.on_model_event(obj)
        elif isinstance(obj, LabeledPrediction):
            row = h.to_row(obj)
            if row is not None:
                self.buffer.add(row)
        elif self.caught_up:
            self.on_trigger(obj)
        else:
            self.backlog.append(obj)

    def on_model_event(self, ev: ModelEvent) -> None:
        before = self.state.champion
        h.apply_model_event(self.state, ev)
        registry.record(self.settings.data_dir, ev)
        if self.state.champion != before:
            log.info("champion is now v%d (%s)", self.state.champion, ev.event)

    def on_trigger(self, obj: DriftAlert | RetrainRequest) -> None:
        if isinstance(obj, DriftAlert):
            decision = h.on_alert(self.state, obj)
        else:
            decision = h.on_request(self.state, obj)
        log.info("decision %s: %s", decision.action, decision.reason)

    def catch_up_done(self) -> None:
        """Decide on the backlog only now: a replayed alert may already be answered by a
        model event that sits later in ``models`` than the alert in ``drift.alerts``."""
        self.caught_up = True
        log.info("caught up: champion v%d, max version %d, %d labeled rows, %d alerts/requests to check",
                 self.state.champion, self.state.max_version, len(self.buffer), len(self.backlog))
        backlog, self.backlog = self.backlog, []
        for obj in sorted(backlog, key=lambda o: o.detected_at if isinstance(o, DriftAlert) else o.requested_at):
            self.on_trigger(obj)

    # -- decisions ----------------------------------------------------------------------
    def decide(self) -> None:
        """Raise the bootstrap trigger if due, then start training when a trigger is ready."""
        boot = h.on_bootstrap(self.state, self.spec)
        if boot is not None:
            log.info("decision %s: %s", boot.action, boot.reason)
        ready, why = h.readiness(self.state, self.buffer, max(2, self.spec.retrain.min_labels))
        self.report(why)
        if ready:
            trigger = h.start_training(self.state)
            self.training = asyncio.create_task(self.train(trigger))

    def report(self, why: str) -> None:
        """Log/store the status when it changes; a mere count change at most every 30 s,
        so a trigger waiting under live traffic does not log every batch."""
        if why == self.status:
            return
        key, now = " ".join(why.split()[:2]), time.monotonic()
        if key == " ".join(self.status.split()[:2]) and now - self.status_at < 30:
            return
        self.status, self.status_at = why, now
        log.info("status: %s", why)
        registry.write_status(self.settings.data_dir, {"status": why, "at": time.time(),
                                                       "champion": self.state.champion})

    # -- training -----------------------------------------------------------------------
    async def train(self, trigger: h.Trigger) -> None:
        """The training task; whatever happens, the controller is free again afterwards."""
        try:
            await self.train_and_publish(trigger)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a bug here must not wedge the controller
            log.exception("retrain for %s failed before publishing", trigger.label)
        finally:
            self.state.in_flight = None

    async def train_and_publish(self, trigger: h.Trigger) -> None:
        r, s = self.spec.retrain, self.settings
        train_rows, holdout = h.split_window(self.buffer.eligible(trigger.since), r.window, r.holdout_fraction)
        window = h.training_window(train_rows)
        champion = self.state.promoted.get(trigger.champion) if trigger.champion else None
        if trigger.champion and champion is None:
            log.warning("no artifact known for champion v%d: comparing with the baseline", trigger.champion)
        job = trainer.make_job(train_rows, holdout, champion, s.model_secret.get_secret_value(),
                               self.spec.model.threshold)
        log.info("training for %s: %d train + %d holdout rows (served %.3f..%.3f)", trigger.label,
                 len(train_rows), len(holdout), window.start, holdout[-1].served_at)
        result: dict[str, Any] | str
        try:
            result = await trainer.run_in_child(job, s.spec, s.retrain_hash_seed, s.retrain_timeout_s)
        except Exception as exc:  # noqa: BLE001 - a failed training still answers its trigger
            log.error("training for %s failed: %s", trigger.label, exc, exc_info=not isinstance(
                exc, trainer.TrainingFailed))
            result = f"training failed: {str(exc)[:300]}"
        await self.publish_outcome(trigger, result, window)

    def outcome_events(self, trigger: h.Trigger, result: dict[str, Any] | str,
                       window: TrainingWindow) -> list[ModelEvent]:
        """``result`` is the trainer's answer, or the reason training failed."""
        version, now = self.state.max_version + 1, time.time()
        if isinstance(result, str):
            return [h.failure_event(trigger, version, trigger.champion, result, window, now)]
        if self.state.champion != trigger.champion:
            reason = f"champion changed during training (v{trigger.champion} -> v{self.state.champion})"
            return [h.failure_event(trigger, version, trigger.champion, reason, window, now)]
        passed, reason = h.gate(result["metrics"], result["champion_metrics"],
                                self.spec.retrain.primary_metric, self.spec.retrain.margin)
        reason = f"{reason}; champion scored as {result['champion_source']}"
        log.info("v%d for %s %s", version, trigger.label, reason)
        return h.model_events(result, trigger, version, trigger.champion, passed, reason, window,
                              self.spec.model.threshold, now)

    async def publish_outcome(self, trigger: h.Trigger, result: dict[str, Any] | str,
                              window: TrainingWindow) -> None:
        """Publish until acked (retrying), then fold the events in at once so the next
        version number is right even before ``models`` is read back."""
        events = self.outcome_events(trigger, result, window)
        trigger.closed = True  # from here on, new triggers wait for the next training
        outs = [Out(MODELS.name, codec.dumps(e.model_dump(mode="json")), str(e.version).encode())
                for e in events]
        while True:
            try:
                assert self.producer is not None
                await publish(self.producer, outs)
                break
            except Exception:  # noqa: BLE001 - keep the finished training; retry the publish
                log.exception("publishing v%d failed; retrying", events[0].version)
                await asyncio.sleep(self.settings.retrain_publish_retry_s)
        for ev in events:
            self.on_model_event(ev)
        log.info("published %s for v%d (trigger %s)", "+".join(e.event for e in events),
                 events[0].version, trigger.label)

    # -- wiring -------------------------------------------------------------------------
    async def open_consumer(self) -> tuple[AIOKafkaConsumer, dict[TopicPartition, int]]:
        """Assign every partition; labeled rows start ``capacity`` records before the end."""
        consumer = make_consumer(self.settings, group_id=None)
        await consumer.start()
        for _ in range(50):  # fresh topics may take a moment to show up in metadata
            await consumer.topics()
            if all(consumer.partitions_for_topic(t) for t in TOPICS):
                break
            await asyncio.sleep(0.2)
        tps = [TopicPartition(t, p) for t in TOPICS for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(tps)
        begin, end = await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
        for tp in tps:
            start = begin[tp]
            if tp.topic == PREDICTIONS_LABELED.name:
                start = max(start, end[tp] - self.buffer.capacity)
            consumer.seek(tp, start)
        return consumer, end

    async def is_caught_up(self, consumer: AIOKafkaConsumer, end: dict[TopicPartition, int]) -> bool:
        for tp, offset in end.items():
            if await consumer.position(tp) < offset:
                return False
        return True

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        await ensure_topics(s.kafka_bootstrap)
        consumer, end = await self.open_consumer()
        self.producer = make_producer(s)
        await self.producer.start()
        log.info("retrain started: spec %s, min_labels %d, window %d, metric %s", self.spec.name,
                 self.spec.retrain.min_labels, self.spec.retrain.window, self.spec.retrain.primary_metric)
        try:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=s.retrain_poll_ms, max_records=s.retrain_batch)
                for records in batches.values():
                    for record in records:
                        self.apply(record)
                if not self.caught_up and await self.is_caught_up(consumer, end):
                    self.catch_up_done()
                if self.caught_up and (batches or self.state.in_flight is None):
                    self.decide()
        finally:
            if self.training is not None and not self.training.done():
                self.training.cancel()
            await consumer.stop()
            await self.producer.stop()


def create_app(settings: RetrainSettings) -> Retrain:
    return Retrain(settings)


def main() -> None:
    settings = RetrainSettings()
    setup_logging("retrain", settings.log_level)
    run_service(create_app(settings).run)
