"""Pure parts of the publish path and the features' chunking (no broker here)."""

from __future__ import annotations

import random

from aiokafka.partitioner import DefaultPartitioner

from services.features.handlers import RawRecord, chunks
from shared.kafka import _partition


def test_partition_agrees_with_aiokafkas_default_partitioner() -> None:
    """Other producers of a topic (send() users, the Java client) must put a key where we do."""
    rng = random.Random(3)
    keys = [f"card-{i}".encode() for i in range(500)] + [rng.randbytes(rng.randrange(1, 40)) for _ in range(500)]
    for key in keys:
        for n in (1, 2, 3, 4, 12):
            assert _partition(key, n) == DefaultPartitioner()(key, list(range(n)), list(range(n)))


def _records(keys: list[str]) -> list[RawRecord]:
    return [RawRecord(0, i, b"{}", k.encode()) for i, k in enumerate(keys)]


def test_chunks_bound_entities_and_events_and_keep_order() -> None:
    records = _records(["a", "b", "a", "c", "a", "d", "b", "e"])
    out = list(chunks(records, max_events=100, max_entities=2))
    assert [[r.key.decode() for r in c] for c in out] == [["a", "b", "a"], ["c", "a"], ["d", "b"], ["e"]]
    out = list(chunks(records, max_events=3, max_entities=10))
    assert [len(c) for c in out] == [3, 3, 2]
    assert [r for c in out for r in c] == records


def test_chunks_of_random_streams_respect_both_bounds() -> None:
    rng = random.Random(11)
    for _ in range(200):
        records = _records([f"k{rng.randrange(20)}" for _ in range(rng.randrange(0, 300))])
        max_events, max_entities = rng.randrange(1, 50), rng.randrange(1, 10)
        out = list(chunks(records, max_events, max_entities))
        assert [r for c in out for r in c] == records
        assert all(0 < len(c) <= max_events and len({r.key for r in c}) <= max_entities for c in out)
