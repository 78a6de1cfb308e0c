"""Window state per model version: the in-memory part of the drift service (no I/O).

* Predictions of role ``champion`` fill a sliding window (ring buffer) of the last
  ``spec.drift.window`` predictions per model version; once full it is evaluated every
  ``spec.drift.step`` predictions (:func:`handlers.evaluate`).
* A version's reference is the profile of its ``promoted`` event. A version without one
  (always version 0, the never-announced baseline) uses its own first
  ``spec.drift.reference_size`` champion predictions as reference ("self-reference");
  those predictions are not tested. The caller persists self-references.
* Labeled champion predictions feed, per version with a validation accuracy, the 0/1
  error stream to ``river.drift.ADWIN`` and ``river.drift.PageHinkley`` (increases only),
  and tumbling windows of ``spec.drift.accuracy_window`` to the accuracy-drop test.
  A concept finding stays active until one window of predictions has been served after
  the last firing (so the incident logic sees it in the next evaluations).
* Dead letters (``events.dlq``) are counted by time and set against each window's span.
* Dedupe: the last ``RECENT_IDS`` prediction ids per version and stream are remembered,
  so a redelivered record never counts twice (within this process).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from river import drift as river_drift

from services.drift import handlers
from services.drift.handlers import Finding, Outcome, Reference, WindowView
from shared.contracts import (
    AlertWindow,
    LabeledPrediction,
    ModelEvent,
    PredictionRecord,
)
from shared.profile import build_profile, category_value
from shared.spec import UseCaseSpec

log = logging.getLogger(__name__)
RECENT_IDS = 20_000
MAX_DEAD_LETTERS = 200_000


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
        self.num[i] = [_num(f.get(n)) for n in self.spec.model.numeric]
        self.cat[i] = [category_value(f.get(n)) for n in self.spec.model.categorical]
        self.score[i], self.at[i], self.degraded[i] = rec.score, rec.served_at, bool(rec.degraded)
        self.pos, self.filled = (i + 1) % self.size, min(self.size, self.filled + 1)

    def view(self, dead_letters: int) -> WindowView:
        n = self.filled
        span = AlertWindow(start=float(self.at[:n].min()), end=float(self.at[:n].max()), count=n)
        numeric = {name: self.num[:n, j] for j, name in enumerate(self.spec.model.numeric)}
        categorical = {name: list(self.cat[:n, j]) for j, name in enumerate(self.spec.model.categorical)}
        return WindowView(span, numeric, categorical, self.score[:n].copy(), int(self.degraded[:n].sum()),
                          dead_letters)


def _num(v: Any) -> float:
    """NaN = missing (absent, null, not a number), inf = non-finite number (as
    :func:`shared.profile.numeric_value` reads values, plus the missing/non-finite split)."""
    if type(v) is float or type(v) is int:
        return float(v) if math.isfinite(v) else math.inf
    return math.nan


@dataclass
class Evaluation:
    """One evaluated window: every outcome (for the state report) and the findings."""

    model_version: int
    span: AlertWindow
    threshold: float
    outcomes: list[Outcome]
    findings: list[Finding]


@dataclass
class VersionState:
    reference: Reference | None = None
    promoted: bool = False
    announced: bool = False  # reference came from a promoted event (wins over self-reference)
    accuracy: float | None = None
    bootstrap: list[PredictionRecord] = field(default_factory=list)
    ring: Ring | None = None
    since_eval: int = 0
    seen: Seen = field(default_factory=Seen)
    seen_labeled: Seen = field(default_factory=Seen)
    labeled: list[bool] = field(default_factory=list)
    detectors: dict[str, Any] = field(default_factory=dict)
    concept: dict[str, Outcome] = field(default_factory=dict)  # by test, latest firing
    concept_left: int = 0  # predictions for which the concept findings stay active


class DriftMonitor:
    """Feed it model events, predictions, labeled predictions and dead letters; it returns
    evaluations (with findings) per model version."""

    def __init__(self, spec: UseCaseSpec) -> None:
        self.spec = spec
        self.versions: dict[int, VersionState] = {}
        self.new_self_references: dict[int, dict[str, Any]] = {}
        self.dead_letters: deque[float] = deque(maxlen=MAX_DEAD_LETTERS)
        self.windows_tested = 0

    def _state(self, version: int) -> VersionState:
        return self.versions.setdefault(version, VersionState())

    def knows(self, version: int) -> bool:
        st = self.versions.get(version)
        return version == 0 or (st is not None and (st.promoted or st.reference is not None))

    def apply_model_event(self, event: ModelEvent) -> None:
        """Only ``promoted`` events carry what drift needs; replays are harmless."""
        if event.event != "promoted":
            return
        st = self._state(event.version)
        st.promoted = True
        if event.reference_profile:
            st.reference, st.announced, st.bootstrap = Reference.from_profile(event.reference_profile), True, []
        accuracy = event.metrics.get("accuracy")
        st.accuracy = float(accuracy) if accuracy is not None else None

    def load_self_reference(self, version: int, profile: dict[str, Any]) -> None:
        st = self._state(version)
        if not st.announced:
            st.reference = Reference.from_profile(profile)

    def add_dead_letter(self, at: float) -> None:
        self.dead_letters.append(at)

    def add_prediction(self, rec: PredictionRecord) -> list[Finding]:
        """Count one served prediction; findings when it triggers an evaluation."""
        ev = self.add(rec)
        return ev.findings if ev else []

    def add(self, rec: PredictionRecord) -> Evaluation | None:
        """Count one served prediction; an :class:`Evaluation` every ``step`` predictions."""
        if rec.role != "champion":
            return None
        st = self._state(rec.model_version)
        if not st.seen.add(rec.prediction_id):
            return None
        if st.reference is None:
            self._bootstrap(rec, st)
            return None
        d = self.spec.drift
        if st.ring is None:
            st.ring = Ring(d.window, self.spec)
        st.ring.add(rec)
        st.since_eval += 1
        st.concept_left = max(0, st.concept_left - 1)
        if st.ring.filled < d.window or st.since_eval < min(d.step, d.window):
            return None
        st.since_eval = 0
        return self._evaluate(rec.model_version, st)

    def _evaluate(self, version: int, st: VersionState) -> Evaluation:
        assert st.ring is not None and st.reference is not None
        at = st.ring.at[: st.ring.filled]
        lo, hi = float(at.min()), float(at.max())
        while self.dead_letters and self.dead_letters[0] < lo - 3600.0:  # roughly time-ordered
            self.dead_letters.popleft()
        dead = sum(1 for t in self.dead_letters if lo <= t <= hi)
        view = st.ring.view(dead)
        outcomes, threshold = handlers.evaluate(view, st.reference, self.spec)
        if st.concept_left > 0:
            outcomes.extend(st.concept.values())
        found = handlers.decide(outcomes, threshold, version, view.span)
        self.windows_tested += 1
        if found:
            log.info("v%d window %.0f..%.0f: %d finding(s): %s", version, view.span.start, view.span.end,
                     len(found), ", ".join(f.outcome.key for f in found))
        return Evaluation(version, view.span, threshold, outcomes, found)

    def _bootstrap(self, rec: PredictionRecord, st: VersionState) -> None:
        st.bootstrap.append(rec)
        if len(st.bootstrap) < self.spec.drift.reference_size:
            return
        rows = st.bootstrap
        profile = build_profile([r.features for r in rows], [r.score for r in rows], self.spec,
                                size=self.spec.drift.reference_size)
        st.reference, st.bootstrap = Reference.from_profile(profile), []
        self.new_self_references[rec.model_version] = profile

    def add_labeled(self, rec: LabeledPrediction) -> list[Finding]:
        """One labeled champion prediction: error-stream detectors and accuracy windows."""
        st = self.versions.get(rec.model_version)
        if rec.role != "champion" or st is None or st.accuracy is None:
            return []
        if not st.seen_labeled.add(rec.prediction_id):
            return []
        error = float((rec.score >= rec.threshold) != bool(rec.actual))
        span = AlertWindow(start=rec.served_at, end=rec.served_at, count=1)
        fired = [o for o in (self._detect(st, name, error) for name in ("adwin", "page_hinkley")) if o]
        st.labeled.append(error == 0.0)
        if len(st.labeled) >= self.spec.drift.accuracy_window:
            d, rows = self.spec.drift, st.labeled
            st.labeled = []
            alpha = min(d.alpha, d.false_alarms_per_100k * len(rows) / 100_000)
            acc = handlers.accuracy_outcome(sum(rows), len(rows), st.accuracy, d.accuracy_drop, alpha)
            fired += [replace(acc, flagged=True)] if acc else []
        if fired:
            st.concept.update({o.test: o for o in fired})
            st.concept_left = self.spec.drift.window
        return [Finding(rec.model_version, o, o.p_value or 0.0, span) for o in fired]

    def _detect(self, st: VersionState, name: str, error: float) -> Outcome | None:
        d = self.spec.drift
        if name not in st.detectors:
            st.detectors[name] = (river_drift.ADWIN(delta=d.adwin_delta) if name == "adwin" else
                                  river_drift.PageHinkley(threshold=d.ph_threshold, delta=d.ph_delta, mode="up"))
        det = st.detectors[name]
        before = getattr(det, "estimation", None)
        det.update(error)
        if not det.drift_detected:
            return None
        if name == "adwin":
            after = det.estimation
            if before is None or after <= before:
                return None  # the error rate fell: not a degradation
            return Outcome("concept_drift", None, "adwin", after, None,
                           f"error rate moved {before:.3f} -> {after:.3f} (ADWIN, delta {d.adwin_delta:g})",
                           flagged=True)
        return Outcome("concept_drift", None, "page_hinkley", error, None,
                       f"error stream rose above its running mean (Page-Hinkley, threshold {d.ph_threshold:g})",
                       flagged=True)

    def take_self_references(self) -> dict[int, dict[str, Any]]:
        out, self.new_self_references = self.new_self_references, {}
        return out
