"""Running aggregates of an entity's windows: the streaming engine's features without a
pass over the window.

Why: an entity's features are evaluated at its newest event, over every window the spec
defines. Aggregating each window anew costs O(window) per entity and batch, and a hot
entity under a 24 h window holds tens of thousands of events (measured, one entity, a
window grown to 20k events: 889 us per event with slices, 20 us kept running). Windows
of fewer than ``Running.FILL_FROM`` events keep using slices (cheaper there). :class:`Running` keeps, per
window definition, the aggregates of the events inside it: an event entering (an insert,
in order or late) or leaving (the window start moving past it) updates them in O(1);
they equal what :func:`services.features.windows.field_aggregates` gives on the slice:

* ``sum``/``mean``: the exact sum, as an integer in units of ``2**-shift`` (every finite
  float is an integer multiple of a power of two), rounded once by ``int / int``, which
  rounds correctly, as ``math.fsum`` does (to nearest, ties to even);
* ``count`` (of a field), numbers: counters; ``distinct_count``: a counter per value;
* ``min``/``max``: the best number so far; when one equal to it leaves, or an equal zero
  arrives (``max()`` keeps the first of equal numbers: of 0.0 and -0.0, whichever comes
  first; equal non-zero floats are the same number), it is recomputed from the slice on
  the next read;
* ``last`` scans back from the newest event; ``std`` (two passes) is computed on the
  slice, as the batch engine does.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from services.features.windows import NUMERIC_AGGREGATIONS, FieldAggs

Columns = Mapping[str, Sequence[Any]]  # field -> its values, in canonical order
Numbers = Mapping[str, Sequence[float | None]]  # field -> numeric(value), for numeric fields


class _Field:
    """One field's aggregates over one window."""

    __slots__ = ("aggs", "shift", "total", "numbers", "present", "counts", "best", "stale")

    def __init__(self, aggs: FieldAggs) -> None:
        self.aggs = aggs
        self.shift = 0  # total is in units of 2**-shift
        self.total = 0
        self.numbers = 0
        self.present = 0
        self.counts: dict[Any, int] = {}  # value -> how many times it is in the window
        self.best: dict[str, float | None] = {a: None for a in ("max", "min") if a in aggs.single_pass}
        self.stale = True  # best must be recomputed from the slice

    def enter(self, value: Any, x: float | None, sign: int = 1) -> None:
        """``sign`` 1: ``value`` (``x`` as a number) entered the window; -1: it left."""
        if value is not None:
            self.present += sign
            if self.aggs.distinct:
                left = self.counts.get(value, 0) + sign
                if left:
                    self.counts[value] = left
                else:
                    del self.counts[value]
        if x is None:
            return
        self.numbers += sign
        if self.aggs.total:
            scaled = self._scaled(x)  # first: it may rescale total
            self.total += sign * scaled
        if self.stale:
            return
        for agg, best in self.best.items():
            if best is None:  # the window had no number
                self.best[agg] = x
            elif x == best:  # left: was it the only one? arrived: is it first (0.0 / -0.0)?
                if sign < 0 or x == 0.0:
                    self.stale = True
            elif sign > 0 and (x > best if agg == "max" else x < best):
                self.best[agg] = x

    def fill(self, col: Sequence[Any], ncol: Sequence[float | None] | None, lo: int) -> None:
        """Start from the slice ``[lo:]`` (in bulk: a tenth of what entering each costs)."""
        values = col[lo:]
        self.present = len(values) - values.count(None)
        if self.aggs.distinct:
            counts = Counter(values)
            counts.pop(None, None)
            self.counts = dict(counts)
        if ncol is None:
            return
        nums = [x for x in ncol[lo:] if x is not None]
        self.numbers = len(nums)
        if self.aggs.total and nums:
            ratios = list(map(float.as_integer_ratio, nums))
            unit = max(d for _, d in ratios)  # powers of two: the finest divides the others
            self.shift = unit.bit_length() - 1
            self.total = sum(n * (unit // d) for n, d in ratios)

    def _scaled(self, x: float) -> int:
        numerator, denominator = x.as_integer_ratio()
        need = denominator.bit_length() - 1
        if need > self.shift:
            self.total <<= need - self.shift
            self.shift = need
        return numerator << (self.shift - need)

    def aggregates(self, num: Sequence[float | None] | None, lo: int) -> dict[str, float | None]:
        """What :func:`services.features.windows.field_aggregates` gives for ``[lo:]``."""
        aggs, values = self.aggs, {}
        if num is not None and aggs.numeric:
            if not self.numbers:
                values.update(dict.fromkeys(aggs.numeric))
            else:
                if aggs.total:
                    total = self._sum()
                    values["sum"], values["mean"] = total, None if total is None else total / self.numbers
                for agg in aggs.single_pass:
                    values[agg] = self._single(agg, num, lo)
        if aggs.count:
            values["count"] = float(self.present) or None
        if aggs.distinct:
            values["distinct_count"] = float(len(self.counts)) or None
        return values

    def _sum(self) -> float | None:
        if not self.total:
            return 0.0  # as fsum: an exact zero is +0.0, even of -0.0s
        try:
            return self.total / (1 << self.shift)
        except OverflowError:  # as exact_sum
            return None

    def _single(self, agg: str, num: Sequence[float | None], lo: int) -> float | None:
        if agg == "last":
            return next(x for x in reversed(num) if x is not None)  # one is in [lo:]
        if agg in self.best and not self.stale:
            return self.best[agg]
        nums = [x for x in num[lo:] if x is not None]
        if agg not in self.best:
            return NUMERIC_AGGREGATIONS[agg](nums)
        self.best = {a: NUMERIC_AGGREGATIONS[a](nums) for a in self.best}
        self.stale = False
        return self.best[agg]


class Running:
    """One window definition's aggregates over an entity's events: those from index ``lo``
    on (the events after ``start``, or at it when ``inclusive``), as last advanced. Filled
    by its first advance; until then edits are not tracked."""

    __slots__ = ("lo", "start", "inclusive", "fields", "filled")
    # Events in a window from which it is kept running (see Window.features): below, a
    # pass over the slice costs less than keeping the aggregates (measured).
    FILL_FROM: ClassVar[int] = 64

    def __init__(self, plans: Mapping[str, FieldAggs], inclusive: bool) -> None:
        self.lo = 0
        self.start = -math.inf
        self.inclusive = inclusive
        self.fields = {name: _Field(aggs) for name, aggs in plans.items()}
        self.filled = False

    def inserted(self, index: int, time: float, raw: Columns, num: Numbers) -> None:
        """The columns got an event at ``index`` (in or before the window, by its time)."""
        if not self.filled:
            return
        if time > self.start or (self.inclusive and time == self.start):
            for name, f in self.fields.items():
                col = num.get(name)
                f.enter(raw[name][index], col[index] if col is not None else None)
        else:
            self.lo += 1

    def pruning(self, n: int, newest: float, raw: Columns, num: Numbers) -> None:
        """The columns are about to lose their first ``n`` events (the newest at ``newest``).
        They are before every window, but this one may lag (not evaluated since the
        evaluation shared another window's start): those of them still in it leave now."""
        if not self.filled:
            return
        if n <= self.lo:
            self.lo -= n
            return
        for name, f in self.fields.items():
            col, ncol = raw[name], num.get(name)
            for i in range(self.lo, n):
                f.enter(col[i], ncol[i] if ncol is not None else None, -1)
        self.lo, self.start = 0, max(self.start, newest)

    def advance(self, lo: int, start: float, raw: Columns, num: Numbers) -> None:
        """The window now starts at index ``lo`` (time ``start``); it never moves back.
        The first call fills it from the slice."""
        assert not self.filled or lo >= self.lo, (lo, self.lo)
        for name, f in self.fields.items():
            col, ncol = raw[name], num.get(name)
            if not self.filled:
                f.fill(col, ncol, lo)
                continue
            for i in range(self.lo, lo):  # the events that left
                f.enter(col[i], ncol[i] if ncol is not None else None, -1)
        self.lo, self.start, self.filled = lo, start, True

    def aggregates(self, name: str, num: Numbers) -> dict[str, float | None]:
        return self.fields[name].aggregates(num.get(name), self.lo)
