"""The streaming engine's running aggregates against the batch function: equal, value and
type (signed zeros told apart), after any mix of in-order and late events, evaluations
at any points (a window skipped while it shares another's start lags, then catches up)
and pruning; on values that break naive sums and comparisons."""

from __future__ import annotations

import math
from typing import Any

from collections.abc import Iterator
from contextlib import contextmanager

from hypothesis import given, settings
from hypothesis import strategies as st

from services.features.running import Running
from services.features.state import Window
from services.features.windows import FieldAggs, compute_features
from tests.unit.test_features import make_spec

SPEC = make_spec(lateness=5.0, kinds=True)  # sliding 3/10/30 s, hopping 12/4 s, tumbling 12 s
HORIZON = SPEC.max_window_s + SPEC.features_config.allowed_lateness
AMOUNTS = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, 0.1, 0.2, 5e-324, -5e-324, 1e300, -1e300, 1e-300, 3, True, "x", None]),
    st.floats(-1e12, 1e12, allow_nan=False),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
)
# (gap since the previous arrival, how late it is (< the lateness), amount, cat, evaluate, prune)
STEPS = st.lists(st.tuples(st.floats(0, 3), st.floats(0, 4.9), AMOUNTS, st.sampled_from(["a", "b", None, 0]),
                           st.booleans(), st.booleans()), min_size=1, max_size=50)


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal, type and sign of zero included."""
    def key(v: Any) -> Any:
        return (type(v), v, math.copysign(1.0, v)) if isinstance(v, float) else (type(v), v)
    return a.keys() == b.keys() and all(key(a[k]) == key(b[k]) for k in a)


@contextmanager
def fill_from(events: int) -> Iterator[None]:
    """Windows kept running from ``events`` on (the default, 64, is above these tests' sizes)."""
    before, Running.FILL_FROM = Running.FILL_FROM, events
    try:
        yield
    finally:
        Running.FILL_FROM = before


@settings(max_examples=400, deadline=None)
@given(STEPS, st.sampled_from([0, 8]))
def test_running_aggregates_equal_the_batch_function(steps: list[tuple[float, float, Any, Any, bool, bool]],
                                                     threshold: int) -> None:
    with fill_from(threshold):
        check_steps(steps)


def check_steps(steps: list[tuple[float, float, Any, Any, bool, bool]]) -> None:
    window = Window(0)
    added: list[dict[str, Any]] = []
    clock = 0.0
    for i, (gap, late, amount, cat, evaluate, prune) in enumerate(steps):
        clock += gap
        event = {"event_id": f"e{i:02d}", "entity_id": "c1", "event_time": clock - late, "amount": amount, "cat": cat}
        window.add(event)
        added.append(event)
        if prune:
            window.prune(window.newest - HORIZON)
        if evaluate or i == len(steps) - 1:
            want = compute_features(added, window.newest, SPEC)
            got = window.features(SPEC)
            assert same(got, want), (got, want)


def test_a_lagging_window_loses_pruned_events_it_still_held() -> None:
    """A window not advanced for a while (its start was shared) still holds events that
    the window's prune removes: they leave its sums then, not later."""
    kept = Running({"amount": FieldAggs(("sum",), True, (), False, False)}, inclusive=False)
    raw: dict[str, list[Any]] = {"amount": [1.0, 2.0, 4.0]}
    num: dict[str, list[float | None]] = {"amount": [1.0, 2.0, 4.0]}
    kept.advance(0, -1.0, raw, num)  # filled: all three in the window
    kept.pruning(2, 20.0, raw, num)
    del raw["amount"][:2], num["amount"][:2]
    assert (kept.lo, kept.aggregates("amount", num)["sum"]) == (0, 4.0)
    raw["amount"].insert(0, 8.0)  # a late event before the pruned ones: outside
    num["amount"].insert(0, 8.0)
    kept.inserted(0, 15.0, raw, num)
    assert (kept.lo, kept.aggregates("amount", num)["sum"]) == (1, 4.0)


def test_sums_are_exact_where_float_order_would_cancel() -> None:
    window = Window(0)
    with fill_from(0):
        for i, amount in enumerate([1e300, 1.0, -1e300, 0.1]):
            window.add({"event_id": f"e{i}", "event_time": float(i), "amount": amount, "cat": "a"})
            got = window.features(SPEC)  # kept running from the second on
    assert window.running[0].filled
    assert got["sum30"] == 1.1 == math.fsum([1e300, 1.0, -1e300, 0.1])
    assert (got["max10"], got["min10"]) == (1e300, -1e300)


def test_max_and_min_keep_the_first_of_equal_zeros_as_max_and_min_do() -> None:
    """max() keeps the first of equal numbers: of 0.0 then a late -0.0 placed before it,
    the window's max is -0.0."""
    window = Window(0)
    with fill_from(0):
        window.add({"event_id": "e1", "event_time": 5.0, "amount": 0.0, "cat": "a"})
        window.features(SPEC)
        got = window.features(SPEC)  # running: max 0.0 known
        assert math.copysign(1.0, got["max10"]) == 1.0  # type: ignore[arg-type]
        window.add({"event_id": "e0", "event_time": 4.0, "amount": -0.0, "cat": "a"})
        got = window.features(SPEC)
    assert math.copysign(1.0, got["max10"]) == math.copysign(1.0, got["min10"]) == -1.0  # type: ignore[arg-type]


def test_windows_are_kept_running_only_from_fill_from_events() -> None:
    """Below FILL_FROM events a window is aggregated from its slice every time (cheaper);
    from it on (and its second evaluation), it is kept running."""
    window = Window(0)
    for i in range(Running.FILL_FROM + 1):
        window.add({"event_id": f"e{i:03d}", "event_time": i * 0.01, "amount": float(i), "cat": "a"})
        got = window.features(SPEC)
        # The 10 s window holds them all: FILL_FROM events at i + 1 == FILL_FROM, kept at the next.
        assert (bool(window.running) and window.running[0].filled) is (i >= Running.FILL_FROM)
    assert got["sum30"] == math.fsum(range(Running.FILL_FROM + 1))


def test_a_late_event_exactly_at_a_hopping_start_is_in_the_window() -> None:
    """Hopping and tumbling windows include their start ([start, at]); sliding ones do not."""
    window = Window(0)
    with fill_from(0):
        window.add({"event_id": "e1", "event_time": 13.0, "amount": 1.0, "cat": "a"})
        # In the sliding windows, not the hopping one: its start differs from theirs.
        window.add({"event_id": "e2", "event_time": 3.5, "amount": 4.0, "cat": "a"})
        window.features(SPEC)
        window.features(SPEC)  # kept running: the 12 s hopping window (hop 4) starts at 4.0
        window.add({"event_id": "e0", "event_time": 4.0, "amount": 2.0, "cat": "a"})
        got = window.features(SPEC)
    assert (got["sum_hopping"], got["count_hopping"]) == (3.0, 2.0)
    assert got == compute_features(window.events, 13.0, SPEC)


def test_a_window_kept_running_follows_its_prunes() -> None:
    window = Window(0)
    events = [{"event_id": f"e{i}", "event_time": float(t), "amount": float(i + 1), "cat": "a"}
              for i, t in enumerate([0, 1, 2, 50, 51])]
    with fill_from(0):
        for event in events[:3]:
            window.add(event)
        window.features(SPEC)
        window.features(SPEC)  # kept running
        for event in events[3:]:
            window.add(event)
            assert window.prune(window.newest - HORIZON) == (["e0", "e1", "e2"] if event is events[3] else [])
        got = window.features(SPEC)
    assert got == compute_features(events, 51.0, SPEC) and got["sum30"] == 9.0
