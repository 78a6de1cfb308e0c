"""The bounded in-memory windows the drift monitor evaluates (pure, no I/O): the last
``spec.drift.window`` predictions of a version, column-wise in numpy arrays (cheap to test
a whole column at once), and a bounded set of recently seen ids for dedupe.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import numpy as np

from services.drift.handlers import WindowView
from shared.contracts import AlertWindow, PredictionRecord
from shared.profile import category_value
from shared.spec import UseCaseSpec

RECENT_IDS = 20_000


class Seen:
    """A bounded insertion-ordered set of ids (O(1) add and eviction)."""

    def __init__(self, cap: int = RECENT_IDS) -> None:
        self.cap, self.ids = cap, OrderedDict[str, None]()

    def add(self, key: str) -> bool:
        """False if ``key`` was already seen."""
        if key in self.ids:
            return False
        self.ids[key] = None
        if len(self.ids) > self.cap:
            self.ids.popitem(last=False)
        return True


class Ring:
    """The last ``size`` predictions, column-wise (numeric: NaN missing, inf non-finite)."""

    def __init__(self, size: int, spec: UseCaseSpec) -> None:
        self.size, self.spec, self.pos, self.filled = size, spec, 0, 0
        self.num = np.full((size, len(spec.model.numeric)), np.nan)
        self.cat = np.empty((size, len(spec.model.categorical)), dtype=object)
        self.score, self.at = np.zeros(size), np.zeros(size)
        self.degraded = np.zeros(size, dtype=bool)

    def add(self, rec: PredictionRecord) -> None:
        i, f = self.pos, rec.features
        self.num[i] = [numeric_cell(f.get(n)) for n in self.spec.model.numeric]
        self.cat[i] = [category_value(f.get(n)) for n in self.spec.model.categorical]
        self.score[i], self.at[i], self.degraded[i] = rec.score, rec.served_at, bool(rec.degraded)
        self.pos, self.filled = (i + 1) % self.size, min(self.size, self.filled + 1)

    def change_point(self, column: str | None, reference: np.ndarray) -> float | None:
        """Served time where the window's values of ``column`` (None: the score) leave the
        reference: each value becomes its reference CDF u (0.5 on average before a change),
        and the split maximises |sum of (u - 0.5) after it| / sqrt(its length). A drifted
        window is usually part old, part new data, so its start is too early a change point."""
        n = self.filled
        order = np.argsort(self.at[:n], kind="stable")
        if column is None:
            values = self.score[:n][order]
        elif column in self.spec.model.numeric:
            values = self.num[:n, self.spec.model.numeric.index(column)][order]
        else:
            return None
        ok = np.isfinite(values)
        if ok.sum() < 20 or reference.size < 20:
            return None
        values, times = values[ok], self.at[:n][order][ok]
        u = (np.searchsorted(reference, values, "left") + np.searchsorted(reference, values, "right")) / (2 * reference.size)
        tail = np.cumsum((u - 0.5)[::-1])[::-1]  # tail[k] = sum over i >= k
        k = np.arange(1, values.size)
        best = int(np.argmax(np.abs(tail[1:]) / np.sqrt(values.size - k))) + 1
        return float(times[best])

    def view(self, dead_letters: int) -> WindowView:
        """Oldest first (serial correlation is measured in arrival order)."""
        n = self.filled
        idx = np.r_[self.pos:n, 0:self.pos] if n == self.size else np.arange(n)
        span = AlertWindow(start=float(self.at[:n].min()), end=float(self.at[:n].max()), count=n)
        numeric = {name: self.num[idx, j] for j, name in enumerate(self.spec.model.numeric)}
        categorical = {name: list(self.cat[idx, j]) for j, name in enumerate(self.spec.model.categorical)}
        return WindowView(span, numeric, categorical, self.score[idx], int(self.degraded[:n].sum()),
                          dead_letters)


def numeric_cell(v: Any) -> float:
    """NaN = missing (absent, null, not a number), inf = non-finite number (as
    :func:`shared.profile.numeric_value` reads values, plus the missing/non-finite split)."""
    if type(v) is float or type(v) is int:
        return float(v) if math.isfinite(v) else math.inf
    return math.nan
