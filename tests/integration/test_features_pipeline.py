"""The applier's pipelined path (plan chunk k+1 while up to ``write_depth`` earlier chunks'
scripts run), in-process against a real Redis, at depth 1 and 2: results stay exact, chunks
are acked in order once written, a stop request writes nothing beyond the writes already in
flight, and a writer racing it (Conflicts mid-pipeline) or lost connections are survived by
falling back to one chunk at a time, still exact."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
from redis.asyncio import Redis

from services.features.applier import Applier
from services.features.handlers import RawRecord
from services.features.pipe import ScriptPipe
from services.features.settings import FeaturesSettings
from services.features.state import Cache
from services.features.store import FeatureStore, applied_offsets
from shared.embedded import ServerProcess
from shared import codec
from tests.integration.test_features_store import GROUP, SPEC, expected, records, stored


@asynccontextmanager
async def applier_and_redis(redis_url: str, depth: int,
                            cached: int = 50_000) -> AsyncIterator[tuple[Applier, Redis]]:
    """An applier (on the test spec, caching ``cached`` windows) and a Redis client of its
    own for the checks."""
    settings = FeaturesSettings(redis_url=redis_url, group_id=GROUP, retry_backoff_s=0.01, write_depth=depth,
                                state_cache_entities=cached)
    settings.__dict__["use_case"] = SPEC  # the test spec instead of the file's
    applier, r = Applier(settings), Redis.from_url(redis_url)
    try:
        yield applier, r
    finally:
        await applier.stop()
        await r.aclose()


def chunked(recs: list[RawRecord], size: int) -> list[list[RawRecord]]:
    return [recs[i:i + size] for i in range(0, len(recs), size)]


async def assert_exact_snapshot(r: Redis, events: list[dict[str, Any]], chunk: Sequence[RawRecord]) -> None:
    """The entities of ``chunk`` hold the batch engine's features of every event Redis has
    applied, read between two equal readings of the applied offset (scripts are atomic; with
    writes in flight the next one may land during a reading: then read again)."""
    entities = {e["entity_id"] for e in events[chunk[0].offset:chunk[-1].offset + 1]}
    for _ in range(5):
        before = (await applied_offsets(r, SPEC, GROUP))[0]
        got = {entity: await stored(r, entity) for entity in entities}
        if (await applied_offsets(r, SPEC, GROUP))[0] == before:
            assert got == {entity: expected(events[:before + 1], entity) for entity in entities}
            return
    raise AssertionError("Redis moved on during every reading")


async def assert_all_exact(r: Redis, events: list[dict[str, Any]]) -> None:
    """Every entity of ``records`` holds the batch engine's features of ``events``."""
    for entity in ("c0", "c1", "c2"):
        assert await stored(r, entity) == expected(events, entity)


DEPTHS = pytest.mark.parametrize("depth", [1, 2])


@DEPTHS
async def test_pipelined_chunks_are_exact_and_acked_in_order(redis_server: ServerProcess, depth: int) -> None:
    async with applier_and_redis(redis_server.url, depth) as (applier, r):
        events, recs = records(300, seed=5)
        chunks = chunked(recs, 25)
        acked: list[int] = []

        async def done(chunk: Sequence[RawRecord]) -> bool:
            k = chunks.index(list(chunk))
            written = (await applied_offsets(r, SPEC, GROUP))[0]  # this chunk, at most depth - 1 more
            assert chunk[-1].offset <= written <= chunks[min(k + depth - 1, len(chunks) - 1)][-1].offset
            await assert_exact_snapshot(r, events, chunk)
            acked.append(chunk[-1].offset)
            return True

        await applier.apply_chunks(chunks, done)
        assert acked == [c[-1].offset for c in chunks]
        assert await applied_offsets(r, SPEC, GROUP) == {0: 299}
        await assert_all_exact(r, events)
        assert applier.fallbacks == 0


@DEPTHS
async def test_stop_writes_nothing_after_the_refused_chunk(redis_server: ServerProcess, depth: int) -> None:
    async with applier_and_redis(redis_server.url, depth) as (applier, r):
        events, recs = records(100, seed=6)
        chunks = chunked(recs, 10)

        async def done(chunk: Sequence[RawRecord]) -> bool:
            return chunk[-1].offset < 39  # refuses the 4th chunk (offsets 30..39)

        await applier.apply_chunks(chunks, done)
        # Depth 1: the 5th was planned, never written; depth 2: it was in flight, the 6th never written.
        last = 39 + 10 * (depth - 1)
        assert await applied_offsets(r, SPEC, GROUP) == {0: last}
        assert len(applier.cache) == 0  # its optimistic plan was dropped
        await assert_all_exact(r, events[:last + 1])  # what was written is exact


