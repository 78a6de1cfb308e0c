"""The feature definitions, evaluated: one batch function for every engine.

:func:`compute_features` is the single definition of the online features; training
backfills and tests call it on raw event lists. The streaming engine runs the same
:func:`evaluate_columns` on its already-canonical window buffer: for a window of fewer
than ``Running.FILL_FROM`` (64) events, on the same slices; for a larger one, a field's
aggregates come from running sums and counts (:mod:`services.features.running`, so an
update costs O(1), not O(window)), held equal to the slices' (exact sums, the same
tie-breaking) by property tests. So there is no online/offline skew.

Window kinds (``window`` = W, ``hop`` = H; all over event time, evaluated at time ``at``):

* ``sliding``: ``(at - W, at]``: every event of the last W seconds;
* ``hopping``: ``[start, at]`` with ``start = (floor(at / H) + 1) * H - W``: the last W/H hop
  buckets of the grid ``[k*H, (k+1)*H)``, the current (partial) bucket included, so the
  newest event always counts but the tail moves in H steps (cheap to precompute, the
  "hopping tail" of Chronon-style windows). W must be a multiple of H;
* ``tumbling``: hopping with H = W: the aligned bucket ``[floor(at / W) * W, at]``, reset
  to empty at every multiple of W (e.g. "amount spent today, UTC").

Aggregations:

* events with ``event_time > at`` are ignored; duplicates (same ``event_id``) count once;
* events are evaluated in ``(event_time, event_id)`` order, so the result (including the
  float rounding of sums) does not depend on the order the events arrived in;
* ``count`` counts events (with ``field``: events whose field is set); ``distinct_count``
  counts distinct non-null values; ``sum/mean/min/max/std/last`` use the numeric values
  of ``field`` (``std`` is the population standard deviation);
* ``time_since_last`` is the gap (seconds) between the last two events in the window;
* a window with no usable value yields the feature's spec ``default`` (may be None);
  so do ``time_since_last`` with fewer than two events, and an aggregate whose
  computation leaves the float range (a sum beyond 1.8e308; for ``std``, squares of
  differences beyond it): a valid event never makes the engine raise. Bound such fields
  with ``max`` in the spec when such values are errors.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from shared.spec import UseCaseSpec

Event = Mapping[str, Any]


def dedupe(events: Iterable[Event]) -> list[Event]:
    """First occurrence of each ``event_id`` wins (a redelivered copy is the same event)."""
    seen: set[str] = set()
    out: list[Event] = []
    for event in events:
        if event["event_id"] not in seen:
            seen.add(event["event_id"])
            out.append(event)
    return out


def sort_key(event: Event) -> tuple[float, str]:
    return float(event["event_time"]), str(event["event_id"])


def ordered(events: Iterable[Event]) -> list[Event]:
    """Deduplicated and in a canonical order, independent of arrival order."""
    return sorted(dedupe(events), key=sort_key)


def compute_features(events: Sequence[Event], at: float, spec: UseCaseSpec) -> dict[str, float | None]:
    """Every feature of ``spec`` for one entity at event time ``at``, from its events."""
    canon = [e for e in ordered(events) if float(e["event_time"]) <= at]
    return evaluate(canon, [float(e["event_time"]) for e in canon], at, spec)


def evaluate(canon: Sequence[Event], times: Sequence[float], at: float, spec: UseCaseSpec) -> dict[str, float | None]:
    """The features at ``at`` from events in canonical order, all at or before ``at``
    (``times`` = their event times)."""
    raw = {f: [e.get(f) for e in canon] for f in raw_fields(spec)}
    num = {f: [numeric(v) for v in raw_col] for f, raw_col in raw.items() if f in numeric_fields(spec)}
    return evaluate_columns(times, raw, num, at, spec)


def numeric(value: Any) -> float | None:
    """A field's value as an aggregation number: finite int/float (bool counts as 0/1)."""
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def raw_fields(spec: UseCaseSpec) -> frozenset[str]:
    """The event fields the features read."""
    return _compiled(spec).raw


