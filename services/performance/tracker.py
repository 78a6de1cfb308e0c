"""Rolling windows per (model version, slice) and the snapshots published from them.

Pure state (no I/O): the app feeds it records and asks for :meth:`Tracker.snapshot`.

* labeled window: the last ``monitoring.window`` labeled predictions, keyed by prediction
  id. A correction (higher revision) REPLACES the entry, a redelivery or older revision is
  ignored: every prediction counts once, with its latest label.
* score window: the last ``monitoring.window`` predictions' scores, for the estimate used
  while fewer than ``monitoring.min_labels`` labels have matured.
* matured window (per model version): the last predictions whose fate is known, labeled
  (``predictions.labeled``) or not (``labels.missing``) -> label coverage; label delays
  (``labeled_at - served_at`` of first revisions) -> p50 / p95.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass

from services.performance.handlers import (
    classification_metrics,
    delay_quantiles,
    estimated_accuracy,
    finite,
    regression_metrics,
    slice_keys,
)
from shared.contracts import (
    LabeledPrediction,
    LabelMissing,
    MetricsRecord,
    PredictionRecord,
)
from shared.spec import MonitoringSpec, TaskKind

Key = tuple[int, str | None]


@dataclass(frozen=True)
class Outcome:
    score: float
    threshold: float
    predicted: bool
    actual: bool | float
    revision: int


class Tracker:
    """``task`` (spec.model.task): "binary" -> classification metrics and the score-based
    accuracy estimate; "regression" (score = predicted value) -> MAE, RMSE and bias."""

    def __init__(self, monitoring: MonitoringSpec, task: TaskKind = "binary") -> None:
        self.task = task
        self.window, self.min_labels, self.slices = monitoring.window, monitoring.min_labels, monitoring.slices
        self.labeled: dict[Key, OrderedDict[str, Outcome]] = {}
        self.scores: dict[Key, deque[tuple[float, float]]] = {}
        self.matured: dict[int, OrderedDict[str, bool]] = {}
        self.delays: dict[int, deque[float]] = {}
        self.counts: dict[int, Counter[str]] = {}

    def on_prediction(self, rec: PredictionRecord) -> None:
        for key in slice_keys(rec.features, self.slices):
            window = self.scores.setdefault((rec.model_version, key), deque(maxlen=self.window))
            window.append((rec.score, rec.threshold))

    def on_labeled(self, rec: LabeledPrediction) -> str:
        """Add one labeled prediction; returns new | correction | stale | non_binary | non_numeric."""
        counts = self.counts.setdefault(rec.model_version, Counter())
        if self.task == "binary" and not isinstance(rec.actual, bool):
            counts["non_binary"] += 1  # a numeric actual on a classification spec
            return "non_binary"
        if self.task == "regression" and (isinstance(rec.actual, bool) or not math.isfinite(rec.actual)):
            counts["non_numeric"] += 1
            return "non_numeric"
        outcome = Outcome(rec.score, rec.threshold, rec.label, rec.actual, rec.revision)
        results = [self._add((rec.model_version, key), rec.prediction_id, outcome)
                   for key in slice_keys(rec.features, self.slices)]
        result = results[0]  # the all-predictions window decides what this record was
        if result != "stale" and rec.prediction_id not in self._matured(rec.model_version):
            self._mature(rec.model_version, rec.prediction_id, True)
            if rec.revision == 1:
                self.delays.setdefault(rec.model_version, deque(maxlen=self.window)).append(
                    max(0.0, rec.labeled_at - rec.served_at))
        counts[result] += 1
        return result

    def on_missing(self, rec: LabelMissing) -> None:
        if rec.prediction_id not in self._matured(rec.model_version):
            self._mature(rec.model_version, rec.prediction_id, False)
            self.counts.setdefault(rec.model_version, Counter())["missing"] += 1

    def _add(self, key: Key, pid: str, outcome: Outcome) -> str:
        window = self.labeled.setdefault(key, OrderedDict())
        old = window.get(pid)
        if old is not None and old.revision >= outcome.revision:
            return "stale"
        window[pid] = outcome  # a correction keeps its place: it is the same prediction
        while len(window) > self.window:
            window.popitem(last=False)
        return "new" if old is None else "correction"

    def _matured(self, version: int) -> OrderedDict[str, bool]:
        return self.matured.setdefault(version, OrderedDict())

    def _mature(self, version: int, pid: str, labeled: bool) -> None:
        window = self._matured(version)
        window[pid] = labeled
        while len(window) > self.window:
            window.popitem(last=False)

    def snapshot(self, now: float) -> list[MetricsRecord]:
        """One performance record per (version, slice) plus one labels record per version."""
        out = [self._performance(key, now) for key in sorted(set(self.labeled) | set(self.scores), key=_order)]
        return [r for r in out if r is not None] + [self._labels(v, now) for v in sorted(self.matured)]

    def _performance(self, key: Key, now: float) -> MetricsRecord | None:
        version, slice_ = key
        window = list(self.labeled.get(key, {}).values())
        if self.task == "regression":
            return self._regression(key, window, now)
        if len(window) >= self.min_labels:
            metrics = classification_metrics([o.score for o in window], [o.predicted for o in window],
                                              [o.actual for o in window])
            # the estimate on the same rows, side by side: a gap means the scores are not calibrated
            metrics["estimated_accuracy"] = estimated_accuracy([o.score for o in window],
                                                               [o.threshold for o in window])
            return MetricsRecord(kind="performance", model_version=version, slice=slice_, estimated=False,
                                 window=len(window), metrics=finite(metrics), computed_at=now)
        scores = self.scores.get(key)
        if not scores:
            return None
        metrics = {"accuracy": estimated_accuracy([s for s, _ in scores], [t for _, t in scores]),
                   "predictions": float(len(scores)), "labeled": float(len(window))}
        return MetricsRecord(kind="performance", model_version=version, slice=slice_, estimated=True,
                             window=len(scores), metrics=finite(metrics), computed_at=now)

    def _regression(self, key: Key, window: list[Outcome], now: float) -> MetricsRecord | None:
        """Measured errors once ``min_labels`` exist; before that only the prediction
        count and mean (estimated=True: there is no label-free estimate of an error)."""
        version, slice_ = key
        if len(window) >= self.min_labels:
            metrics = regression_metrics([o.score for o in window], [float(o.actual) for o in window])
            return MetricsRecord(kind="performance", model_version=version, slice=slice_, estimated=False,
                                 window=len(window), metrics=finite(metrics), computed_at=now)
        scores = self.scores.get(key)
        if not scores:
            return None
        metrics = {"predictions": float(len(scores)), "labeled": float(len(window)),
                   "mean_prediction": sum(s for s, _ in scores) / len(scores)}
        return MetricsRecord(kind="performance", model_version=version, slice=slice_, estimated=True,
                             window=len(scores), metrics=finite(metrics), computed_at=now)

    def _labels(self, version: int, now: float) -> MetricsRecord:
        matured = self.matured[version]
        labeled = sum(matured.values())
        counts = self.counts.get(version, Counter())
        metrics = {"coverage": labeled / len(matured) if matured else float("nan"),
                   "matured": float(len(matured)), "missing_in_window": float(len(matured) - labeled),
                   "corrections": float(counts["correction"]), "labeled_total": float(counts["new"]),
                   "missing_total": float(counts["missing"]),
                   **delay_quantiles(list(self.delays.get(version, ())))}
        return MetricsRecord(kind="labels", model_version=version, window=len(matured),
                             metrics=finite(metrics), computed_at=now)


def _order(key: Key) -> tuple[int, str]:
    return key[0], key[1] or ""
