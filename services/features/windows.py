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
    (``times`` = their event times)."""
    raw = {f: [e.get(f) for e in canon] for f in raw_fields(spec)}
    num = {f: [numeric(v) for v in raw_col] for f, raw_col in raw.items() if f in numeric_fields(spec)}
    return evaluate_columns(times, raw, num, at, spec)


def numeric(value: Any) -> float | None:
    """A field's value as an aggregation number: finite int/float (bool counts as 0/1)."""
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def raw_fields(spec: UseCaseSpec) -> frozenset[str]:
    """The event fields the features read."""
    return _fields(spec)[0]


def numeric_fields(spec: UseCaseSpec) -> frozenset[str]:
    """The fields read as numbers (sum, mean, std, min, max, last)."""
    return _fields(spec)[1]


_FIELDS: dict[int, tuple[UseCaseSpec, tuple[frozenset[str], frozenset[str]]]] = {}


def _fields(spec: UseCaseSpec) -> tuple[frozenset[str], frozenset[str]]:
    """Computed once per spec object (specs are loaded once and never mutated)."""
    cached = _FIELDS.get(id(spec))
    if cached is None or cached[0] is not spec:
        raw = frozenset(f.field for f in spec.features if f.field)
        cached = _FIELDS[id(spec)] = (spec, (raw, frozenset(f.field for f in spec.features
                                                           if f.field and f.agg in _NUMERIC)))
    return cached[1]


def evaluate_columns(times: Sequence[float], raw: Mapping[str, Sequence[Any]], num: Mapping[str, Sequence[float | None]],
                     at: float, spec: UseCaseSpec) -> dict[str, float | None]:
    """The features at ``at`` from columns in canonical order (all at or before ``at``):
    ``raw[field]`` the values, ``num[field]`` the same as :func:`numeric`.

    Why columns: this is the streaming engine's hot path. Each distinct window is found
    once by bisection and each field's numbers sliced (and summed) once per window, shared
    by the features over it (sum, mean, max of one field), with no per-event Python work
    when every value is a number.
    """
    out: dict[str, float | None] = {}
    n = len(times)
    numbers: dict[tuple[str, int], Sequence[float]] = {}
    memo: dict[tuple[str, str, int], float | None] = {}  # (agg, field, lo): windows often start alike
    for first, feats in _windows_of(spec):
        start, inclusive = window_start(first, at)
        lo = bisect_left(times, start) if inclusive else bisect_right(times, start)
        for feat in feats:
            agg, name = feat.agg, feat.field or ""
            key = (agg, name, lo)
            if key in memo:
                value = memo[key]
            elif agg in _NUMERIC:
                nums = numbers.get((name, lo))
                if nums is None:
                    col = num[name] if lo == 0 else num[name][lo:]
                    nums = numbers[(name, lo)] = [x for x in col if x is not None] if None in col else col
                if not nums:
                    value = None
                elif agg == "sum" or agg == "mean":
                    total = memo.get(("sum", name, lo))
                    if total is None:
                        total = memo[("sum", name, lo)] = math.fsum(nums)
                    value = total if agg == "sum" else total / len(nums)
                else:
                    value = _NUMERIC[agg](nums)  # type: ignore[arg-type]
                memo[key] = value
            elif agg == "count":
                value = memo[key] = float(n - lo if not name else sum(1 for v in raw[name][lo:] if v is not None)) or None
            elif agg == "distinct_count":
                value = memo[key] = float(len(set(raw[name][lo:]) - {None})) or None
            else:  # time_since_last
                value = times[-1] - times[-2] if n - lo >= 2 else None
            out[feat.name] = feat.default if value is None else value
    return out


_WINDOWS: dict[int, tuple[UseCaseSpec, list[tuple[FeatureSpec, list[FeatureSpec]]]]] = {}


def _windows_of(spec: UseCaseSpec) -> list[tuple[FeatureSpec, list[FeatureSpec]]]:
    """The spec's features grouped by window definition (one bisection per group), once per spec."""
    cached = _WINDOWS.get(id(spec))
    if cached is None or cached[0] is not spec:
        groups: dict[tuple[str, float, float | None], list[FeatureSpec]] = {}
        for feat in spec.features:
            hop = feat.window if feat.kind == "tumbling" else float(feat.hop or feat.window)
            groups.setdefault((feat.kind, float(feat.window), None if feat.kind == "sliding" else hop), []).append(feat)
        cached = _WINDOWS[id(spec)] = (spec, [(feats[0], feats) for feats in groups.values()])
    return cached[1]


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