def numeric_fields(spec: UseCaseSpec) -> frozenset[str]:
    """The fields read as numbers (sum, mean, std, min, max, last)."""
    return _compiled(spec).numeric


# (window definition's index in the spec's plan, field, window start index, window start
# time) -> every aggregation the spec makes of the field over the window.
Aggregate = Callable[[int, str, int, float], dict[str, float | None]]


def evaluate_columns(times: Sequence[float], raw: Mapping[str, Sequence[Any]], num: Mapping[str, Sequence[float | None]],
                     at: float, spec: UseCaseSpec, aggregate: Aggregate | None = None) -> dict[str, float | None]:
    """The features at ``at`` from columns in canonical order (all at or before ``at``):
    ``raw[field]`` the values, ``num[field]`` the same as :func:`numeric`. A field's
    aggregates over a window come from ``aggregate`` if given (the streaming engine keeps
    large windows' running: :mod:`services.features.running`, equal by test), else from
    the slice (:func:`field_aggregates`).

    Each distinct window is found once by bisection, and each field is aggregated once per
    window start, shared by the features over it: in the fraud spec the 5 m, 1 h and 24 h
    windows often start at the same event. Per feature, only a lookup is left.
    """
    out: dict[str, float | None] = {}
    n = len(times)
    memo: dict[tuple[str, int], dict[str, float | None]] = {}  # (field, window start) -> agg -> value
    plan = _compiled(spec)
    for group, (sliding, length, hop, outputs) in enumerate(plan.groups):
        if sliding:  # (at - W, at]; hopping and tumbling: [start, at] (module doc)
            start = at - length
            lo = bisect_right(times, start)
        else:
            start = (math.floor(at / hop) + 1) * hop - length
            lo = bisect_left(times, start)
        for name, agg, fld, default in outputs:
            if fld is not None:
                values = memo.get((fld, lo))
                if values is None:
                    values = memo[(fld, lo)] = (
                        field_aggregates(raw[fld], num.get(fld), lo, plan.aggs[fld]) if aggregate is None
                        else aggregate(group, fld, lo, start))
                value = values[agg]
            elif agg == "count":
                value = float(n - lo) or None
            else:  # time_since_last
                value = times[-1] - times[-2] if n - lo >= 2 else None
            out[name] = default if value is None else value
    return out


def window_plans(spec: UseCaseSpec) -> list[tuple[bool, dict[str, FieldAggs]]]:
    """Per window definition (in :func:`evaluate_columns`' order): whether its start is
    inclusive (hopping, tumbling), and what the spec aggregates of each field it reads."""
    plan = _compiled(spec)
    return [(not sliding, {fld: plan.aggs[fld] for _, _, fld, _ in outputs if fld is not None})
            for sliding, _, _, outputs in plan.groups]


class FieldAggs(NamedTuple):
    """What a spec aggregates of one field, resolved once per spec."""

    numeric: tuple[str, ...]  # the numeric aggregations (all None when no value is usable)
    total: bool  # sum or mean: one fsum shared
    single_pass: tuple[str, ...]  # std, min, max, last
    count: bool
    distinct: bool


def field_aggregates(col: Sequence[Any], ncol: Sequence[float | None] | None, lo: int,
                     aggs: FieldAggs) -> dict[str, float | None]:
    """Every aggregation in ``aggs`` of one field over the window starting at index ``lo``."""
    values: dict[str, float | None] = {}
    if ncol is not None and aggs.numeric:
        window = ncol[lo:] if lo else ncol
        nums: Sequence[float] = [x for x in window if x is not None] if None in window else window  # type: ignore[assignment]
        if not nums:
            values.update(dict.fromkeys(aggs.numeric))
        else:
            if aggs.total:
                total = exact_sum(nums)
                values["sum"], values["mean"] = total, None if total is None else total / len(nums)
            for agg in aggs.single_pass:
                values[agg] = NUMERIC_AGGREGATIONS[agg](nums)  # type: ignore[arg-type]
    if aggs.count:
        values["count"] = float(sum(1 for v in col[lo:] if v is not None)) or None
    if aggs.distinct:
        values["distinct_count"] = float(len(set(col[lo:]) - {None})) or None
    return values


