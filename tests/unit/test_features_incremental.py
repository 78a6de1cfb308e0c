"""Property: the streaming engine (merge + prune + compute per batch) equals the batch engine.

For any event stream whose disorder stays within the allowed lateness, split into any
batches, with duplicates, the features after the last batch equal compute_features over
all (deduplicated) events at the newest event time.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from services.features.handlers import (
    Decoded,
    apply_events,
    compute_features,
    plan_batch,
    plan_windows,
)
from services.features.state import Window
from tests.unit.test_features import make_spec

LATENESS = 5.0
SPEC = make_spec(lateness=LATENESS, kinds=True)  # sliding, hopping and tumbling windows


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[int]]:
    n = draw(st.integers(1, 60))
    times = draw(st.lists(st.floats(0, 200, allow_nan=False), min_size=n, max_size=n))
    jitter = draw(st.lists(st.floats(0, LATENESS / 2, exclude_max=True), min_size=n, max_size=n))
    amounts = draw(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=n, max_size=n))
    cats = draw(st.lists(st.sampled_from(["a", "b", "c", None]), min_size=n, max_size=n))
    events = [
        {"event_id": f"e{i}", "event_time": t, "amount": a, "cat": c}
        for i, (t, a, c) in enumerate(zip(times, amounts, cats))
    ]
    # Arrival order = time + jitter < lateness/2: no event is ever later than the lateness.
    arrival = [e for _, e in sorted(zip((t + j for t, j in zip(times, jitter)), events), key=lambda p: p[0])]
    dups = draw(st.lists(st.integers(0, n - 1), max_size=10))
    for i in dups:  # a duplicate right after its original (a redelivered/retried produce)
        pos = arrival.index(events[i])
        arrival.insert(pos + 1, dict(events[i]))
    cuts = sorted(draw(st.lists(st.integers(0, len(arrival)), max_size=8)))
    return arrival, cuts


@settings(max_examples=100, deadline=None)
@given(streams())
def test_incremental_equals_batch(stream: tuple[list[dict[str, Any]], list[int]]) -> None:
    """Both ways the engine runs: windows kept in memory across batches (the cache) and
    rebuilt from the stored list every batch (a cache miss); after every batch both equal
    the batch function over everything so far."""
    arrival, cuts = stream
    buffer: list[dict[str, Any]] = []
    window = Window(0)
    stored: dict[str, dict[str, Any]] = {}  # what the Redis window hash would hold
    for start, end in zip([0, *cuts], [*cuts, len(arrival)]):
        chunk = arrival[start:end]
        if not chunk:
            continue
        plan = plan_batch(Decoded(events={"c": chunk}), {"c": buffer}, SPEC)
        cached = plan_windows(Decoded(events={"c": chunk}), {"c": window}, SPEC)
        assert plan.late == 0 == cached.late
        if "c" not in plan.buffers:  # only duplicates: nothing changed
            assert "c" not in cached.buffers
            continue
        buffer = list(plan.buffers["c"])
        assert len({e["event_id"] for e in buffer}) == len(buffer)  # deduped
        stored.update({e["event_id"]: e for e in cached.added["c"]})
        for event_id in cached.removed["c"]:
            del stored[event_id]
        assert sorted(stored) == sorted(e["event_id"] for e in window.events)  # incremental writes add up
        so_far = arrival[:end]
        at = max(e["event_time"] for e in so_far)
        assert plan.features["c"] == cached.features["c"] == compute_features(so_far, at, SPEC)
    at = max(e["event_time"] for e in arrival)
    # pruning bounded the buffer to what a future window can still need
    assert all(e["event_time"] >= at - SPEC.max_window_s - LATENESS for e in buffer)


def test_apply_events_is_idempotent_on_redelivery() -> None:
    events = [{"event_id": f"e{i}", "event_time": float(i), "amount": 1.0, "cat": "a"} for i in range(5)]
    once, _ = apply_events([], events, SPEC)
    twice, late = apply_events(once, events, SPEC)
    assert twice == once and late == 0


def _window(n: int, partition: int = 0) -> Window:
    return Window.of(partition, [{"event_id": f"e{i}", "event_time": float(i), "amount": 1.0} for i in range(n)])


def test_cache_is_bounded_by_the_events_its_windows_hold() -> None:
    """Entities under their bound, events over theirs: least recently used windows go first,
    and a window that grew in a batch counts with its new size."""
    from services.features.state import Cache

    cache = Cache(max_entities=100, max_events=10)
    for name, n in (("a", 4), ("b", 4), ("c", 2)):
        cache.put(name, _window(n))
    assert (cache.trim(), cache.events, list(cache.windows)) == (0, 10, ["a", "b", "c"])
    grown = cache.get("b", 0)
    assert grown is not None
    grown.add({"event_id": "x", "event_time": 9.0, "amount": 2.0})
    cache.put("b", grown)  # 11 events now: "a" (least recently used) is evicted
    assert (cache.trim(), cache.events, list(cache.windows)) == (1, 7, ["c", "b"])
    cache.put("d", _window(20))  # one window over the bound on its own: only it may remain
    assert cache.trim() == 2 and list(cache.windows) == ["d"] and cache.events == 20
    assert cache.trim() == 0 and list(cache.windows) == ["d"]  # the newest stays: it is in use
    cache.clear()
    assert (cache.events, cache.sizes, len(cache)) == (0, {}, 0)
    unbounded = Cache(max_entities=2)
    for name in "abc":
        unbounded.put(name, _window(50))
    assert unbounded.trim() == 1 and unbounded.events == 100


@given(st.lists(st.tuples(st.integers(0, 9), st.sampled_from([0.0, 1.0, 2.5]), st.floats(-5, 5)), max_size=30))
@settings(max_examples=200, deadline=None)
def test_window_built_in_bulk_equals_one_event_at_a_time(rows: list[tuple[int, float, float]]) -> None:
    """A cache miss builds a window in one sort; it must be the window ``add`` would build
    (canonical order, the first of an event_id in that order kept), columns included."""
    events = [{"event_id": f"e{i}", "event_time": t, "amount": a} for i, t, a in rows]  # ids repeat
    one_by_one = Window(3)
    for event in sorted(events, key=lambda e: (e["event_time"], e["event_id"])):
        one_by_one.add(dict(event))
    bulk = Window.of(3, events)
    assert (bulk.keys, bulk.events, bulk.times, bulk.ids) == (one_by_one.keys, one_by_one.events,
                                                              one_by_one.times, one_by_one.ids)
    if events:  # (a window is evaluated at its newest event: never empty)
        assert bulk.features(SPEC) == one_by_one.features(SPEC)
