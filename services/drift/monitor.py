"""Window state per model version: the in-memory part of the drift service (no I/O).

* Predictions of role ``champion`` fill tumbling (non-overlapping) count windows of
  ``spec.drift.window``, one per model version (the version that served them).
* A version's reference is the profile of its ``promoted`` event. A version without one
  (always version 0, the never-announced baseline) uses its own first
  ``spec.drift.reference_size`` champion predictions as reference ("self-reference");
  those predictions are not tested. The caller persists self-references (they are not
  in any topic) so a restart does not re-base the reference on possibly drifted traffic.
* Labeled champion predictions fill tumbling windows of ``spec.drift.accuracy_window``,
  only for versions with a validation accuracy (promoted events); version 0 has none,
  so concept drift is not checked while the baseline serves.
* Dedupe: windows are keyed by prediction id, and the ids of recently closed windows
  of the same version are remembered, so a redelivered record never counts twice
  (within this process; after a restart the open windows start empty anyway).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from services.drift import handlers
from services.drift.handlers import Finding, Reference
from shared.contracts import AlertWindow, LabeledPrediction, ModelEvent, PredictionRecord
from shared.profile import build_profile
from shared.spec import UseCaseSpec


log = logging.getLogger(__name__)
RECENT_IDS = 20_000  # ids of closed windows remembered per window (dedupe of redeliveries)


@dataclass
class Window:
    """Rows of one tumbling window, keyed by prediction id: (served_at, payload)."""

    rows: dict[str, tuple[float, Any]] = field(default_factory=dict)
    recent: dict[str, None] = field(default_factory=dict)  # insertion-ordered set, capped

    def add(self, prediction_id: str, served_at: float, payload: Any) -> bool:
        """False if the id was already counted (this window or a recent closed one)."""
        if prediction_id in self.rows or prediction_id in self.recent:
            return False
        self.rows[prediction_id] = (served_at, payload)
        return True

    def close(self) -> tuple[AlertWindow, list[Any]]:
        """Empty the window, remembering its ids; return its span and payloads."""
        times = [t for t, _ in self.rows.values()]
        span = AlertWindow(start=min(times), end=max(times), count=len(times))
        payloads = [p for _, p in self.rows.values()]
        self.remember(self.rows)
        self.rows = {}
        return span, payloads

    def remember(self, ids: Any) -> None:
        self.recent.update(dict.fromkeys(ids))
        for old in list(self.recent)[: max(0, len(self.recent) - RECENT_IDS)]:
            del self.recent[old]


@dataclass
class VersionState:
    reference: Reference | None = None
    promoted: bool = False  # a promoted event was seen (with or without a profile)
    announced: bool = False  # reference came from a promoted event (wins over self-reference)
    accuracy: float | None = None  # validation accuracy from the promoted event
    bootstrap: Window = field(default_factory=Window)  # building a self-reference
    window: Window = field(default_factory=Window)
    labeled: Window = field(default_factory=Window)


class DriftMonitor:
    """Feed it model events, predictions and labeled predictions; it returns findings."""

    def __init__(self, spec: UseCaseSpec) -> None:
        self.spec = spec
        self.versions: dict[int, VersionState] = {}
        self.new_self_references: dict[int, dict[str, Any]] = {}
        self.windows_tested = 0

    def _state(self, version: int) -> VersionState:
        return self.versions.setdefault(version, VersionState())

    def knows(self, version: int) -> bool:
        """Whether a promoted event (or a stored self-reference) was seen for ``version``."""
        st = self.versions.get(version)
        return version == 0 or (st is not None and (st.promoted or st.reference is not None))

    def apply_model_event(self, event: ModelEvent) -> None:
        """Only ``promoted`` events carry what drift needs; replays are harmless."""
        if event.event != "promoted":
            return
        st = self._state(event.version)
        st.promoted = True
        if event.reference_profile:
            st.reference, st.announced, st.bootstrap = Reference.from_profile(event.reference_profile), True, Window()
        accuracy = event.metrics.get("accuracy")
        st.accuracy = float(accuracy) if accuracy is not None else None

    def load_self_reference(self, version: int, profile: dict[str, Any]) -> None:
        """A stored self-reference (from a previous run); an announced profile wins."""
        st = self._state(version)
        if not st.announced:
            st.reference = Reference.from_profile(profile)

    def add_prediction(self, rec: PredictionRecord) -> list[Finding]:
        """Count one served prediction; findings when it completes a window."""
        if rec.role != "champion":
            return []
        st = self._state(rec.model_version)
        payload = (rec.features, rec.score)
        if st.reference is None:
            self._bootstrap(rec, st, payload)
            return []
        if not st.window.add(rec.prediction_id, rec.served_at, payload):
            return []
        if len(st.window.rows) < self.spec.drift.window:
            return []
        span, rows = st.window.close()
        self.windows_tested += 1
        outcomes = handlers.window_outcomes(rows, st.reference, self.spec)
        found = handlers.decide(outcomes, self.spec.drift.alpha, rec.model_version, span)
        log.info("v%d window of %d (served %.0f..%.0f): %d tests, min p=%.3g, %d finding(s)",
                 rec.model_version, span.count, span.start, span.end, len(outcomes),
                 min((o.p_value for o in outcomes), default=1.0), len(found))
        return found

    def _bootstrap(self, rec: PredictionRecord, st: VersionState, payload: Any) -> None:
        st.bootstrap.add(rec.prediction_id, rec.served_at, payload)
        if len(st.bootstrap.rows) < self.spec.drift.reference_size:
            return
        _, rows = st.bootstrap.close()
        profile = build_profile([f for f, _ in rows], [s for _, s in rows], self.spec,
                                size=self.spec.drift.reference_size)
        st.reference = Reference.from_profile(profile)
        st.window.remember(st.bootstrap.recent)
        self.new_self_references[rec.model_version] = profile

    def add_labeled(self, rec: LabeledPrediction) -> list[Finding]:
        """Count one labeled prediction; a concept-drift finding when a window completes."""
        st = self.versions.get(rec.model_version)
        if rec.role != "champion" or st is None or st.accuracy is None:
            return []
        correct = (rec.score >= rec.threshold) == bool(rec.actual)
        if not st.labeled.add(rec.prediction_id, rec.served_at, correct):
            return []
        if len(st.labeled.rows) < self.spec.drift.accuracy_window:
            return []
        span, rows = st.labeled.close()
        d = self.spec.drift
        outcome = handlers.accuracy_outcome(sum(rows), len(rows), st.accuracy, d.accuracy_drop, d.alpha)
        return [Finding(rec.model_version, outcome, d.alpha, span)] if outcome else []

    def take_self_references(self) -> dict[int, dict[str, Any]]:
        """Self-references completed since the last call (the caller persists them)."""
        out, self.new_self_references = self.new_self_references, {}
        return out