# Per feature: (name, agg, field or None when the aggregation reads no field, default).
_Output = tuple[str, str, str | None, float | None]
# Per window definition: (sliding, window, hop, the features over it).
_Group = tuple[bool, float, float, tuple[_Output, ...]]


@dataclass(frozen=True)
class _Plan:
    """A spec's features, resolved once per spec object (specs are loaded once, never mutated)."""

    spec: UseCaseSpec
    groups: list[_Group]  # by window definition: one bisection per group
    aggs: dict[str, FieldAggs]  # field -> what the spec aggregates of it (time_since_last reads none)
    raw: frozenset[str]  # the event fields the features read
    numeric: frozenset[str]  # ... and those read as numbers


_PLANS: dict[int, _Plan] = {}


def _compiled(spec: UseCaseSpec) -> _Plan:
    cached = _PLANS.get(id(spec))
    if cached is not None and cached.spec is spec:
        return cached
    groups: dict[tuple[str, float, float], list[_Output]] = {}
    aggs: dict[str, set[str]] = {}
    for feat in spec.features:
        hop = feat.window if feat.kind == "tumbling" else float(feat.hop or feat.window)
        fld = None if feat.agg == "time_since_last" else feat.field
        if fld is not None:
            aggs.setdefault(fld, set()).add(feat.agg)
        key = (feat.kind, float(feat.window), 0.0 if feat.kind == "sliding" else hop)
        groups.setdefault(key, []).append((feat.name, feat.agg, fld, feat.default))
    by_field = {f: FieldAggs(tuple(sorted(a & NUMERIC_AGGREGATIONS.keys())), bool(a & {"sum", "mean"}),
                             tuple(sorted(a & _SINGLE_PASS)), "count" in a, "distinct_count" in a)
                for f, a in aggs.items()}
    plan = _PLANS[id(spec)] = _Plan(
        spec, [(kind == "sliding", length, hop, tuple(outs)) for (kind, length, hop), outs in groups.items()],
        by_field, frozenset(f.field for f in spec.features if f.field),
        frozenset(f.field for f in spec.features if f.field and f.agg in NUMERIC_AGGREGATIONS))
    return plan


def exact_sum(nums: Iterable[float]) -> float | None:
    """The correctly rounded sum; None beyond the float range (where fsum raises)."""
    try:
        return math.fsum(nums)
    except OverflowError:
        return None


def _mean_of(nums: list[float]) -> float | None:
    total = exact_sum(nums)
    return None if total is None else total / len(nums)


def _std_of(nums: list[float]) -> float | None:
    """Population std, two-pass: stable for large values with small spread. None when a
    step leaves the float range (values near 1e308, or squares beyond it)."""
    mean = _mean_of(nums)
    if mean is None:
        return None
    try:
        var = math.fsum((x - mean) ** 2 for x in nums) / len(nums)
    except OverflowError:
        return None
    return math.sqrt(var) if math.isfinite(var) else None


# Aggregations of a field's numeric values in the window (None: no value).
NUMERIC_AGGREGATIONS: dict[str, Callable[[list[float]], float | None]] = {
    "sum": lambda nums: exact_sum(nums) if nums else None,
    "mean": lambda nums: _mean_of(nums) if nums else None,
    "std": lambda nums: _std_of(nums) if nums else None,
    "min": lambda nums: min(nums) if nums else None,
    "max": lambda nums: max(nums) if nums else None,
    "last": lambda nums: nums[-1] if nums else None,
}
_SINGLE_PASS = frozenset(NUMERIC_AGGREGATIONS) - {"sum", "mean"}
