"""Incidents, not noise: turn per-window findings into an alert lifecycle (pure, no I/O).

Per model version at most one incident is open. Its messages on ``drift.alerts`` share an
``incident_id``:

* ``opened``  - the first evaluation with findings (unless within ``cooldown`` seconds of
  the previous incident's resolution AND every finding drifted in that incident: a flapping
  test is only logged, but a new test or feature, e.g. real drift right after a resolved
  data-quality blip, opens an incident at once);
* ``updated`` - only when something material changes: a test that had not drifted in this
  incident drifts, the severity rises, or the probable cause becomes one not reported yet
  (so the number of updates per incident is bounded);
* ``resolved`` - after ``resolve_after`` full windows of clean evaluations (hysteresis), or
  when a newer version is promoted (the drifting model no longer serves).

After a restart (tracker loaded from Redis), evaluations whose window ends at or before the
last one persisted are ignored, so replaying old predictions (a new consumer group)
never re-opens or resolves anything.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from services.drift.handlers import Finding
from services.drift.monitor import Evaluation
from shared.contracts import AlertWindow, DriftAlert, DriftedFeature
from shared.spec import UseCaseSpec

RANK = {"low": 0, "medium": 1, "high": 2}
KIND_ORDER = {"data_drift": 0, "prediction_drift": 1, "concept_drift": 2, "data_quality": 3}
UPSTREAM_TESTS = {"dlq_rate", "stale_rate"}
TOP = 5


@dataclass
class Incident:
    incident_id: str
    model_version: int
    opened_at: float
    top: dict[str, Any]  # the top finding: kind, feature, test, statistic, p_value, threshold
    seen: list[str]  # keys (feature|test) that drifted during the incident
    severity: str
    causes: list[str]  # probable causes reported, latest last
    clean: int = 0  # consecutive clean evaluations
    # Served time from which the data looks changed (DriftAlert.change_point_at).
    change_point_at: float | None = None
    concept_point: bool = False  # change_point_at comes from a concept detector


@dataclass
class Tracker:
    """One model version's incident state (persisted by the service as JSON)."""

    incident: Incident | None = None
    resolved_at: float | None = None
    last_end: float = -math.inf
    suppressed: int = field(default=0)
    resume_after: float = -math.inf  # set on load: evaluations ending before this are replays
    resolved_seen: list[str] = field(default_factory=list)  # keys of the last resolved incident

    def to_json(self) -> dict[str, Any]:
        return {"incident": asdict(self.incident) if self.incident else None,
                "resolved_at": self.resolved_at, "last_end": self.last_end,
                "resolved_seen": self.resolved_seen}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Tracker:
        inc = data.get("incident")
        last_end = float(data.get("last_end", -math.inf))
        return cls(Incident(**inc) if inc else None, data.get("resolved_at"), last_end, resume_after=last_end,
                   resolved_seen=list(data.get("resolved_seen", [])))


def finding_severity(f: Finding) -> str:
    """Effect size, not p-value: with big windows a tiny, harmless shift is significant."""
    o = f.outcome
    if o.kind == "concept_drift" or o.test in UPSTREAM_TESTS:
        return "high"
    if o.kind == "data_quality":
        return "high" if o.statistic >= 0.25 else "medium"
    psi, ws, js = (o.effect(n) or 0.0 for n in ("psi", "wasserstein_sigma", "js"))
    if psi >= 0.25 or ws >= 1.0 or js >= 0.3:
        return "high"
    return "medium" if psi >= 0.1 or ws >= 0.25 or js >= 0.1 else "low"


def severity(findings: list[Finding]) -> str:
    level = max((RANK[finding_severity(f)] for f in findings), default=0)
    if sum(1 for f in findings if f.outcome.kind == "data_drift") >= 3:
        level = max(level, RANK["medium"])
    return next(k for k, v in RANK.items() if v == level)


def probable_cause(findings: list[Finding]) -> str:
    """upstream_data > concept_drift > covariate_shift > prediction_drift (README)."""
    kinds = [f.outcome.kind for f in findings]
    quality, inputs = kinds.count("data_quality"), kinds.count("data_drift")
    if any(f.outcome.test in UPSTREAM_TESTS for f in findings) or quality > inputs:
        return "upstream_data"
    if "concept_drift" in kinds:
        return "concept_drift"
    return "covariate_shift" if inputs else "prediction_drift"


def ranked(findings: list[Finding]) -> list[Finding]:
    """Input drift first, then score, error stream, data quality (the top finding's kind is
    what retraining reacts to); within a kind the smallest p-value (rules count as 0)."""
    def key(f: Finding) -> tuple[int, float, float]:
        p = f.outcome.p_value if f.outcome.p_value is not None else 0.0
        return (KIND_ORDER.get(f.outcome.kind, 9), p, -f.outcome.statistic)
    return sorted(findings, key=key)


