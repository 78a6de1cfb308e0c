"""The applier's pipelined path (plan chunk k+1 while chunk k's script runs), in-process
against a real Redis: results stay exact, chunks are acked in order once written, a stop
request writes nothing more, and a writer racing it (Conflicts mid-pipeline) is survived
by falling back to one chunk at a time, still exact."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from redis.asyncio import Redis

from services.features.applier import Applier
from services.features.handlers import RawRecord
from services.features.settings import FeaturesSettings
from services.features.state import Cache
from services.features.store import FeatureStore, applied_offsets
from shared.embedded import ServerProcess
from tests.integration.test_features_store import GROUP, SPEC, expected, records, stored


@asynccontextmanager
async def applier_and_redis(redis_url: str) -> AsyncIterator[tuple[Applier, Redis]]:
    """An applier (on the test spec) and a Redis client of its own for the checks."""
    settings = FeaturesSettings(redis_url=redis_url, group_id=GROUP, retry_backoff_s=0.01)
    settings.__dict__["use_case"] = SPEC  # the test spec instead of the file's
    applier, r = Applier(settings), Redis.from_url(redis_url)
    try:
        yield applier, r
    finally:
        await applier.stop()
        await r.aclose()


def chunked(recs: list[RawRecord], size: int) -> list[list[RawRecord]]:
    return [recs[i:i + size] for i in range(0, len(recs), size)]


async def assert_exact_up_to(r: Redis, events: list[dict[str, Any]], chunk: Sequence[RawRecord]) -> None:
    """Every entity of ``chunk`` holds the batch engine's features of the events so far
    (windows span ~30 events, chunks 20-25: a lost or doubled chunk shows)."""
    so_far = events[:chunk[-1].offset + 1]
    for entity in {e["entity_id"] for e in events[chunk[0].offset:chunk[-1].offset + 1]}:
        assert await stored(r, entity) == expected(so_far, entity)


async def test_pipelined_chunks_are_exact_and_acked_in_order(redis_server: ServerProcess) -> None:
    async with applier_and_redis(redis_server.url) as (applier, r):
        events, recs = records(300, seed=5)
        chunks = chunked(recs, 25)
        acked: list[int] = []

        async def done(chunk: Sequence[RawRecord]) -> bool:
            assert (await applied_offsets(r, SPEC, GROUP))[0] == chunk[-1].offset  # written, next not yet
            await assert_exact_up_to(r, events, chunk)
            acked.append(chunk[-1].offset)
            return True

        await applier.apply_chunks(chunks, done)
        assert acked == [c[-1].offset for c in chunks]
        assert await applied_offsets(r, SPEC, GROUP) == {0: 299}
        for entity in ("c0", "c1", "c2"):
            assert await stored(r, entity) == expected(events, entity)


async def test_stop_writes_nothing_after_the_refused_chunk(redis_server: ServerProcess) -> None:
    async with applier_and_redis(redis_server.url) as (applier, r):
        _, recs = records(100, seed=6)
        chunks = chunked(recs, 10)

        async def done(chunk: Sequence[RawRecord]) -> bool:
            return chunk[-1].offset < 39  # refuses the 4th chunk (offsets 30..39)

        await applier.apply_chunks(chunks, done)
        assert await applied_offsets(r, SPEC, GROUP) == {0: 39}  # the 5th was planned, never written
        assert len(applier.cache) == 0  # its optimistic plan was dropped


async def test_racing_writer_conflicts_fall_back_and_stay_exact(redis_server: ServerProcess) -> None:
    async with applier_and_redis(redis_server.url) as (applier, r):
        events, recs = records(400, seed=7)
        chunks = chunked(recs, 20)
        rival = FeatureStore(r, SPEC, GROUP, Cache(100))
        acked: list[int] = []

        async def done(chunk: Sequence[RawRecord]) -> bool:
            await assert_exact_up_to(r, events, chunk)
            acked.append(chunk[-1].offset)
            k = next(i for i, c in enumerate(chunks) if c[-1].offset == chunk[-1].offset)
            if k % 4 == 0 and k + 1 < len(chunks):  # the partition's next owner applies the next chunk first
                await rival.apply(chunks[k + 1])
            return True

        await applier.apply_chunks(chunks, done)
        assert applier.fallbacks == 1  # the first Conflict; then one chunk at a time
        assert acked == [c[-1].offset for c in chunks]  # every chunk acked once, in order
        assert await applied_offsets(r, SPEC, GROUP) == {0: 399}
        for entity in ("c0", "c1", "c2"):
            assert await stored(r, entity) == expected(events, entity)
