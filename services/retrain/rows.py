"""The labeled rows the retrain controller learns from (pure, no I/O): one row per labeled
prediction, with the features as served and its lineage (partition/offset); a bounded buffer
of the most recent ones (latest label revision wins); and the train/holdout split.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from shared.contracts import LabeledPrediction


@dataclass(frozen=True)
class Row:
    """One labeled prediction, reduced to what training needs (features AS SERVED), plus
    where it came from (lineage: partition/offset of predictions.labeled) and what production
    answered (``model_version``/``score``: the replay compares against them)."""

    prediction_id: str
    served_at: float
    features: dict[str, Any]
    actual: bool
    revision: int = 1
    labeled_at: float = 0.0
    partition: int = -1
    offset: int = -1
    model_version: int = -1
    score: float | None = None


def to_row(rec: LabeledPrediction, partition: int = -1, offset: int = -1) -> Row | None:
    """Shadow predictions duplicate a champion request, so they would double-count it."""
    if rec.role == "shadow":
        return None
    actual = rec.actual if isinstance(rec.actual, bool) else rec.actual >= 0.5
    return Row(rec.prediction_id, rec.served_at, dict(rec.features), actual, rec.revision, rec.labeled_at,
               partition, offset, rec.model_version, rec.score)


class LabeledBuffer:
    """The most recent labeled rows (bounded), one per prediction id, latest revision wins."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._rows: OrderedDict[str, Row] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, row: Row) -> bool:
        """True if the row was stored (new id or newer revision)."""
        old = self._rows.get(row.prediction_id)
        if old is not None and old.revision > row.revision:
            return False
        self._rows[row.prediction_id] = row
        while len(self._rows) > self.capacity:
            self._rows.popitem(last=False)
        return True

    def eligible(self, since: float | None) -> list[Row]:
        """Rows served at/after ``since``, oldest first (ties broken by id: deterministic)."""
        rows = [r for r in self._rows.values() if since is None or r.served_at >= since]
        return sorted(rows, key=lambda r: (r.served_at, r.prediction_id))

    def count_after(self, after: float | None) -> int:
        return sum(1 for r in self._rows.values() if after is None or r.served_at > after)


def split_window(rows: list[Row], window: int, holdout_fraction: float) -> tuple[list[Row], list[Row]]:
    """The most recent ``window`` rows (``rows`` sorted oldest first); the newest share is the
    holdout, so validation mimics serving the future. Both parts keep at least one row."""
    recent = rows[-window:] if window > 0 else list(rows)
    if len(recent) < 2:
        return recent, []
    n_hold = min(len(recent) - 1, max(1, math.ceil(len(recent) * holdout_fraction)))
    return recent[:-n_hold], recent[-n_hold:]
