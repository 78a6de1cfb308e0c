"""What one rollout stage has seen: labeled outcomes per side, with running metrics.

Why running sums: the controller re-evaluates its verdict after every input batch, so the
metrics must cost O(1), not a pass over thousands of predictions. A label correction
(``revision`` n + 1) replaces the earlier outcome: its contribution is subtracted first.

Shadow stage: the challenger never answers, so its shadow records (``<id>.shadow`` on
``predictions``) are never labeled. They are PAIRED here with the labeled champion record of
the same request (``<id>`` on ``predictions.labeled``): both models are judged on exactly the
same requests and labels. Canary stage: each side's own labeled predictions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from shared.contracts import LabeledPrediction, PredictionRecord

EPS = 1e-15
SHADOW_SUFFIX = ".shadow"
MAX_TRACKED = 200_000  # ids remembered per side and stage (memory bound; later ones only counted)


@dataclass(frozen=True)
class Outcome:
    score: float
    threshold: float
    actual: bool
    revision: int = 1


def actual_of(rec: LabeledPrediction) -> bool:
    return rec.actual if isinstance(rec.actual, bool) else rec.actual >= 0.5


class Side:
    """Labeled outcomes of one model in one stage (one per prediction id, latest revision)."""

    def __init__(self, cap: int = MAX_TRACKED) -> None:
        self.cap = cap
        self.items: dict[str, Outcome] = {}
        self._tp = self._fp = self._tn = self._fn = 0
        self._logloss = self._logloss_sq = 0.0  # sums of per-prediction log loss and its square

    def __len__(self) -> int:
        return len(self.items)

    def add(self, pid: str, outcome: Outcome) -> bool:
        """True if stored (new id, or a newer revision of a known one)."""
        old = self.items.get(pid)
        if old is not None:
            if old.revision >= outcome.revision:
                return False
            self._account(old, -1)
        elif len(self.items) >= self.cap:
            return False
        self.items[pid] = outcome
        self._account(outcome, +1)
        return True

    def _account(self, o: Outcome, sign: int) -> None:
        p = min(max(o.score, EPS), 1 - EPS)
        loss = -math.log(p if o.actual else 1 - p)
        self._logloss += sign * loss
        self._logloss_sq += sign * loss * loss
        pred = o.score >= o.threshold
        if pred and o.actual:
            self._tp += sign
        elif pred:
            self._fp += sign
        elif o.actual:
            self._fn += sign
        else:
            self._tn += sign

    def metrics(self) -> dict[str, float]:
        """Same definitions as ``shared.modeling.evaluate`` (the validation gate's)."""
        n = len(self.items)
        tp, fp, fn = self._tp, self._fp, self._fn
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out = {"accuracy": (tp + self._tn) / n if n else 0.0, "log_loss": self._logloss / n if n else 0.0,
               "f1": f1, "count": float(n)}
        if n >= 2:
            out |= {"accuracy_se": self.se("accuracy"), "log_loss_se": self.se("log_loss")}
        return out

    def se(self, metric: str) -> float:
        """Standard error of the mean for per-prediction metrics (accuracy, log loss); inf
        below two predictions; 0 for F1 (not a mean: compared on point estimates)."""
        n = len(self.items)
        if metric not in ("accuracy", "log_loss"):
            return 0.0
        if n < 2:
            return math.inf
        if metric == "accuracy":
            mean, mean_sq = (self._tp + self._tn) / n, (self._tp + self._tn) / n
        else:
            mean, mean_sq = self._logloss / n, self._logloss_sq / n
        var = max(0.0, mean_sq - mean * mean) * n / (n - 1)
        return math.sqrt(var / n)


class StageEvidence:
    """Inputs of one stage, filtered to it: served at/after the stage start, by the stage's
    champion (role ``champion``) and challenger (role ``shadow`` or ``challenger``)."""

    def __init__(self, strategy: str, version: int, champion: int, started_at: float,
                 cap: int = MAX_TRACKED) -> None:
        self.strategy, self.version, self.champion, self.started_at = strategy, version, champion, started_at
        self.cap = cap
        self.challenger_side, self.champion_side = Side(cap), Side(cap)
        self.shadow_scores: dict[str, tuple[float, float]] = {}  # request id -> (score, threshold)
        self.waiting: dict[str, Outcome] = {}  # labeled champion outcomes whose shadow twin is unseen
        self.shadow_seen = 0  # shadow-scored requests (distinct ids up to ``cap``, then counted)

    @property
    def shadow_count(self) -> int:
        return self.shadow_seen

    def add_prediction(self, rec: PredictionRecord) -> bool:
        """Shadow stage: one shadow-scored request of the challenger (duplicates ignored)."""
        if self.strategy != "shadow" or rec.role != "shadow" or rec.model_version != self.version:
            return False
        if rec.served_at < self.started_at:
            return False
        pid = rec.prediction_id.removesuffix(SHADOW_SUFFIX)
        if pid in self.shadow_scores:
            return False
        self.shadow_seen += 1
        if len(self.shadow_scores) >= self.cap:
            return True
        self.shadow_scores[pid] = (rec.score, rec.threshold)
        labeled = self.waiting.pop(pid, None)
        if labeled is not None:
            self._pair(pid, labeled)
        return True

    def add_labeled(self, rec: LabeledPrediction) -> bool:
        """A labeled prediction of either side (canary), or of the champion (shadow: paired)."""
        if rec.served_at < self.started_at:
            return False
        outcome = Outcome(rec.score, rec.threshold, actual_of(rec), rec.revision)
        if rec.role == "champion" and rec.model_version == self.champion:
            if self.strategy == "canary":
                return self.champion_side.add(rec.prediction_id, outcome)
            if rec.prediction_id in self.shadow_scores:
                return self._pair(rec.prediction_id, outcome)
            if len(self.waiting) < self.cap:
                self.waiting[rec.prediction_id] = outcome
            return False
        if self.strategy == "canary" and rec.role == "challenger" and rec.model_version == self.version:
            return self.challenger_side.add(rec.prediction_id, outcome)
        return False

    def _pair(self, pid: str, champion: Outcome) -> bool:
        score, threshold = self.shadow_scores[pid]
        if not self.champion_side.add(pid, champion):
            return False
        self.challenger_side.add(pid, Outcome(score, threshold, champion.actual, champion.revision))
        return True
