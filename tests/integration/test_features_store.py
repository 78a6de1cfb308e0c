"""The Redis write of the features service, in-process against a real Redis.

Covers what the process tests cannot force: a redelivered batch changes nothing, a
zombie writer (stale in-process cache) racing the partition's new owner can neither
lose the owner's updates nor move the applied offsets back (the Lua compare-and-set),
and the bounded window cache (hits, evictions, reloads) gives the same results as
reading everything from Redis.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from redis.asyncio import Redis

from services.features.handlers import RawRecord, compute_features
from services.features.state import Cache
from services.features.store import FeatureStore, applied_offsets, apply_batch
from shared import codec, redis_keys
from shared.embedded import ServerProcess
from tests.unit.test_features import make_spec

SPEC = make_spec(lateness=50.0)
GROUP = "g"


def records(n: int, seed: int) -> tuple[list[dict[str, Any]], list[RawRecord]]:
    rng = random.Random(seed)
    events, recs = [], []
    for i in range(n):
        ev = {"schema_version": 1, "event_id": f"e{i}", "entity_id": f"c{i % 3}",
              "event_time": 1000.0 + i + rng.uniform(-20, 0), "amount": rng.uniform(0, 9), "cat": "a"}
        events.append(ev)
        recs.append(RawRecord(0, i, codec.dumps(ev)))
    return events, recs


async def stored(r: Redis, entity: str) -> dict[str, float]:
    raw = await r.hgetall(redis_keys.features(SPEC, entity))
    return {k.decode(): float(v) for k, v in raw.items() if not k.startswith(b"_")}


def expected(events: list[dict[str, Any]], entity: str) -> dict[str, float]:
    evs = [e for e in events if e["entity_id"] == entity]
    got = compute_features(evs, max(e["event_time"] for e in evs), SPEC)
    return {k: v for k, v in got.items() if v is not None}


async def test_redelivered_batch_changes_nothing(redis_server: ServerProcess) -> None:
    r = Redis.from_url(redis_server.url)
    try:
        events, recs = records(60, seed=1)
        first = await apply_batch(r, recs[:40], SPEC, GROUP)
        assert first.applied == 40 and first.redelivered == 0
        again = await apply_batch(r, recs, SPEC, GROUP)  # 0..39 redelivered, 40..59 new
        assert again.redelivered == 40 and again.applied == 20
        before = await r.hgetall(redis_keys.features(SPEC, "c0"))
        noop = await apply_batch(r, recs, SPEC, GROUP)
        assert noop.redelivered == 60 and not noop.buffers
        assert await r.hgetall(redis_keys.features(SPEC, "c0")) == before  # not even rewritten
        assert await applied_offsets(r, SPEC, GROUP) == {0: 59}
        for entity in ("c0", "c1", "c2"):
            assert await stored(r, entity) == expected(events, entity)
    finally:
        await r.aclose()


async def test_zombie_writer_cannot_lose_updates(redis_server: ServerProcess) -> None:
    """A zombie applied batch k-1 (its cache is warm), then the new owner applied k and k+1:
    the zombie's write of k must be refused (else it would overwrite the windows without
    k+1 and move the offsets back); it then re-reads Redis and skips k as redelivered."""
    owner, zombie_redis = Redis.from_url(redis_server.url), Redis.from_url(redis_server.url)
    try:
        events, recs = records(90, seed=2)
        zombie = FeatureStore(zombie_redis, SPEC, GROUP, Cache(100))
        await zombie.apply(recs[:30])
        assert len(zombie.cache) == 3 and zombie.cache.applied == {0: 29}
        await apply_batch(owner, recs[30:60], SPEC, GROUP)
        await apply_batch(owner, recs[60:], SPEC, GROUP)
        retried = await zombie.apply(recs[30:60])
        assert zombie.conflicts == 1
        assert retried.redelivered == 30 and not retried.buffers
        assert await applied_offsets(owner, SPEC, GROUP) == {0: 89}
        for entity in ("c0", "c1", "c2"):
            assert await stored(owner, entity) == expected(events, entity)
    finally:
        await owner.aclose()
        await zombie_redis.aclose()


async def test_bounded_cache_gives_the_results_of_redis(redis_server: ServerProcess) -> None:
    """A cache of 2 windows for 3 entities: hits, LRU evictions and reloads all exact; an
    entry older than the idle limit is reloaded (Redis may have expired the entity)."""
    r = Redis.from_url(redis_server.url)
    try:
        events, recs = records(150, seed=4)
        store = FeatureStore(r, SPEC, "cached", Cache(2))
        for i in range(0, 150, 7):
            await store.apply(recs[i:i + 7])
            assert len(store.cache) <= 2
        assert store.cache.hits > 0 and store.cache.misses > 3  # evicted entries were reloaded
        for entity in ("c0", "c1", "c2"):
            assert await stored(r, entity) == expected(events, entity)
        await r.flushdb()
        idle = FeatureStore(r, SPEC, "idle", Cache(10, max_idle_s=0.0))
        for i in range(0, 150, 10):
            await idle.apply(recs[i:i + 10])
        assert idle.cache.hits == 0  # every entry too old: always read from Redis
        for entity in ("c0", "c1", "c2"):
            assert await stored(r, entity) == expected(events, entity)
        stored_window = await r.hgetall(redis_keys.window_events(SPEC, "c0"))
        assert {k.decode() for k in stored_window} == {e["event_id"] for e in idle.cache.windows["c0"].events}
        await r.flushdb()
        by_events = FeatureStore(r, SPEC, "by-events", Cache(100, max_events=60))  # ~50 events per entity
        for i in range(0, 150, 7):
            await by_events.apply(recs[i:i + 7])
            assert by_events.cache.events <= 60 or len(by_events.cache) == 1
        assert by_events.cache.misses > 3  # evicted for their events, reloaded exactly
        for entity in ("c0", "c1", "c2"):
            assert await stored(r, entity) == expected(events, entity)
    finally:
        await r.aclose()


async def test_concurrent_writers_converge(redis_server: ServerProcess) -> None:
    clients = [Redis.from_url(redis_server.url) for _ in range(3)]
    try:
        events, recs = records(200, seed=3)
        batches = [recs[i:i + 10] for i in range(0, 200, 10)]

        async def run(client: Redis, todo: list[list[RawRecord]]) -> None:
            store = FeatureStore(client, SPEC, GROUP, Cache(100))  # each writer with its own cache
            for batch in todo:
                await store.apply(batch)

        await asyncio.gather(run(clients[0], batches), run(clients[1], batches[:12]), run(clients[2], batches[:6]))
        assert await applied_offsets(clients[0], SPEC, GROUP) == {0: 199}
        for entity in ("c0", "c1", "c2"):
            assert await stored(clients[0], entity) == expected(events, entity)
    finally:
        for c in clients:
            await c.aclose()


async def test_the_write_time_is_redis_clock_when_the_script_runs(redis_server: ServerProcess) -> None:
    """The client's clock (here a fake, 1.0) is not the write time: a script may wait in
    the connection's queue behind others."""
    r = Redis.from_url(redis_server.url)
    try:
        _, recs = records(6, seed=3)
        await apply_batch(r, recs, SPEC, GROUP, clock=lambda: 1.0)
        seconds, micros = await r.time()
        written = float(await r.hget(redis_keys.features(SPEC, "c0"), redis_keys.WRITTEN_AT_FIELD))
        assert seconds + micros / 1e6 - 5 < written <= seconds + micros / 1e6
    finally:
        await r.aclose()
