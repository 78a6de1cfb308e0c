"""Retrain controller.

Consumes ``models``, ``predictions.labeled``, ``drift.alerts``, ``retrain.requests``,
``metrics`` and ``retrain.decisions``, all WITHOUT a consumer group, from the beginning
(``predictions.labeled`` only its last ``buffer_factor x retrain.window`` records per
partition). Until it has caught up with the end offsets seen at start it only rebuilds
state: champion, versions, which trigger ids were already answered (the ``trigger`` of
every model event), the budget used (``train`` decisions of the last hour), the labeled
rows. Then it decides: bootstrap while the baseline serves, drift incidents (per the spec's
drift rules), the performance floor, the schedule, new labels, retrain requests. One
training at a time (``training.py``), in a child process (spare children are started
ahead, so a trigger does not wait for an interpreter start); later triggers merge into the
pending/running one when its window answers them, and a drift incident preempts a running
routine refresh.

Produces ``retrain.decisions`` (every decision, skip, deferral and training step) and
``models`` events (``registered`` + ``promoted`` -- strategy ``shadow`` when
``spec.rollout.enabled`` -- or ``rejected`` with every reason), each with its lineage.
Stores the registry under ``<data_dir>/registry`` (a view of ``models``, see
``registry.py``). Why no group and no commits: the state is small and derivable from the
topics, and a trigger counts as handled exactly when a model event names it, so a restart
neither loses a pending trigger nor answers one twice. Run exactly one instance.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from pydantic import ValidationError

from services.retrain import decisions as rd
from services.retrain import guards, policy, registry, rows, training
from services.retrain import handlers as h
from services.retrain.settings import RetrainSettings, code_version
from shared import codec
from shared.contracts import (
    DriftAlert,
    LabeledPrediction,
    MetricsRecord,
    ModelEvent,
    RetrainDecision,
    RetrainRequest,
)
from shared.kafka import Out, ensure_topics, make_consumer, make_producer, publish
from shared.runtime import run_service, setup_logging
from shared.topics import (
    DRIFT_ALERTS,
    METRICS,
    MODELS,
    PREDICTIONS_LABELED,
    RETRAIN_DECISIONS,
    RETRAIN_REQUESTS,
)

log = logging.getLogger(__name__)
TOPICS = (MODELS.name, PREDICTIONS_LABELED.name, DRIFT_ALERTS.name, RETRAIN_REQUESTS.name, METRICS.name,
          RETRAIN_DECISIONS.name)
CONTRACTS: dict[str, Any] = {
    MODELS.name: ModelEvent, PREDICTIONS_LABELED.name: LabeledPrediction, DRIFT_ALERTS.name: DriftAlert,
    RETRAIN_REQUESTS.name: RetrainRequest, METRICS.name: MetricsRecord, RETRAIN_DECISIONS.name: RetrainDecision,
}


class Retrain:
    def __init__(self, settings: RetrainSettings) -> None:
        self.settings = settings
        self.spec = settings.use_case
        self.state = h.ControllerState()
        self.buffer = rows.LabeledBuffer(settings.retrain_buffer_factor * self.spec.retrain.window)
        self.caught_up = False
        self.backlog: list[DriftAlert | RetrainRequest] = []
        self.metrics: MetricsRecord | None = None  # the newest measured overall record not yet judged
        self.training: asyncio.Task[None] | None = None
        self.spares = training.Spares(settings.spec, settings.retrain_hash_seed, settings.retrain_warm_workers)
        self.stopping = False
        self.producer: AIOKafkaProducer | None = None
        self.outbox: list[RetrainDecision] = []
        self.seen: set[str] = set()  # decision ids already on retrain.decisions
        self.code_version = ""
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
            row = rows.to_row(obj, record.partition, record.offset)
            if row is not None:
                self.buffer.add(row)
        elif isinstance(obj, RetrainDecision):
            if obj.decision_id not in self.seen:
                self.seen.add(obj.decision_id)
                if obj.action == "train":
                    self.state.train_starts.append(obj.decided_at)
        elif isinstance(obj, MetricsRecord):
            if obj.kind == "performance" and obj.slice is None and not obj.estimated:
                self.metrics = obj
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
        now = time.time()
        if isinstance(obj, DriftAlert):
            decision, source = h.on_alert(self.state, obj, self.spec, now), f"alert:{obj.alert_id}"
        else:
            decision, source = h.on_request(self.state, obj, self.spec, now), f"request:{obj.request_id}"
        self.emit(rd.from_decision(decision, source, self.state.champion, now))
        if decision.action == "pending" and isinstance(obj, DriftAlert):
            self.preempt_refresh(now)

    def preempt_refresh(self, now: float) -> None:
        """An incident waits for no routine refresh: a running training that only answers
        periodic triggers (new labels, schedule, performance) and has not started
        publishing is cancelled; those triggers fire again later (reported as skipped)."""
        running = self.state.in_flight
        if running is None or running.closed or self.training is None or self.training.done() \
                or not all(h.kind_of(i) in policy.REFRESH_KINDS for i in running.ids):
            return
        self.training.cancel()
        for tid in running.ids:
            self.emit(rd.from_decision(h.Decision("skip", f"{tid}: preempted by a drift incident; fires again "
                                                  "later", "preempted", tid), None, self.state.champion, now))

    def emit(self, rec: RetrainDecision) -> None:
        """Queue a decision record once (the same decision made again has the same id)."""
        if rec.decision_id in self.seen:
            return
        self.seen.add(rec.decision_id)
        self.outbox.append(rec)
        log.info("decision %s%s %s: %s", rec.action, f" ({rec.code})" if rec.code else "", rec.trigger,
                 rec.message)

    async def flush(self) -> None:
        """Publish queued decisions; on failure they stay queued for the next flush."""
        if not self.outbox or self.producer is None:
            return
        batch, self.outbox = self.outbox, []
        outs = [Out(RETRAIN_DECISIONS.name, codec.dumps(d.model_dump(mode="json")), (d.trigger or d.action).encode())
                for d in batch]
        try:
            await publish(self.producer, outs)
        except Exception:
            log.exception("publishing %d decisions failed; will retry", len(batch))
            self.outbox = batch + self.outbox

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
        """Raise due triggers (bootstrap, performance, schedule, new labels), then start
        training when the pending trigger passes its guards."""
        now, st, spec = time.time(), self.state, self.spec
        while st.dropped:
            tid = st.dropped.pop(0)
            self.emit(rd.from_decision(h.Decision("skip", f"{tid}: the champion changed to v{st.champion} "
                                                  "before it trained", "champion_changed", tid), None, st.champion, now))
        found: list[h.Decision | None] = [h.on_bootstrap(st, spec, now)]
        if self.metrics is not None:
            found.append(guards.on_metrics(st, self.metrics, self.buffer, spec, now))
            self.metrics = None
        found += [guards.on_schedule(st, self.buffer, spec, now), guards.on_new_labels(st, self.buffer, spec, now)]
        for d in found:
            if d is not None:
                self.emit(rd.from_decision(d, None, st.champion, now))
        ready, code, why = guards.check_ready(st, self.buffer, spec, now)
        self.report(why)
        if not ready and code in ("too_few_labels", "budget", "rollout_in_progress") and st.pending is not None:
            self.emit(rd.deferred(st.pending, code, why, now))
        if ready:
            trigger = h.start_training(st, now)
            self.training = asyncio.create_task(self.train(trigger, code == "ready_fallback"))

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
    async def train(self, trigger: h.Trigger, waited_out: bool) -> None:
        """The training task; whatever happens, the controller is free again afterwards."""
        try:
            await training.train_and_publish(self, trigger, waited_out)
        except asyncio.CancelledError:
            if trigger.closed or self.stopping:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            log.info("training for %s preempted", trigger.label)  # see preempt_refresh
        except Exception:
            log.exception("retrain for %s failed before publishing", trigger.label)
        finally:
            self.state.in_flight = None
        await self.spares.fill()  # (if the first training had none) -- not when cancelled (shutdown)

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
            elif tp.topic == METRICS.name:  # only the newest snapshots matter
                start = max(start, end[tp] - 1000)
            consumer.seek(tp, start)
        return consumer, end

    async def is_caught_up(self, consumer: AIOKafkaConsumer, end: dict[TopicPartition, int]) -> bool:
        for tp, offset in end.items():
            if await consumer.position(tp) < offset:
                return False
        return True

    async def run(self, stop: asyncio.Event) -> None:
        s, r = self.settings, self.spec.retrain
        await ensure_topics(s.kafka_bootstrap)
        self.code_version = code_version(s)
        consumer, end = await self.open_consumer()
        self.producer = make_producer(s)
        await self.producer.start()
        await self.spares.fill()
        log.info("retrain started: spec %s, min_labels %d, window %d, metric %s, budget %d/h, rollout %s, code %s",
                 self.spec.name, r.min_labels, r.window, r.primary_metric, r.budget_per_hour,
                 "shadow first" if self.spec.rollout.enabled else "off", self.code_version)
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
                await self.flush()
        finally:
            self.stopping = True
            if self.training is not None and not self.training.done():
                self.training.cancel()
            await self.spares.discard_all()
            await self.flush()
            await consumer.stop()
            await self.producer.stop()


def create_app(settings: RetrainSettings) -> Retrain:
    return Retrain(settings)


def main() -> None:
    settings = RetrainSettings()
    setup_logging("retrain", settings.log_level)
    run_service(create_app(settings).run)
