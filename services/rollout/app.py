"""Rollout controller: shadow -> canary -> full, or rollback, automatically.

Consumes ``models`` from the beginning (no group) and folds it with serving's own routing
rules; while a challenger is in a stage it also reads, from the stage's start time
(``offsets_for_times``, no group), ``predictions`` (shadow stage: the challenger's
shadow-scored requests, ``<id>.shadow``) and ``predictions.labeled`` (labeled champion
predictions, paired with the shadow scores of the same requests; in canary, each side's
labeled predictions). Produces ``models`` events with ``who="rollout"`` and the numbers in
``reason`` and ``evidence``: ``promoted`` strategy ``canary`` (share ``spec.rollout.canary_share``)
or ``full`` re-announcing the challenger's signed artifact, or ``rolled_back`` to the
champion with ``withdrawn`` = the challenger. Stores nothing.

Why no group and no stored state: everything is derivable from the topics. A step counts as
done exactly when its event is on ``models``, so a restart rebuilds the stage from ``models``,
re-reads the stage's inputs from its start and neither repeats nor loses a step (after
publishing, decisions wait until the event is read back). Run exactly one instance.
With ``spec.rollout.enabled`` false the controller idles.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from services.rollout import handlers as h
from services.rollout.evidence import StageEvidence
from services.rollout.settings import RolloutSettings
from shared import codec
from shared.contracts import (
    LabeledPrediction,
    ModelEvent,
    PredictionRecord,
    parse_record,
)
from shared.errors import RejectedRecord
from shared.kafka import ensure_topics, make_consumer, make_producer
from shared.runtime import run_service, setup_logging
from shared.topics import MODELS, PREDICTIONS, PREDICTIONS_LABELED

log = logging.getLogger(__name__)
INPUTS = (PREDICTIONS.name, PREDICTIONS_LABELED.name)
AWAIT_READBACK_S = 30.0  # give up waiting for our own event to come back (then decide again)


class Rollout:
    def __init__(self, settings: RolloutSettings) -> None:
        self.settings = settings
        self.spec = settings.use_case
        self.fold = h.ModelsFold()
        self.stage: h.Stage | None = None  # the stage ``evidence`` belongs to
        self.evidence: StageEvidence | None = None
        self.caught_up = False
        self.replay_end: dict[TopicPartition, int] | None = None  # stage inputs still replaying
        self.awaiting: tuple[int, float] | None = None  # (models offset, since) of our last step
        self.steps: list[ModelEvent] = []  # published by this process (for logs/tests)
        self._logged: tuple[str, float] = ("", 0.0)

    # -- state from records -------------------------------------------------------------
    def apply_models(self, records: list[ConsumerRecord]) -> None:
        for r in records:
            try:
                event = parse_record(ModelEvent, r.value)
            except RejectedRecord as exc:
                log.warning("models@%d: not a ModelEvent, skipped: %s", r.offset, exc)
                continue
            self.fold.apply(event, r.offset)
            if self.awaiting is not None and r.offset >= self.awaiting[0]:
                self.awaiting = None

    def feed(self, records: list[ConsumerRecord]) -> None:
        ev = self.evidence
        if ev is None:
            return
        for r in records:
            value = r.value or b""
            try:
                if r.topic == PREDICTIONS.name:
                    if b"shadow" in value:  # cheap pre-filter: only shadow records count here
                        ev.add_prediction(parse_record(PredictionRecord, value))
                else:
                    ev.add_labeled(parse_record(LabeledPrediction, value))
            except RejectedRecord as exc:
                log.warning("%s p%d@%d skipped: %s", r.topic, r.partition, r.offset, exc)

    # -- stage inputs -------------------------------------------------------------------
    async def sync_stage(self, inputs: AIOKafkaConsumer) -> None:
        """A new stage (or none): fresh evidence, inputs re-read from the stage start."""
        stage = self.fold.stage
        if stage is self.stage:
            return
        self.stage, self.replay_end = stage, None
        inputs.pause(*inputs.assignment())
        if stage is None:
            self.evidence = None
            log.info("no rollout under way (champion v%d)", self.fold.route.champion)
            return
        self.evidence = StageEvidence(stage.strategy, stage.version, stage.champion, stage.started_at)
        topics = INPUTS if stage.strategy == "shadow" else (PREDICTIONS_LABELED.name,)
        tps = [tp for tp in inputs.assignment() if tp.topic in topics]
        await self._seek_to_time(inputs, tps, stage.started_at - self.settings.rollout_seek_margin_s)
        self.replay_end = await inputs.end_offsets(tps)
        inputs.resume(*tps)
        log.info("v%d %s (champion v%d) since %.3f: reading %s", stage.version, stage.strategy,
                 stage.champion, stage.started_at, ", ".join(topics))

    @staticmethod
    async def _seek_to_time(inputs: AIOKafkaConsumer, tps: list[TopicPartition], at: float) -> None:
        """First offset at/after ``at``; a partition with nothing newer starts at its end.
        (Tansu answers "none" with timestamp -1 rather than a null entry.)"""
        try:
            found = await inputs.offsets_for_times({tp: max(0, int(at * 1000)) for tp in tps})
        except Exception:
            log.warning("offsets_for_times failed; reading the stage inputs from the beginning", exc_info=True)
            await inputs.seek_to_beginning(*tps)
            return
        ends = await inputs.end_offsets(tps)
        for tp in tps:
            hit = found.get(tp)
            inputs.seek(tp, hit.offset if hit is not None and hit.timestamp >= 0 else ends[tp])

    async def replaying(self, inputs: AIOKafkaConsumer) -> bool:
        if self.replay_end is None:
            return False
        for tp, end in self.replay_end.items():
            if await inputs.position(tp) < end:
                return True
        self.replay_end = None
        return False

    # -- decisions ----------------------------------------------------------------------
    async def decide(self, producer: AIOKafkaProducer, inputs: AIOKafkaConsumer) -> None:
        """Evaluate the stage; publish its next step. Not while our last step is unread or
        the stage's inputs are still being replayed (a verdict needs the whole evidence)."""
        now = time.time()
        if self.awaiting is not None and now - self.awaiting[1] < AWAIT_READBACK_S:
            return
        self.awaiting = None
        stage, ev = self.stage, self.evidence
        if stage is None or ev is None or await self.replaying(inputs):
            return
        rollout = self.spec.rollout
        decided = h.verdict(stage, ev, rollout, self.spec.retrain.primary_metric, now)
        if decided.action == "wait":
            self.progress(decided.reason)
            return
        event = h.step_event(stage, decided, rollout, now)
        try:
            meta = await producer.send_and_wait(MODELS.name, codec.dumps(event.model_dump(mode="json")),
                                                key=str(event.version).encode())
        except Exception:
            log.exception("publishing the %s step of v%d failed; will retry", decided.action, stage.version)
            await asyncio.sleep(self.settings.rollout_publish_retry_s)
            return
        self.awaiting = (meta.offset, now)
        self.steps.append(event)
        log.info("%s: %s", decided.action, decided.reason)

    def progress(self, reason: str) -> None:
        now = time.monotonic()
        if reason != self._logged[0] and now - self._logged[1] >= self.settings.rollout_progress_log_s:
            self._logged = (reason, now)
            log.info("waiting: %s", reason)

    # -- wiring -------------------------------------------------------------------------
    async def open(self) -> tuple[AIOKafkaConsumer, AIOKafkaConsumer, dict[TopicPartition, int]]:
        models = make_consumer(self.settings, group_id=None)
        inputs = make_consumer(self.settings, group_id=None)
        await models.start()
        await inputs.start()
        for _ in range(50):  # fresh topics may take a moment to show up in metadata
            await models.topics()
            await inputs.topics()
            if models.partitions_for_topic(MODELS.name) and all(inputs.partitions_for_topic(t) for t in INPUTS):
                break
            await asyncio.sleep(0.2)
        mtps = [TopicPartition(MODELS.name, p) for p in sorted(models.partitions_for_topic(MODELS.name) or ())]
        models.assign(mtps)
        await models.seek_to_beginning(*mtps)
        inputs.assign([TopicPartition(t, p) for t in INPUTS for p in sorted(inputs.partitions_for_topic(t) or ())])
        inputs.pause(*inputs.assignment())
        return models, inputs, await models.end_offsets(mtps)

    async def run(self, stop: asyncio.Event) -> None:
        r = self.spec.rollout
        if not r.enabled or self.spec.model.task != "binary":
            log.info("rollout %s in spec %s: idle", "disabled" if not r.enabled else
                     f"supports binary tasks only (task {self.spec.model.task})", self.spec.name)
            await stop.wait()
            return
        await ensure_topics(self.settings.kafka_bootstrap)
        models, inputs, end = await self.open()
        producer = make_producer(self.settings)
        await producer.start()
        log.info("rollout started: shadow %d requests / %d labels, canary share %.2f, %d labels, "
                 "tolerance %s on %s, stage timeout %.0f s (%s)", r.shadow_predictions, r.shadow_min_labels,
                 r.canary_share, r.canary_min_labels, r.tolerance, self.spec.retrain.primary_metric,
                 r.stage_timeout, r.on_timeout)
        try:
            await self.loop(stop, models, inputs, producer, end)
        finally:
            await models.stop()
            await inputs.stop()
            await producer.stop()

    async def loop(self, stop: asyncio.Event, models: AIOKafkaConsumer, inputs: AIOKafkaConsumer,
                   producer: AIOKafkaProducer, end: dict[TopicPartition, int]) -> None:
        s = self.settings
        while not stop.is_set():
            active = self.caught_up and self.stage is not None
            for records in (await models.getmany(timeout_ms=0 if active else s.rollout_poll_ms)).values():
                self.apply_models(records)
            if not self.caught_up:
                self.caught_up = all([await models.position(tp) >= off for tp, off in end.items()])
                if not self.caught_up:
                    continue
                log.info("caught up with models: champion v%d, stage %s", self.fold.route.champion, self.fold.stage)
            await self.sync_stage(inputs)
            if self.stage is not None:
                batches = await inputs.getmany(timeout_ms=s.rollout_poll_ms, max_records=s.rollout_batch)
                for records in batches.values():
                    self.feed(records)
            await self.decide(producer, inputs)


def create_app(settings: RolloutSettings) -> Rollout:
    return Rollout(settings)


def main() -> None:
    settings = RolloutSettings()
    setup_logging("rollout", settings.log_level)
    run_service(create_app(settings).run)
