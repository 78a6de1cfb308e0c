"""Redis side of the streaming engine: (usually no) read, then one Lua script per batch.

Exactness under redelivery: the partition offsets applied so far live in the same Redis
as the windows and features and are written by the same script (atomic), so a record is
either fully applied (and its offset recorded) or not at all; a redelivered record
(offset <= applied offset) is skipped.

Concurrency without WATCH: the script is a compare-and-set. It first checks that the
applied offset of every partition in the batch is still the one this worker planned
from, and writes nothing if not (a zombie instance during a rebalance, or a cache that
went stale): the worker drops its cache, re-reads Redis and recomputes the batch. Since
offsets only grow, "same offset" means "nobody wrote this partition since", so the
in-process window cache (:mod:`services.features.state`) is never used stale.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from services.features.handlers import (
    BatchPlan,
    LateRecord,
    RawRecord,
    decode_batch,
    feature_fields,
    plan_windows,
)
from services.features.state import Cache, Window
from shared import redis_keys
from shared.spec import UseCaseSpec

log = logging.getLogger(__name__)
# Publishes late events (events.late) and returns once the broker acked them.
LateSink = Callable[[Sequence[LateRecord]], Awaitable[None]]

# KEYS[1]: applied offsets hash; KEYS[2i], KEYS[2i+1]: features and window hash of entity i.
# ARGV[1]: TTL (s); ARGV[2]: JSON {"o": [[partition, expected or "", new], ...],
#   "e": [[feature fields (flat), added events (flat id, json), removed ids, absent features], ...]}.
# The feature fields end with the write time (``feature_fields``); the script sets it to Redis'
# clock when it runs: a script may wait in the connection's queue behind earlier ones.
# Returns {1} when applied, {0, partition} when that partition's offset was not as expected.
APPLY_LUA = """
local ttl = ARGV[1]
local batch = cjson.decode(ARGV[2])
local t = redis.call('TIME')
local now = string.format('%d.%06d', t[1], t[2])
for _, o in ipairs(batch.o) do
  local cur = redis.call('HGET', KEYS[1], o[1])
  if (o[2] == '' and cur) or (o[2] ~= '' and cur ~= o[2]) then return {0, o[1]} end
end
for _, o in ipairs(batch.o) do redis.call('HSET', KEYS[1], o[1], o[3]) end
local function chunked(cmd, key, list)
  for i = 1, #list, 4000 do redis.call(cmd, key, unpack(list, i, math.min(#list, i + 3999))) end
