"""label_join (the label ledger): predictions + ground truth -> labeled predictions.

Consumes ``predictions`` and ``labels.valid`` (one consumer, group ``rivulet-label-join``).
Produces
* ``predictions.labeled`` (key prediction_id): LabeledPrediction, revision 1 for the first
  pair, n + 1 for each correction (a label with a different value). Exactly once per
  (prediction_id, revision), also across SIGKILL (see ``pending``).
* ``labels.missing``: LabelMissing, a prediction whose label did not arrive within
  ``spec.labels.maturity`` (at-least-once; dedupe by prediction_id).
* ``labels.unmatched``: UnmatchedLabel, a label for an unknown prediction (after its own
  grace, ``spec.labels.unmatched_grace``) or for an expired one (at-least-once).
Stores the join state in Redis (``rv:join:*``, see ``shared.redis_keys``): both sides and a
done marker per id (TTL), a sorted set of deadlines scanned every ``expiry_interval_s``,
and the pending outputs of the batch being published.

Per batch: reconcile pending outputs of newly owned input partitions -> store sides /
fetch the other side (atomic Lua) -> done markers + pending outputs (one MULTI) ->
publish + await acks -> clear pending -> commit (BatchLoop).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from redis.asyncio import Redis

from services.label_join import pending as pend
from services.label_join.handlers import (
    Plan,
    Step,
    awaits_label,
    expired_output,
    plan_emissions,
    to_step,
)
from services.label_join.join_state import JoinState
from services.label_join.settings import LabelJoinSettings
from shared import codec, redis_keys
from shared.contracts import LabeledPrediction, LabelMissing, UnmatchedLabel
from shared.errors import RejectedRecord
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
    LABELS_MISSING,
    LABELS_UNMATCHED,
    LABELS_VALID,
    PREDICTIONS,
    PREDICTIONS_LABELED,
)

log = logging.getLogger(__name__)


class LabelJoin(ConsumerRebalanceListener):
    """The batch handler (it publishes itself: pending markers go around the publish) and
    the expiry scan."""

    def __init__(self, settings: LabelJoinSettings, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer,
                 redis: Redis, reader: AIOKafkaConsumer) -> None:
        self.settings = settings
        self.consumer, self.producer, self.redis, self.reader = consumer, producer, redis, reader
        labels = settings.use_case.labels
        self.maturity_s = labels.maturity
        grace = labels.unmatched_grace if labels.unmatched_grace is not None else labels.maturity
        ttl = max(labels.maturity, grace) + settings.ttl_margin_s
        self.state = JoinState(redis, ttl, labels.maturity, grace)
        self.loop = BatchLoop(consumer, None, self.handle, name="label_join", max_records=settings.max_records)
        self.loaded: set[tuple[str, int]] = set()  # input partitions whose pending outputs are reconciled
        self.counts: dict[str, int] = {}
        self.logged_at = time.monotonic()

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.loaded -= {(tp.topic, tp.partition) for tp in revoked}

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("assigned %s", sorted((tp.topic, tp.partition) for tp in assigned))

    def steps(self, records: list[ConsumerRecord]) -> list[Step]:
        steps = []
        for r in records:
            try:
                step = to_step(r.topic, r.value, r.partition)
            except RejectedRecord as exc:
                self.count({"invalid": 1})
                log.warning("skipping invalid %s p%d@%d: %s", r.topic, r.partition, r.offset, exc.as_dict())
                continue
            if not awaits_label(step):
                self.count({"shadow_skipped": 1})
                continue
            steps.append(step)
        return steps

    async def handle(self, records: list[ConsumerRecord]) -> list[Out]:
        await self.reconcile({(r.topic, r.partition) for r in records} - self.loaded)
        steps = self.steps(records)
        now = time.time()
        plan = plan_emissions(steps, await self.state.store_and_fetch(steps, now), now)
        await self.publish_pairs(plan)
        await publish(self.producer, [_out(LABELS_UNMATCHED.name, u) for u in plan.unmatched])
        self.count(plan.counts)
        return []

    async def publish_pairs(self, plan: Plan) -> None:
        """Done markers + pending outputs -> publish -> clear pending (see ``pending``)."""
        if not plan.emissions:
            return
        parts = [pend.output_partition(e.output.prediction_id.encode()) for e in plan.emissions]
        lows = await pend.end_offsets(self.reader, set(parts))
        entries: dict[str, dict[str, bytes]] = {}
        for e, part in zip(plan.emissions, parts, strict=True):
            key = redis_keys.join_pending(*e.source)
            entries.setdefault(key, {})[pend.entry_field(e.output)] = pend.encode_entry(e.output, part, lows[part])
        await self.state.write_pending(plan.final_done(), entries)
        try:
            await self.send([(e.output, part) for e, part in zip(plan.emissions, parts, strict=True)])
            await self.state.clear_pending(entries)
        except Exception:
            self.loaded -= {e.source for e in plan.emissions}  # reconcile them before the retry
            raise

    async def send(self, outputs: Iterable[tuple[LabeledPrediction, int]]) -> None:
        futures = [await self.producer.send(PREDICTIONS_LABELED.name, codec.dumps(lp.model_dump(mode="json")),
                                            key=lp.prediction_id.encode(), partition=part) for lp, part in outputs]
        if futures:
            await asyncio.gather(*futures)

    async def reconcile(self, sources: set[tuple[str, int]]) -> None:
        """Publish the pending outputs a crash left behind that never reached the topic."""
        for topic, partition in sorted(sources):
            key = redis_keys.join_pending(topic, partition)
            entries = await self.state.read_pending(key)
            if entries:
                lows: dict[int, int] = {}
                for raw in entries.values():
                    _, part, low = pend.decode_entry(raw)
                    lows[part] = min(low, lows.get(part, low))
                missing = pend.to_publish(entries, await pend.published(self.reader, lows))
                await self.send(missing)
                await self.state.clear_pending({key: entries})
                self.count({"reconciled": len(entries), "republished": len(missing)})
                log.warning("%s/%d: %d pending output(s) after a crash, %d republished",
                            topic, partition, len(entries), len(missing))
            self.loaded.add((topic, partition))

    async def expire_once(self) -> int:
        """Claim due deadlines, publish label_missing / unmatched records, confirm.
        Returns how many deadlines were due (a full batch: more may be waiting)."""
        now = time.time()
        due, claimed = await self.state.claim_expired(now, self.settings.expiry_lease_s, self.settings.expiry_batch)
        if not claimed:
            return due
        outs = []
        for member, payload in claimed:
            rec = expired_output(member, payload, self.maturity_s, now)
            missing = isinstance(rec, LabelMissing)
            outs.append(_out(LABELS_MISSING.name if missing else LABELS_UNMATCHED.name, rec))
            self.count({"label_missing" if missing else "unmatched_unknown": 1})
        await publish(self.producer, outs)
        await self.state.confirm([m for m, _ in claimed])
        return due

    async def expire_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                if await self.expire_once() >= self.settings.expiry_batch:
                    continue  # more are due
            except Exception:
                log.exception("expiry scan failed; will retry")
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.settings.expiry_interval_s)
            except TimeoutError:
                pass

    def count(self, counts: dict[str, int]) -> None:
        for key, n in counts.items():
            self.counts[key] = self.counts.get(key, 0) + n
        if time.monotonic() - self.logged_at >= self.settings.stats_interval_s:
            self.logged_at = time.monotonic()
            log.info("totals %s", self.counts)


def _out(topic: str, rec: LabelMissing | UnmatchedLabel) -> Out:
    return Out(topic, codec.dumps(rec.model_dump(mode="json")), rec.prediction_id.encode())


def create_app(settings: LabelJoinSettings) -> LabelJoin:
    consumer = make_consumer(
        settings, group_id=settings.group_id,
        session_timeout_ms=settings.session_timeout_ms, heartbeat_interval_ms=settings.session_timeout_ms // 3,
    )
    reader = make_consumer(settings, group_id=None)
    app = LabelJoin(settings, consumer, make_producer(settings), Redis.from_url(settings.redis_url), reader)
    consumer.subscribe([PREDICTIONS.name, LABELS_VALID.name], listener=app)
    return app


async def serve(settings: LabelJoinSettings, stop: asyncio.Event) -> None:
    await ensure_topics(settings.kafka_bootstrap)
    app = create_app(settings)
    await app.producer.start()
    await app.reader.start()
    await app.consumer.start()
    try:
        await asyncio.gather(app.loop.run(stop), app.expire_loop(stop))
    finally:
        await app.consumer.stop()
        await app.reader.stop()
        await app.producer.stop()
        await app.redis.aclose()
        log.info("stopped; totals %s", app.counts)


def main() -> None:
    settings = LabelJoinSettings()
    setup_logging("label_join", settings.log_level)
    run_service(lambda stop: serve(settings, stop))
