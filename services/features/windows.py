"""The feature definitions, evaluated: one batch function for every engine.

:func:`compute_features` is the single definition of the online features. The streaming
engine calls :func:`evaluate` (the same code, on its already-canonical window buffer);
training backfills and tests call :func:`compute_features` on raw event lists. Because
both engines share it, there is no online/offline skew.

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
  so does ``time_since_last`` with fewer than two events.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from shared.spec import FeatureSpec, UseCaseSpec

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


def window_start(feat: FeatureSpec, at: float) -> tuple[float, bool]:
    """(start, inclusive) of ``feat``'s window at ``at``: sliding excludes its start."""
    if feat.kind == "sliding":
        return at - feat.window, False
    hop = feat.window if feat.kind == "tumbling" else float(feat.hop or feat.window)
    return (math.floor(at / hop) + 1) * hop - feat.window, True


def compute_features(events: Sequence[Event], at: float, spec: UseCaseSpec) -> dict[str, float | None]:
    """Every feature of ``spec`` for one entity at event time ``at``, from its events."""
    canon = [e for e in ordered(events) if float(e["event_time"]) <= at]
    return evaluate(canon, [float(e["event_time"]) for e in canon], at, spec)


def evaluate(canon: Sequence[Event], times: Sequence[float], at: float, spec: UseCaseSpec) -> dict[str, float | None]:
    """The features at ``at`` from events in canonical order, all at or before ``at``
    (``times`` = their event times). Each window is sliced once and each field's numbers
    extracted once per window: many features share them (sum, mean, max of one field)."""
    out: dict[str, float | None] = {}
    slices: dict[tuple[float, bool], list[Event]] = {}
    numbers: dict[tuple[float, bool, str], list[float]] = {}
    for feat in spec.features:
        bound = window_start(feat, at)
        window = slices.get(bound)
        if window is None:
            start, inclusive = bound
            lo = bisect_left(times, start) if inclusive else bisect_right(times, start)
            window = slices[bound] = list(canon[lo:])  # a copy: aggregations never see the buffer
        if feat.agg in _NUMERIC:
            nums = numbers.get((*bound, feat.field or ""))
            if nums is None:
                nums = numbers[(*bound, feat.field or "")] = _numbers(feat, window)
            value = _NUMERIC[feat.agg](nums)
        else:
            value = _AGGS[feat.agg](feat, window)
        out[feat.name] = feat.default if value is None else value
    return out


def _numbers(feat: FeatureSpec, window: list[Event]) -> list[float]:
    values = (e.get(feat.field or "") for e in window)
    return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def _std_of(nums: list[float]) -> float:
    """Population std, two-pass: stable for large values with small spread."""
    mean = math.fsum(nums) / len(nums)
    return math.sqrt(math.fsum((x - mean) ** 2 for x in nums) / len(nums))


# Aggregations of a field's numeric values in the window (None: no value).
_NUMERIC: dict[str, Callable[[list[float]], float | None]] = {
    "sum": lambda nums: math.fsum(nums) if nums else None,
    "mean": lambda nums: math.fsum(nums) / len(nums) if nums else None,
    "std": lambda nums: _std_of(nums) if nums else None,
    "min": lambda nums: min(nums) if nums else None,
    "max": lambda nums: max(nums) if nums else None,
    "last": lambda nums: nums[-1] if nums else None,
}


def _count(feat: FeatureSpec, window: list[Event]) -> float | None:
    if not feat.field:
        return float(len(window)) if window else None
    hits = sum(1 for e in window if e.get(feat.field) is not None)
    return float(hits) if hits else None


def _distinct(feat: FeatureSpec, window: list[Event]) -> float | None:
    values = {e.get(feat.field or "") for e in window} - {None}
    return float(len(values)) if values else None


def _since_last(feat: FeatureSpec, window: list[Event]) -> float | None:
    if len(window) < 2:
        return None
    return float(window[-1]["event_time"]) - float(window[-2]["event_time"])


# Aggregations of the window's events.
_AGGS: dict[str, Callable[[FeatureSpec, list[Event]], float | None]] = {
    "count": _count,
    "distinct_count": _distinct,
    "time_since_last": _since_last,
}