end
for i, e in ipairs(batch.e) do
  local fkey, wkey = KEYS[2 * i], KEYS[2 * i + 1]
  e[1][#e[1]] = now
  chunked('HSET', fkey, e[1])
  if #e[4] > 0 then redis.call('HDEL', fkey, unpack(e[4])) end
  redis.call('EXPIRE', fkey, ttl)
  if #e[2] > 0 then chunked('HSET', wkey, e[2]) end
  if #e[3] > 0 then chunked('HDEL', wkey, e[3]) end
  redis.call('EXPIRE', wkey, ttl)
end
return {1}
"""


# Awaited before a Redis read while writes may be in flight: returns once every write that
# touches the given entities (None: any write) has landed.
Settle = Callable[[Collection[str] | None], Awaitable[None]]


@dataclass(frozen=True)
class Prepared:
    """A planned batch and the applied offsets its compare-and-set expects in Redis."""

    plan: BatchPlan
    expected: dict[int, int | None]


class Conflict(Exception):
    """Another writer moved a partition's applied offset: the batch must be replanned."""


async def applied_offsets(redis: Redis, spec: UseCaseSpec, group: str) -> dict[int, int]:
    """partition -> last applied offset (what tests and operators poll)."""
    raw = await redis.hgetall(redis_keys.applied_offsets(spec, group))
    return {int(k): int(v) for k, v in raw.items()}


class FeatureStore:
    """Applies batches exactly once, keeping recently used windows in ``cache``."""

    def __init__(self, redis: Redis, spec: UseCaseSpec, group: str, cache: Cache | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.redis, self.spec, self.group, self.clock = redis, spec, group, clock
        self.cache = cache if cache is not None else Cache(10_000, spec.features_config.entity_ttl / 2)
        self.script = redis.register_script(APPLY_LUA)
        self.offsets_key = redis_keys.applied_offsets(spec, group)
        self.conflicts = 0

    async def apply(self, records: Sequence[RawRecord], late_sink: LateSink | None = None) -> BatchPlan:
        """Apply one batch; on a conflict, drop the cache and replan from Redis."""
        while True:
            try:
                return await self._attempt(records, late_sink)
            except Conflict as exc:
                self.conflicts += 1
                log.info("partition %s was written concurrently; recomputing the batch", exc)
                self.cache.clear()
            except BaseException:
                self.cache.clear()  # windows may hold this batch's unwritten events
                raise

    async def _attempt(self, records: Sequence[RawRecord], late_sink: LateSink | None) -> BatchPlan:
        prepared = await self.prepare(records, late_sink)
        await self.write(prepared)
        return prepared.plan

    async def prepare(self, records: Sequence[RawRecord], late_sink: LateSink | None,
                      settle: Settle | None = None) -> Prepared:
        """Plan a batch on the cache as if every write before it succeeds: the cache is
        updated now (a failed write must be followed by ``cache.clear()``, as ``apply``
        does). ``settle`` is awaited before any Redis read: the caller's writes in flight
        of what is read must land first, or the read could miss them (see the applier)."""
        if not self.cache.known:
            if settle is not None:
                await settle(None)
            self.cache.set_applied(await applied_offsets(self.redis, self.spec, self.group))
        decoded = decode_batch(records, self.cache.applied, self.spec)
        windows = await self._windows(decoded.partitions, settle)
        plan = plan_windows(decoded, windows, self.spec)
        if plan.late_records and late_sink is not None:
            await late_sink(plan.late_records)  # acked before their offsets count as applied
        expected = {p: self.cache.applied.get(p) for p in plan.offsets}
        self.cache.applied.update(plan.offsets)
        now = time.monotonic()
        for entity, window in windows.items():
            if entity in plan.features:
                window.touched = now  # the script refreshes its TTL in Redis
            self.cache.put(entity, window)
        self.cache.trim()
        return Prepared(plan, expected)

    async def write(self, prepared: Prepared) -> None:
        """The batch's one script (nothing if it was all redelivery); Conflict if the
        applied offsets it expects are not Redis' any more."""
        if prepared.plan.offsets:
            keys, args = self.script_call(prepared)
            check_reply(await self.script(keys=keys, args=args))

    def script_call(self, prepared: Prepared) -> tuple[list[str], list[Any]]:
        """The keys and arguments of the script writing ``prepared`` (see ``APPLY_LUA``)."""
        plan, expected = prepared.plan, prepared.expected
        keys = [self.offsets_key]
        entities = []
        now = self.clock()
        for entity, values in plan.features.items():
            keys += [redis_keys.features(self.spec, entity), redis_keys.window_events(self.spec, entity)]
            fields = feature_fields(values, plan.at[entity], now)
            absent = [name for name, v in values.items() if v is None]  # a feature hash has no others
            added = [x for e in plan.added[entity] for x in (e["event_id"], orjson.dumps(e).decode())]
            entities.append([fields, added, plan.removed[entity], absent])
        offsets = [[str(p), _expected(expected.get(p)), str(o)] for p, o in plan.offsets.items()]
        ttl = max(1, math.ceil(self.spec.features_config.entity_ttl))
        return keys, [ttl, orjson.dumps({"o": offsets, "e": entities})]

    async def _windows(self, partitions: dict[str, int], settle: Settle | None = None) -> dict[str, Window]:
        """Cached windows, plus the misses read from Redis in one pipelined round trip."""
        windows: dict[str, Window] = {}
        misses = []
        for entity, partition in partitions.items():
            window = self.cache.get(entity, partition)
            if window is None:
                misses.append(entity)
            else:
                windows[entity] = window
        if misses:
            if settle is not None:
                await settle(misses)
            async with self.redis.pipeline(transaction=False) as pipe:
                for entity in misses:
                    pipe.hvals(redis_keys.window_events(self.spec, entity))
                stored = await pipe.execute()
            for entity, values in zip(misses, stored):
                windows[entity] = Window.of(partitions[entity], _parse_events(values))
        return windows

def check_reply(reply: Any) -> None:
    """The script's reply: Conflict if it wrote nothing (a partition's offset had moved)."""
    if int(reply[0]) != 1:
        raise Conflict(reply[1].decode() if isinstance(reply[1], bytes) else reply[1])


def _expected(offset: int | None) -> str:
    return "" if offset is None else str(offset)


def _parse_events(values: Sequence[bytes]) -> list[dict[str, Any]]:
    """Stored window events; an unreadable one is skipped (logged), never fatal."""
    out = []
    for raw in values:
        try:
            event = orjson.loads(raw)
        except orjson.JSONDecodeError:
            log.warning("unreadable window event skipped")
            continue
        if isinstance(event, dict) and "event_id" in event and "event_time" in event:
            out.append(event)
    return out


async def apply_batch(
    redis: Redis, records: Sequence[RawRecord], spec: UseCaseSpec, group: str,
    clock: Callable[[], float] = time.time, late_sink: LateSink | None = None,
) -> BatchPlan:
    """Apply one batch with no cache (reads everything from Redis): tests and tools."""
    return await FeatureStore(redis, spec, group, clock=clock).apply(records, late_sink)
