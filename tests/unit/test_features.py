"""Unit tests of the features service's pure logic: every aggregation, windows, dedupe, pruning."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.features.handlers import (
    Decoded,
    RawRecord,
    apply_events,
    batch_features_for_entity,
    compute_features,
    decode_batch,
    feature_hash,
    late_dead_letter,
    parse_buffer,
    plan_batch,
    prune,
    resume_positions,
)
from shared import codec
from shared.contracts import DeadLetter
from shared.spec import UseCaseSpec, load_spec

FEATS = [
    ("n10", "count", None, 10, 0.0), ("sum10", "sum", "amount", 10, 0.0),
    ("mean10", "mean", "amount", 10, None), ("min10", "min", "amount", 10, None),
    ("max10", "max", "amount", 10, None), ("std10", "std", "amount", 10, None),
    ("last10", "last", "amount", 10, -1.0), ("distinct10", "distinct_count", "cat", 10, 0.0),
    ("gap10", "time_since_last", None, 10, None), ("n3", "count", None, 3, 0.0),
    ("sum30", "sum", "amount", 30, 0.0),
]
# name, agg, field, window, kind, hop: every aggregation over hopping and tumbling windows too
KIND_FEATS = [
    (f"{agg}_{kind}", agg, None if agg in ("count", "time_since_last") else ("cat" if agg == "distinct_count"
                                                                            else "amount"), 12, kind, hop)
    for kind, hop in (("hopping", 4), ("tumbling", None))
    for agg in ("count", "sum", "mean", "min", "max", "std", "last", "distinct_count", "time_since_last")
]


def make_spec(lateness: float = 5.0, kinds: bool = False) -> UseCaseSpec:
    extra = [{"name": n, "agg": a, "window": w, "kind": k, **({"hop": h} if h else {}), **({"field": f} if f else {})}
             for n, a, f, w, k, h in KIND_FEATS] if kinds else []
    return UseCaseSpec.model_validate({
        "name": "unit",
        "event": {"fields": {"amount": {"type": "float"}, "cat": {"type": "str", "required": False}}},
        "features": [
            {"name": n, "agg": a, "window": w, "default": d, **({"field": f} if f else {})}
            for n, a, f, w, d in FEATS
        ] + extra,
        "features_config": {"allowed_lateness": lateness, "entity_ttl": 3600},
        "model": {"numeric": ["amount"]},
    })


def ev(i: Any, t: float, amount: float, cat: str | None = "a") -> dict[str, Any]:
    return {"event_id": f"e{i}", "entity_id": "c1", "event_time": float(t), "amount": amount, "cat": cat}


# Events at t = 95 (outside the 10 s window at 100), 90.0 (exactly on the boundary: excluded),
# 91, 95, 99, 100 (inside), 105 (after `at`: ignored). Deliberately out of order.
EVENTS = [
    ev(5, 100, 4.0, "b"), ev(1, 90, 1000.0), ev(3, 95, 2.0, "b"), ev(6, 105, 500.0, "z"),
    ev(2, 91, 1.0), ev(4, 99, 3.0, None), ev(0, 80, 7.0),
]


def test_every_aggregation_exact_at_window_boundaries() -> None:
    got = compute_features(EVENTS, 100.0, make_spec())
    vals = [1.0, 2.0, 3.0, 4.0]
    mean = 2.5
    assert got == {
        "n10": 4.0, "sum10": 10.0, "mean10": 2.5, "min10": 1.0, "max10": 4.0,
        "std10": math.sqrt(sum((v - mean) ** 2 for v in vals) / 4), "last10": 4.0,
        "distinct10": 2.0,  # "a", "b" (None is not a value)
        "gap10": 1.0,  # 100 - 99
        "n3": 2.0,  # (97, 100]: 99, 100
        "sum30": 1017.0,  # (70, 100]: 7 + 1000 + 1 + 2 + 3 + 4
    }
    assert got["std10"] == pytest.approx(1.118033988749895)


def test_result_does_not_depend_on_input_order() -> None:
    spec = make_spec()
    assert compute_features(list(reversed(EVENTS)), 100.0, spec) == compute_features(EVENTS, 100.0, spec)
    assert batch_features_for_entity(EVENTS, 100.0, spec) == compute_features(EVENTS, 100.0, spec)


def test_empty_window_gives_defaults() -> None:
    got = compute_features(EVENTS, 200.0, make_spec())
    assert got == {
        "n10": 0.0, "sum10": 0.0, "mean10": None, "min10": None, "max10": None, "std10": None,
        "last10": -1.0, "distinct10": 0.0, "gap10": None, "n3": 0.0, "sum30": 0.0,
    }
    assert compute_features([], 0.0, make_spec())["n10"] == 0.0


def test_time_since_last_needs_two_events_and_std_of_one_is_zero() -> None:
    got = compute_features([ev(1, 50, 3.0)], 55.0, make_spec())
    assert got["gap10"] is None
    assert got["std10"] == 0.0
    assert got["last10"] == 3.0


def test_aggregates_beyond_the_float_range_give_defaults_not_errors() -> None:
    """Valid events near the float maximum (a spec without ``max`` on the field): the sum
    overflows (fsum raises), so do std's squares; each such feature takes its default and
    the rest stay exact, in both engines (a raise would stop the service on every retry)."""
    spec = make_spec()
    events = [ev(1, 95, 1e308), ev(2, 96, 1e308), ev(3, 99, -1.0)]
    want = {"n10": 3.0, "sum10": 0.0, "mean10": None, "min10": -1.0, "max10": 1e308, "std10": None,
            "last10": -1.0, "distinct10": 1.0, "gap10": 3.0, "n3": 1.0, "sum30": 0.0}
    assert compute_features(events, 99.0, spec) == want
    plan = plan_batch(Decoded(events={"c1": events}), {}, spec)
    assert plan.features["c1"] == want
    # Squares beyond the range with a finite sum: only std gives up.
    got = compute_features([ev(1, 95, 1e200), ev(2, 96, -1e200)], 99.0, spec)
    assert (got["std10"], got["sum10"], got["mean10"]) == (None, 0.0, 0.0)
    assert compute_features([ev(1, 95, 1e300), ev(2, 96, 1e300)], 99.0, spec)["std10"] == 0.0


_ANY_FLOAT = st.floats(allow_nan=False, allow_infinity=False)
_UNBOUNDED = make_spec(lateness=1e308, kinds=True)  # no event is late; amount has no bounds


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_ANY_FLOAT, st.one_of(_ANY_FLOAT, st.integers(-(2**63), 2**63 - 1), st.booleans(),
                                                 st.none())), min_size=1, max_size=8))
def test_no_valid_event_makes_the_engine_raise(rows: list[tuple[float, Any]]) -> None:
    """Any finite event time and amount (what decode lets through for a spec without
    bounds), every window kind and aggregation: the engine plans, never raises."""
    events = [{"event_id": f"e{i}", "entity_id": "c1", "event_time": t, "amount": a, "cat": "x"}
              for i, (t, a) in enumerate(rows)]
    plan = plan_batch(Decoded(events={"c1": events}), {}, _UNBOUNDED)
    assert set(plan.features["c1"]) == {f.name for f in _UNBOUNDED.features}


def test_duplicates_count_once() -> None:
    spec = make_spec(lateness=100.0)
    dup = [*EVENTS, ev(5, 100, 4.0, "b"), ev(2, 91, 1.0)]
    assert compute_features(dup, 100.0, spec) == compute_features(EVENTS, 100.0, spec)
    buffer, late = apply_events([], dup, spec)
    assert late == 0
    assert sorted(e["event_id"] for e in buffer) == sorted({e["event_id"] for e in EVENTS})


def test_late_events_are_not_applied() -> None:
    spec = make_spec(lateness=5.0)
    buffer, late = apply_events([ev(1, 100, 1.0)], [ev(2, 96, 2.0), ev(3, 94.9, 3.0), ev(4, 110, 4.0)], spec)
    assert late == 1  # 94.9 < 100 - 5; 96 is within lateness and applied
    assert {e["event_id"] for e in buffer} == {"e1", "e2", "e4"}
    # lateness is judged against the newest event seen *before* the event (batch-split stable)
    _, late = apply_events([], [ev(5, 100, 1.0), ev(6, 105.5, 1.0), ev(7, 100.2, 1.0)], spec)
    assert late == 1


def test_prune_keeps_only_what_a_future_window_can_need() -> None:
    spec = make_spec(lateness=5.0)  # longest window 30 s -> cutoff = newest - 35
    buf = [ev(1, 64.9, 1.0), ev(2, 65.0, 1.0), ev(3, 80, 1.0), ev(4, 100, 1.0)]
    assert [e["event_id"] for e in prune(buf, spec)] == ["e2", "e3", "e4"]
    assert prune([], spec) == []


def test_decode_batch_skips_applied_offsets_and_invalid_records() -> None:
    spec = make_spec()
    good = {**ev(1, 100, 1.0), "schema_version": 1, "ingested_at": 1.0}
    records = [
        RawRecord(0, 5, codec.dumps(good)),  # already applied (<= 5)
        RawRecord(0, 6, codec.dumps({**good, "event_id": "e2"})),
        RawRecord(0, 7, b"{not json"),
        RawRecord(1, 3, codec.dumps({**good, "amount": "x"})),
        RawRecord(1, 2, None),
    ]
    decoded = decode_batch(records, {0: 5}, spec)
    assert decoded.redelivered == 1 and decoded.invalid == 3
    assert decoded.offsets == {0: 7, 1: 3}
    assert [e["event_id"] for e in decoded.events["c1"]] == ["e2"]
    assert set(decoded.events["c1"][0]) == {"event_id", "event_time", "amount", "cat"}  # slimmed


def test_plan_batch_computes_at_newest_event_and_hash_omits_none() -> None:
    records = [RawRecord(0, i, codec.dumps({**e, "schema_version": 1})) for i, e in enumerate(EVENTS)]
    strict = plan_batch(decode_batch(records, {}, make_spec(lateness=5.0)), {}, make_spec(lateness=5.0))
    assert strict.late == 4  # 90, 91, 99, 80 arrive > 5 s behind the newest event seen so far
    spec = make_spec(lateness=100.0)
    plan = plan_batch(decode_batch(records, {}, spec), {}, spec)
    assert plan.late == 0 and plan.offsets == {0: len(EVENTS) - 1}
    assert plan.at == {"c1": 105.0}
    assert plan.features["c1"] == compute_features(EVENTS, 105.0, spec)
    fields = feature_hash(plan.features["c1"], 105.0, now=123.5)
    assert fields["_event_time"] == "105.0" and fields["_written_at"] == "123.5"
    assert fields["n10"] == "3.0" and "gap10" in fields
    assert "nope" not in fields
    empty = feature_hash({"a": None, "b": 2}, 1.0, 2.0)
    assert "a" not in empty and empty["b"] == "2.0"


def test_parse_buffer_tolerates_garbage() -> None:
    assert parse_buffer(None) == [] and parse_buffer(b"{bad") == [] and parse_buffer(b"{}") == []
    assert parse_buffer(codec.dumps([ev(1, 1, 1.0), {"x": 1}])) == [ev(1, 1, 1.0)]


def test_fraud_spec_features_all_computed() -> None:
    spec = load_spec()
    events = [
        {"event_id": f"x{i}", "event_time": 1000.0 + 10 * i, "amount": 10.0 * i, "merchant_category": "m"}
        for i in range(5)
    ]
    got = compute_features(events, 1040.0, spec)
    assert set(got) == set(spec.feature_names)
    assert got["txn_count_5m"] == 5.0 and got["amount_sum_1h"] == 100.0 and got["secs_since_prev_txn"] == 10.0


def test_late_events_are_returned_once_with_their_record_for_the_dlq() -> None:
    spec = make_spec(lateness=5.0)
    good = {"schema_version": 1, "entity_id": "c1", "amount": 1.0, "cat": "a"}
    records = [
        RawRecord(2, 10, codec.dumps({**good, "event_id": "a", "event_time": 100.0}), b"c1"),
        RawRecord(2, 11, codec.dumps({**good, "event_id": "late", "event_time": 90.0}), b"c1"),
        RawRecord(2, 12, codec.dumps({**good, "event_id": "late", "event_time": 90.0}), b"c1"),  # its duplicate
    ]
    plan = plan_batch(decode_batch(records, {}, spec), {}, spec)
    assert plan.late == 1 and plan.offsets == {2: 12}
    assert [e["event_id"] for e in plan.buffers["c1"]] == ["a"]
    [late] = plan.late_records
    assert late.record.key == b"c1" and late.record.offset in (11, 12) and late.newest == 100.0
    meta = late_dead_letter(late, spec, now=5.0)
    assert meta.reason == "late_event" and meta.field == "event_time"
    assert meta.source_topic == "events.valid" and meta.source_partition == 2
    assert "allowed lateness is 5s" in meta.message and "10.000s behind" in meta.message
    assert DeadLetter.from_headers(meta.to_headers()) == meta


def test_resume_positions_trust_redis_over_the_kafka_commit() -> None:
    # p0: commit lags Redis (skip what was applied); p1: commit ran ahead (a batch acked but
    # never applied: go back); p2: Redis never saw it (keep the commit); p3: nothing anywhere.
    got = resume_positions({0: 10, 1: 500, 2: 7, 3: None}, {0: 99, 1: 199, 4: 3})
    assert got == {0: 100, 1: 200, 2: 7}


def test_decode_batch_reports_a_gap_after_the_applied_offset() -> None:
    spec = make_spec()
    value = codec.dumps({**ev(1, 100, 1.0), "schema_version": 1})
    assert decode_batch([RawRecord(0, 6, value)], {0: 5}, spec).gaps == 0
    assert decode_batch([RawRecord(0, 9, value)], {0: 5}, spec).gaps == 1
    assert decode_batch([RawRecord(1, 9, value)], {0: 5}, spec).gaps == 0  # p1 never applied: no claim


def test_hopping_and_tumbling_windows_at_their_boundaries() -> None:
    """hopping(12, hop 4) at 101: buckets [92,96) [96,100) [100,104) -> events t >= 92;
    tumbling(12) at 101: [96, 108) -> t >= 96. Both include their start, unlike sliding."""
    spec = make_spec(lateness=100.0, kinds=True)
    events = [ev(1, 91.9, 1.0), ev(2, 92.0, 2.0, "b"), ev(3, 95.5, 3.0), ev(4, 96.0, 4.0, "c"), ev(5, 101.0, 5.0)]
    got = compute_features(events, 101.0, spec)
    assert got["count_hopping"] == 4.0 and got["sum_hopping"] == 14.0 and got["min_hopping"] == 2.0
    assert got["distinct_count_hopping"] == 3.0 and got["last_hopping"] == 5.0
    assert got["count_tumbling"] == 2.0 and got["sum_tumbling"] == 9.0 and got["mean_tumbling"] == 4.5
    assert got["time_since_last_tumbling"] == 5.0 and got["std_tumbling"] == 0.5
    # at 104 the hopping tail moves one hop (t >= 96); the tumbling bucket is unchanged
    later = compute_features([*events, ev(6, 104.0, 6.0)], 104.0, spec)
    assert later["count_hopping"] == 3.0 and later["count_tumbling"] == 3.0
    # at 108 a new tumbling bucket starts: only the event at 108
    reset = compute_features([*events, ev(7, 108.0, 7.0)], 108.0, spec)
    assert reset["count_tumbling"] == 1.0 and reset["sum_tumbling"] == 7.0 and reset["time_since_last_tumbling"] is None


@pytest.mark.parametrize("bad", [
    {"kind": "hopping"},  # no hop
    {"kind": "hopping", "hop": 5},  # 12 is not a multiple of 5
    {"kind": "tumbling", "hop": 4},  # hop only for hopping
    {"kind": "sliding", "hop": 4},
    {"kind": "hopping", "hop": 24},  # hop longer than the window
])
def test_window_kind_validation(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        UseCaseSpec.model_validate({
            "name": "bad", "event": {"fields": {"amount": {"type": "float"}}},
            "features": [{"name": "x", "agg": "count", "window": 12, **bad}], "model": {"numeric": ["amount"]},
        })
