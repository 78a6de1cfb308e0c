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
  and tumbling windows of ``spec.drift.accuracy_window`` to the accuracy-drop test. Its
  reference pools the validation accuracy (weighted by its holdout size) with the version's
  own first windows that did not fire (up to ``reference_size`` labels), taken at its lower
  confidence bound: a small holdout alone is too noisy a yardstick (one row of an 80-row
  holdout is 1.25 points).
  A concept finding stays active until one window of predictions has been served after
  the last firing (so the incident logic sees it in the next evaluations).
* Dead letters (``events.dlq``) are counted by time and set against each window's span.
* Dedupe: the last ``window.RECENT_IDS`` prediction ids per version and stream are remembered,
  so a redelivered record never counts twice (within this process).
"""

from __future__ import annotations

import logging
import math
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from river import drift as river_drift

from services.drift import handlers, serial, stats
from services.drift.handlers import Finding, Outcome, Reference
from services.drift.window import Ring, Seen, numeric_cell
from shared.contracts import (
    AlertWindow,
    LabeledPrediction,
    ModelEvent,
    PredictionRecord,
)
from shared.profile import build_profile, category_value
from shared.spec import UseCaseSpec

log = logging.getLogger(__name__)
MAX_DEAD_LETTERS = 200_000
MAX_LABELED_TIMES = 100_000  # served times of the last labeled predictions (ADWIN's cut point)
REFERENCE_CHUNKS = 4  # self-reference check: the first quarter is tested against the rest
REFERENCE_Z = 1.645  # accuracy reference: one-sided 95 % lower bound
REFERENCE_ALPHA = 0.01  # family-wise: a false "unsettled" only costs one more chunk of waiting


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
    holdout_n: float = 0.0  # rows behind ``accuracy`` (its weight in the pooled reference)
    live_hits: int = 0  # correct / labeled champion predictions pooled into the reference
    live_n: int = 0
    bootstrap: list[PredictionRecord] = field(default_factory=list)
    ring: Ring | None = None
    since_eval: int = 0
    seen: Seen = field(default_factory=Seen)
    seen_labeled: Seen = field(default_factory=Seen)
    labeled: list[bool] = field(default_factory=list)
    detectors: dict[str, Any] = field(default_factory=dict)
    concept: dict[str, Outcome] = field(default_factory=dict)  # by test, latest firing
    concept_left: int = 0  # predictions for which the concept findings stay active
    burned_in: int = 0  # self-reference: unsettled first predictions dropped so far
    # (served_at, error) of the last labeled predictions: where a concept change shows.
    errors: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=MAX_LABELED_TIMES))
    ph_since: int = 0  # labeled predictions since Page-Hinkley last fired


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
        st = self.versions.get(version)
        if st is None:
            st = self.versions[version] = VersionState()
        return st

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
        st.holdout_n = float(event.metrics.get("count") or self.spec.drift.accuracy_window)

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
        found = [self._located(f, st.ring, st.reference)
                 for f in handlers.decide(outcomes, threshold, version, view.span, self.spec)]
        self.windows_tested += 1
        if found:
            log.info("v%d window %.0f..%.0f: %d finding(s): %s", version, view.span.start, view.span.end,
                     len(found), ", ".join(f.outcome.key for f in found))
        return Evaluation(version, view.span, threshold, outcomes, found)

    @staticmethod
    def _located(f: Finding, ring: Ring, ref: Reference) -> Finding:
        """A KS finding gets the served time where its column changed (see Ring.change_point)."""
        if f.outcome.test != "ks" or f.outcome.change_at is not None:
            return f
        name = f.outcome.feature
        at = ring.change_point(name, ref.numeric.get(name, np.empty(0)) if name else ref.score)
        return f if at is None else replace(f, outcome=replace(f.outcome, change_at=at))

    def _bootstrap(self, rec: PredictionRecord, st: VersionState) -> None:
        """Collect ``reference_size`` predictions whose chunks agree with each other: a
        reference caught during a transient (warm-up traffic, features still loading)
        would make every later window look drifted, so an unsettled start is dropped
        (up to ``reference_max_burn_in`` x reference_size predictions, then accepted)."""
        st.bootstrap.append(rec)
        d = self.spec.drift
        if len(st.bootstrap) < d.reference_size:
            return
        rows = st.bootstrap
        if st.burned_in < d.reference_max_burn_in * d.reference_size:
            cut, why = reference_settled(rows, self.spec)
            if cut:
                st.bootstrap, st.burned_in = rows[cut:], st.burned_in + cut
                log.info("v%d self-reference: dropped %d unsettled first predictions (%s)",
                         rec.model_version, cut, why)
                return
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
        st.errors.append((rec.served_at, error))
        st.ph_since += 1
        fired = [o for o in (self._detect(st, name, error) for name in ("adwin", "page_hinkley")) if o]
        st.labeled.append(error == 0.0)
        if len(st.labeled) >= self.spec.drift.accuracy_window:
            d, rows = self.spec.drift, st.labeled
            st.labeled = []
            alpha = min(d.alpha, d.false_alarms_per_100k * len(rows) / 100_000)
            acc = handlers.accuracy_outcome(sum(rows), len(rows), reference_accuracy(st), d.accuracy_drop, alpha)
            fired += [replace(acc, flagged=True, change_at=change_point(st.errors, len(rows)))] if acc else []
            if acc is None and st.live_n < d.reference_size:  # a window that fired is the drop, not the yardstick
                st.live_hits, st.live_n = st.live_hits + sum(rows), st.live_n + len(rows)
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
            # The change lies within what ADWIN kept after its cut (its buckets are coarse).
            cut = change_point(st.errors, int(getattr(det, "width", 0) or 0))
            return Outcome("concept_drift", None, "adwin", after, None,
                           f"error rate moved {before:.3f} -> {after:.3f} (ADWIN, delta {d.adwin_delta:g})",
                           flagged=True, change_at=cut)
        cut, st.ph_since = change_point(st.errors, st.ph_since), 0
        return Outcome("concept_drift", None, "page_hinkley", error, None,
                       f"error stream rose above its running mean (Page-Hinkley, threshold {d.ph_threshold:g})",
                       flagged=True, change_at=cut)

    def take_self_references(self) -> dict[int, dict[str, Any]]:
        out, self.new_self_references = self.new_self_references, {}
        return out


def reference_accuracy(st: VersionState, z: float = REFERENCE_Z) -> float:
    """The accuracy-drop test's yardstick: the Wilson lower bound of the validation accuracy
    pooled with the version's first live windows (see the module docstring). A lower bound,
    because the test treats its reference as exact: a lucky 30-row holdout at 1.0 must not
    make a 0.95 model look drifted; the bound tightens as live labels pool in."""
    assert st.accuracy is not None
    n = st.holdout_n + st.live_n
    if n <= 0:
        return st.accuracy
    p = min(1.0, max(0.0, (st.accuracy * st.holdout_n + st.live_hits) / n))
    centre, spread = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n)


def change_point(errors: deque[tuple[float, float]], last: int) -> float:
    """Served time of the first labeled prediction after the most likely change of the
    error rate among the ``last`` ones (all if 0 or more than kept)."""
    tail = list(errors)[-last:] if 0 < last <= len(errors) else list(errors)
    return tail[serial.mean_shift_point([e for _, e in tail])][0]


def reference_settled(rows: list[PredictionRecord], spec: UseCaseSpec) -> tuple[int, str]:
    """(first predictions to drop, why): the first of REFERENCE_CHUNKS chunks is tested
    against the later ones (KS on every numeric input and the score, with effective sizes
    under serial correlation; chi-square on every categorical input and on numeric
    missingness). A start-up transient (warm-up requests, features still loading) shows
    as a first chunk unlike the rest: it is dropped. (0, "") when the start looks settled."""
    size = len(rows) // REFERENCE_CHUNKS
    cols = {name: np.array([numeric_cell(r.features.get(name)) for r in rows]) for name in spec.model.numeric}
    cols["score"] = np.array([r.score for r in rows], dtype=float)
    cats = {name: [category_value(r.features.get(name)) or "<missing>" for r in rows]
            for name in spec.model.categorical}
    cats.update({f"{name} missing": ["missing" if math.isnan(v) else "present" for v in col]
                 for name, col in cols.items() if np.isnan(col).any()})
    alpha = REFERENCE_ALPHA / (len(cols) + len(cats))
    for name, col in cols.items():
        first, rest = col[:size], col[size:]
        rho = serial.serial_correlation(rest)
        first, rest = np.sort(first[np.isfinite(first)]), np.sort(rest[np.isfinite(rest)])
        if min(first.size, rest.size) < handlers.MIN_SAMPLES:
            continue
        d = stats.ks_statistic(first, rest)
        if serial.ks_pvalue_effective(d, serial.effective_size(first.size, rho),
                                     serial.effective_size(rest.size, rho)) < alpha:
            return size, f"{name}: the first {size} differ from the next {len(rows) - size}, KS {d:.3f}"
    for name, vals in cats.items():
        res = stats.chi2_test(vals[:size], Counter(vals[size:]))
        if res is not None and res.p_value < alpha:
            return size, f"{name}: the first {size} differ from the next {len(rows) - size}, chi2 {res.statistic:.3g}"
    return 0, ""
