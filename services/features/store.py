"""Redis side of the streaming engine: one read and one MULTI/EXEC per batch.

Exactness under redelivery: the partition offsets applied so far live in the same
Redis as the buffers and features and are written in the same transaction, so a
record is either fully applied (and its offset recorded) or not at all. A redelivered
record (offset <= applied offset) is skipped. The offsets hash is WATCHed while the batch
is read and computed, so a concurrent writer (e.g. a zombie instance during a
rebalance) makes our EXEC fail and the batch is recomputed from fresh state.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from services.features.handlers import (
    BatchPlan,
    LateRecord,
    RawRecord,
    decode_batch,
    feature_hash,
    parse_buffer,
    plan_batch,
)
from shared import codec, redis_keys
from shared.spec import UseCaseSpec

log = logging.getLogger(__name__)
# Publishes late events (events.late) and returns once the broker acked them.
LateSink = Callable[[Sequence[LateRecord]], Awaitable[None]]


async def applied_offsets(redis: Redis, spec: UseCaseSpec, group: str) -> dict[int, int]:
    """partition -> last applied offset (what tests and operators poll)."""
    raw = await redis.hgetall(redis_keys.applied_offsets(spec, group))
    return {int(k): int(v) for k, v in raw.items()}


async def apply_batch(
    redis: Redis, records: Sequence[RawRecord], spec: UseCaseSpec, group: str,
    clock: Callable[[], float] = time.time, late_sink: LateSink | None = None,
) -> BatchPlan:
    """Apply one batch exactly once; retries while another writer races us."""
    while True:
        try:
            return await _attempt(redis, records, spec, group, clock, late_sink)
        except WatchError:
            log.info("applied offsets changed concurrently; recomputing the batch")


async def _attempt(
    redis: Redis, records: Sequence[RawRecord], spec: UseCaseSpec, group: str,
    clock: Callable[[], float], late_sink: LateSink | None,
) -> BatchPlan:
    async with redis.pipeline(transaction=True) as tx:
        plan = await read_and_plan(tx, records, spec, group)
        if plan.late_records and late_sink is not None:
            await late_sink(plan.late_records)  # acked before their offsets count as applied
        if plan.offsets:  # else everything was a redelivery: nothing to write
            await commit_plan(tx, plan, spec, group, clock())
    return plan


async def read_and_plan(tx: Pipeline, records: Sequence[RawRecord], spec: UseCaseSpec, group: str) -> BatchPlan:
    """WATCH the offsets, read them and the batch's buffers (one MGET), compute the plan."""
    offsets_key = redis_keys.applied_offsets(spec, group)
    await tx.watch(offsets_key)
    applied = {int(k): int(v) for k, v in (await tx.hgetall(offsets_key)).items()}
    decoded = decode_batch(records, applied, spec)
    entities = sorted(decoded.events)
    stored = await tx.mget([redis_keys.window_buffer(spec, e) for e in entities]) if entities else []
    return plan_batch(decoded, {e: parse_buffer(raw) for e, raw in zip(entities, stored)}, spec)


async def commit_plan(tx: Pipeline, plan: BatchPlan, spec: UseCaseSpec, group: str, now: float) -> None:
    """One MULTI/EXEC; raises WatchError if anyone committed since :func:`read_and_plan`."""
    tx.multi()
    _queue_writes(tx, plan, spec, redis_keys.applied_offsets(spec, group), now)
    await tx.execute()


def _queue_writes(tx: Pipeline, plan: BatchPlan, spec: UseCaseSpec, offsets_key: str, now: float) -> None:
    """Buffers, feature hashes (replaced whole: absent field = no value) and offsets."""
    ttl = max(1, math.ceil(spec.features_config.entity_ttl))
    for entity, buffer in plan.buffers.items():
        tx.set(redis_keys.window_buffer(spec, entity), codec.dumps(buffer), ex=ttl)
        key = redis_keys.features(spec, entity)
        tx.delete(key)
        tx.hset(key, mapping=feature_hash(plan.features[entity], plan.at[entity], now))
        tx.expire(key, ttl)
    tx.hset(offsets_key, mapping={str(p): str(o) for p, o in plan.offsets.items()})