@DEPTHS
async def test_racing_writer_conflicts_fall_back_and_stay_exact(redis_server: ServerProcess, depth: int) -> None:
    async with applier_and_redis(redis_server.url, depth) as (applier, r):
        events, recs = records(400, seed=7)
        chunks = chunked(recs, 20)
        rival = FeatureStore(r, SPEC, GROUP, Cache(100))
        acked: list[int] = []

        async def done(chunk: Sequence[RawRecord]) -> bool:
            acked.append(chunk[-1].offset)
            k = chunks.index(list(chunk))
            if k % 4 == 0:  # the partition's next owner applies the chunk after Redis' applied offset
                applied = (await applied_offsets(r, SPEC, GROUP))[0]
                following = [c for c in chunks if c[0].offset == applied + 1]
                if following:
                    await rival.apply(following[0])
            return True

        await applier.apply_chunks(chunks, done)
        # Every intervention makes one of the two writers conflict: at depth 1 ours, at once.
        assert applier.fallbacks == 1 if depth == 1 else applier.fallbacks + rival.conflicts >= 1
        assert acked == [c[-1].offset for c in chunks]  # every chunk acked once, in order
        assert await applied_offsets(r, SPEC, GROUP) == {0: 399}
        await assert_all_exact(r, events)


@DEPTHS
async def test_lost_connections_mid_pipeline_fall_back_and_stay_exact(redis_server: ServerProcess, depth: int) -> None:
    async with applier_and_redis(redis_server.url, depth) as (applier, r):
        events, recs = records(200, seed=8)
        chunks = chunked(recs, 20)
        acked: list[int] = []

        async def done(chunk: Sequence[RawRecord]) -> bool:
            acked.append(chunk[-1].offset)
            if len(acked) == 3:  # every connection of the applier, its queued scripts' too
                await r.client_kill_filter(_type="normal", skipme=True)
            return True

        await applier.apply_chunks(chunks, done)
        assert applier.fallbacks == 1
        assert acked == [c[-1].offset for c in chunks]
        assert await applied_offsets(r, SPEC, GROUP) == {0: 199}
        await assert_all_exact(r, events)


@DEPTHS
async def test_a_window_read_back_waits_for_the_writes_of_its_entity(
        redis_server: ServerProcess, monkeypatch: pytest.MonkeyPatch, depth: int) -> None:
    """A one-window cache: each chunk's entities were evicted while their writes were in
    flight, so they are read back from Redis, which must wait for those writes. Scripts are
    held back until a reply is awaited (as a busy Redis would leave them queued), so a read
    that does not wait sees the entity's window without its last write."""
    held: list[tuple[Sequence[Any], Sequence[Any]]] = []
    send, receive = ScriptPipe.send, ScriptPipe.receive

    async def hold(pipe: ScriptPipe, keys: Sequence[Any], args: Sequence[Any]) -> None:
        held.append((keys, args))
        pipe.unread += 1

    async def release_then_receive(pipe: ScriptPipe) -> Any:
        while held:
            pipe.unread -= 1
            await send(pipe, *held.pop(0))
        return await receive(pipe)

    monkeypatch.setattr(ScriptPipe, "send", hold)
    monkeypatch.setattr(ScriptPipe, "receive", release_then_receive)
    async with applier_and_redis(redis_server.url, depth, cached=1) as (applier, r):
        events, recs = records(240, seed=9)
        chunks = chunked(recs, 8)

        async def done(chunk: Sequence[RawRecord]) -> bool:
            await assert_exact_snapshot(r, events, chunk)
            return True

        await applier.apply_chunks(chunks, done)
        assert applier.fallbacks == 0 and applier.cache.misses > 50
        await assert_all_exact(r, events)


async def test_new_entities_are_read_without_waiting_for_the_queue(
        redis_server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every chunk is of entities never seen (all cache misses): their reads need not wait,
    so the next script is sent with the previous one still unread (queued in Redis)."""
    unread_at_send: list[int] = []
    send = ScriptPipe.send

    async def spy(pipe: ScriptPipe, keys: Sequence[Any], args: Sequence[Any]) -> None:
        unread_at_send.append(pipe.unread)
        await send(pipe, keys, args)

    monkeypatch.setattr(ScriptPipe, "send", spy)
    events = [{"schema_version": 1, "event_id": f"e{i}", "entity_id": f"n{i // 4}", "event_time": 1000.0 + i,
               "amount": float(i % 7), "cat": "a"} for i in range(80)]
    recs = [RawRecord(0, i, codec.dumps(e)) for i, e in enumerate(events)]
    async with applier_and_redis(redis_server.url, 2) as (applier, r):
        await applier.apply_chunks(chunked(recs, 4), _accept)
        assert unread_at_send == [0] + [1] * 19
        assert applier.cache.misses == 20
        for entity in ("n0", "n7", "n19"):
            assert await stored(r, entity) == expected(events, entity)


async def _accept(chunk: Sequence[RawRecord]) -> bool:
    return True