def observe(tr: Tracker, ev: Evaluation, spec: UseCaseSpec, now: float,
            new_id: Callable[[], str]) -> list[DriftAlert]:
    """Advance one version's lifecycle by one evaluation; the alerts to publish."""
    if ev.span.end <= tr.resume_after:
        return []  # a replayed window (read before the last persisted one)
    # Past the replay: from now on partition interleaving may make a window end slightly
    # earlier than the previous one; that is new traffic, not a replay.
    tr.resume_after, tr.last_end = -math.inf, max(tr.last_end, ev.span.end)
    if not ev.findings:
        return _clean(tr, ev, spec, now)
    inc = tr.incident
    if inc is None:
        if _cooling_down(tr, ev.findings, spec, now):
            tr.suppressed += 1
            return []
        top = ranked(ev.findings)
        tr.incident = inc = Incident(new_id(), ev.model_version, now, _summary(top[0]), [],
                                     severity(ev.findings), [probable_cause(ev.findings)])
        inc.seen = [f.outcome.key for f in ev.findings]
        _change_point(inc, ev.findings)
        return [_alert(inc, "opened", top, ev.span, now)]
    inc.clean = 0
    new_keys = [f.outcome.key for f in ev.findings if f.outcome.key not in inc.seen]
    sev, cause = severity(ev.findings), probable_cause(ev.findings)
    if not new_keys and RANK[sev] <= RANK[inc.severity] and cause in inc.causes:
        return []
    inc.seen += new_keys
    _change_point(inc, ev.findings)
    inc.severity = sev if RANK[sev] > RANK[inc.severity] else inc.severity
    if cause not in inc.causes:
        inc.causes.append(cause)
    top = ranked(ev.findings)
    inc.top = _summary(top[0])
    return [_alert(inc, "updated", top, ev.span, now)]


def _clean(tr: Tracker, ev: Evaluation, spec: UseCaseSpec, now: float) -> list[DriftAlert]:
    inc = tr.incident
    if inc is None:
        return []
    inc.clean += 1
    d = spec.drift
    if inc.clean < d.resolve_after * math.ceil(d.window / min(d.step, d.window)):
        return []
    return resolve(tr, ev.span, now, f"{d.resolve_after} clean windows")


def resolve(tr: Tracker, span: AlertWindow, now: float, why: str) -> list[DriftAlert]:
    inc = tr.incident
    if inc is None:
        return []
    tr.incident, tr.resolved_at, tr.resolved_seen = None, now, list(inc.seen)
    return [_alert(inc, "resolved", [], span, now, why)]


def _cooling_down(tr: Tracker, findings: list[Finding], spec: UseCaseSpec, now: float) -> bool:
    """Within ``cooldown`` of a resolution, findings that all drifted in the resolved incident
    are flapping (suppressed); any other finding is news. A tracker persisted before keys were
    kept (no ``resolved_seen``) suppresses everything, as it used to."""
    if tr.resolved_at is None or now - tr.resolved_at >= spec.drift.cooldown:
        return False
    return not tr.resolved_seen or all(f.outcome.key in tr.resolved_seen for f in findings)


def _change_point(inc: Incident, findings: list[Finding]) -> None:
    """Data/prediction drift: where the first drifted window's drifting columns changed
    (rank CUSUM split, else the window's start). Concept
    drift: the detector's cut point (the first labeled prediction after ADWIN's cut,
    Page-Hinkley's minimum, the failing accuracy window's start); it wins, since a model
    retrained after a concept change must learn from there."""
    concept = [f.outcome.change_at for f in findings
               if f.outcome.kind == "concept_drift" and f.outcome.change_at is not None]
    if concept and (not inc.concept_point or min(concept) < (inc.change_point_at or math.inf)):
        inc.change_point_at, inc.concept_point = min(concept), True
    elif inc.change_point_at is None:
        located = [f.outcome.change_at for f in findings if f.outcome.change_at is not None]
        inc.change_point_at = min(located) if located else min(f.window.start for f in findings)


def _summary(f: Finding) -> dict[str, Any]:
    o = f.outcome
    threshold = f.threshold if o.p_value is not None else (o.critical if o.critical is not None else 0.0)
    return {"kind": o.kind, "feature": o.feature, "test": o.test, "statistic": o.statistic,
            "p_value": o.p_value, "threshold": threshold, "detail": o.detail}


def _alert(inc: Incident, status: str, top: list[Finding], span: AlertWindow, now: float,
           why: str = "") -> DriftAlert:
    t = inc.top
    feats = tuple(DriftedFeature(feature=f.outcome.feature, test=f.outcome.test, statistic=f.outcome.statistic,
                                 p_value=f.outcome.p_value) for f in top[:TOP])
    cause = inc.causes[-1]
    what = ", ".join(f"{f.feature or ('score' if f.test == 'ks' else f.test)} ({f.test} {f.statistic:.3g})"
                     for f in feats)
    message = (f"model v{inc.model_version}: drift incident {inc.incident_id[:8]} {status} "
               f"({cause.replace('_', ' ')}, {inc.severity}): "
               + (f"{what}; top: {t['detail']}" if status != "resolved" else f"resolved after {why}"))
    return DriftAlert(
        alert_id=f"{inc.incident_id}-{status}-{len(inc.seen)}-{len(inc.causes)}-{inc.severity}",
        kind=t["kind"], model_version=inc.model_version, feature=t["feature"], test=t["test"],
        statistic=t["statistic"], p_value=t["p_value"], threshold=t["threshold"], window=span,
        detected_at=now, severity=inc.severity,  # type: ignore[arg-type]
        message=message, incident_id=inc.incident_id, status=status,  # type: ignore[arg-type]
        top_features=feats, probable_cause=cause,  # type: ignore[arg-type]
        change_point_at=inc.change_point_at,
    )
