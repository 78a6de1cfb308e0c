"""The feature definitions, evaluated: one batch function for every engine.

:func:`compute_features` is the single definition of the online features. The streaming
engine calls it on an entity's window buffer; training backfills and tests call it on
raw event lists. Because both engines share it, there is no online/offline skew.

Semantics (all windows are sliding over event time, ``(at - window, at]``):

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


def ordered(events: Iterable[Event]) -> list[Event]:
    """Deduplicated and in a canonical order, independent of arrival order."""
    return sorted(dedupe(events), key=lambda e: (float(e["event_time"]), str(e["event_id"])))


def compute_features(events: Sequence[Event], at: float, spec: UseCaseSpec) -> dict[str, float | None]:
    """Every feature of ``spec`` for one entity at event time ``at``, from its events."""
    canon = [e for e in ordered(events) if float(e["event_time"]) <= at]
    return {feat.name: _feature(feat, canon, at) for feat in spec.features}


def _feature(feat: FeatureSpec, canon: list[Event], at: float) -> float | None:
    start = at - feat.window
    window = [e for e in canon if float(e["event_time"]) > start]
    value = _AGGS[feat.agg](feat, window)
    return feat.default if value is None else value


def _numbers(feat: FeatureSpec, window: list[Event]) -> list[float]:
    values = (e.get(feat.field or "") for e in window)
    return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def _count(feat: FeatureSpec, window: list[Event]) -> float | None:
    hits = window if not feat.field else [e for e in window if e.get(feat.field) is not None]
    return float(len(hits)) if hits else None


def _sum(feat: FeatureSpec, window: list[Event]) -> float | None:
    nums = _numbers(feat, window)
    return math.fsum(nums) if nums else None


def _mean(feat: FeatureSpec, window: list[Event]) -> float | None:
    nums = _numbers(feat, window)
    return math.fsum(nums) / len(nums) if nums else None


def _std(feat: FeatureSpec, window: list[Event]) -> float | None:
    """Population std, two-pass: stable for large values with small spread."""
    nums = _numbers(feat, window)
    if not nums:
        return None
    mean = math.fsum(nums) / len(nums)
    return math.sqrt(math.fsum((x - mean) ** 2 for x in nums) / len(nums))


def _min(feat: FeatureSpec, window: list[Event]) -> float | None:
    nums = _numbers(feat, window)
    return min(nums) if nums else None


def _max(feat: FeatureSpec, window: list[Event]) -> float | None:
    nums = _numbers(feat, window)
    return max(nums) if nums else None


def _last(feat: FeatureSpec, window: list[Event]) -> float | None:
    nums = _numbers(feat, window)
    return nums[-1] if nums else None


def _distinct(feat: FeatureSpec, window: list[Event]) -> float | None:
    values = {e.get(feat.field or "") for e in window} - {None}
    return float(len(values)) if values else None


def _since_last(feat: FeatureSpec, window: list[Event]) -> float | None:
    if len(window) < 2:
        return None
    return float(window[-1]["event_time"]) - float(window[-2]["event_time"])


_AGGS: dict[str, Callable[[FeatureSpec, list[Event]], float | None]] = {
    "count": _count,
    "sum": _sum,
    "mean": _mean,
    "std": _std,
    "min": _min,
    "max": _max,
    "last": _last,
    "distinct_count": _distinct,
    "time_since_last": _since_last,
}
