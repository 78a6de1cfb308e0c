"""Pure drift logic: parse inputs, test one evaluation window against a reference.
No Kafka, Redis or clock: the caller passes windows, thresholds and times in.

Decision rule (README of the service): every evaluation (a sliding window of
``drift.window`` predictions, evaluated every ``drift.step``) runs one distribution test
per model input and the score, and one data-quality test per input plus one for stale
predictions. Alpha spending: an evaluation gets ``min(alpha, budget * step / 100000)``
(budget = ``false_alarms_per_100k``), split over its tests by Bonferroni, so on a
stationary stream the expected number of false findings per 100,000 predictions is at
most the budget (a union bound: overlapping windows only make it more conservative).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import ValidationError

from services.drift import serial, stats
from shared import codec
from shared.contracts import (
    AlertWindow,
    LabeledPrediction,
    ModelEvent,
    PredictionRecord,
)
from shared.profile import numeric_value
from shared.spec import UseCaseSpec

log = logging.getLogger(__name__)
MIN_SAMPLES = 20  # fewer values than this on either side: the test is skipped
KS_SCREEN = 0.85  # D below this share of the asymptotic critical D: p-value not computed
MIN_DLQ = 5  # fewer dead letters than this in a window never make an upstream finding


@dataclass(frozen=True)
class Reference:
    """A model version's reference profile, ready for testing (sorted arrays, not lists)."""

    numeric: dict[str, np.ndarray]
    categorical: dict[str, dict[str, int]]
    score: np.ndarray
    bins: dict[str, tuple[list[float], list[int]]] = field(default_factory=dict)
    missing_rate: dict[str, float] = field(default_factory=dict)

    sds: dict[str, float] = field(default_factory=dict)  # "" = score
    # Significant lag-1 autocorrelation of each sample in its recorded (time) order; "" = score.
    rho: dict[str, float] = field(default_factory=dict)

    def sd(self, name: str | None) -> float:
        """Standard deviation of a numeric reference (score if ``name`` is None); 1 if 0."""
        return self.sds.get(name or "", 1.0)

    @classmethod
    def from_profile(cls, profile: Mapping[str, Any]) -> Reference:
        """Tolerant of a malformed or older profile: bad entries are dropped (that test
        or effect size is skipped)."""
        rho: dict[str, float] = {}

        def arr(vals: Any, key: str) -> np.ndarray:
            vals = vals if isinstance(vals, list) else []
            ordered = np.array([x for x in (numeric_value(v) for v in vals) if x is not None])
            rho[key] = serial.serial_correlation(ordered)
            return np.sort(ordered)
        numeric = {str(k): arr(v, str(k)) for k, v in (profile.get("numeric") or {}).items() if isinstance(v, list)}
        categorical = {
            str(k): {str(c): int(n) for c, n in freqs.items() if numeric_value(n) is not None and n > 0}
            for k, freqs in (profile.get("categorical") or {}).items() if isinstance(freqs, dict)
        }
        bins = {str(k): (list(b.get("edges", [])), list(b.get("counts", [])))
                for k, b in (profile.get("bins") or {}).items() if isinstance(b, dict)}
        sb = profile.get("score_bins")
        if isinstance(sb, dict):
            bins[""] = (list(sb.get("edges", [])), list(sb.get("counts", [])))
        rows = numeric_value(profile.get("rows")) or 0.0
        missing = {str(k): float(v) / rows for k, v in (profile.get("missing") or {}).items()
                   if rows > 0 and numeric_value(v) is not None}
        score = arr(profile.get("score"), "")
        sds = {k: float(np.std(v)) or 1.0 for k, v in [*numeric.items(), ("", score)] if v.size}
        return cls(numeric, categorical, score, bins, missing, sds, rho)


@dataclass(frozen=True)
class WindowView:
    """One evaluation window, column-wise, oldest first. Numeric: NaN = missing, inf = non-finite."""

    span: AlertWindow
    numeric: dict[str, np.ndarray]
    categorical: dict[str, list[str | None]]
    score: np.ndarray
    degraded: int = 0
    dead_letters: int = 0


@dataclass(frozen=True)
class Outcome:
    """The result of one test in one window (finding or not). ``p_value`` is None for
    rules without one (DLQ rate) and for KS statistics far below the critical value."""

    kind: str  # data_drift | prediction_drift | concept_drift | data_quality
    feature: str | None
    test: str  # ks | chi2 | quality | stale_rate | dlq_rate | adwin | page_hinkley | accuracy_drop
    statistic: float
    p_value: float | None
    detail: str
    critical: float | None = None  # the statistic's critical value at the threshold (KS)
    effects: tuple[tuple[str, float], ...] = ()  # psi, wasserstein_sigma, js (effect sizes)
    flagged: bool = False  # a rule (not a test) crossed its limit
    change_at: float | None = None  # concept detectors: served time from which the change shows

    @property
    def key(self) -> str:
        return f"{self.feature or '-'}|{self.test}"

    def effect(self, name: str) -> float | None:
        return dict(self.effects).get(name)


@dataclass(frozen=True)
class Finding:
    """An outcome that crossed its threshold."""

    model_version: int
    outcome: Outcome
    threshold: float
    window: AlertWindow


def parse(topic: str, value: bytes | None) -> PredictionRecord | ModelEvent | None:
    """Validate one record by topic; ``None`` (logged) for anything malformed."""
    kinds: dict[str, type[PredictionRecord | ModelEvent]] = {
        "predictions": PredictionRecord, "predictions.labeled": LabeledPrediction, "models": ModelEvent,
    }
    try:
        return kinds[topic].model_validate(codec.loads(value or b""))
    except (codec.JSONDecodeError, ValidationError, KeyError) as exc:
        log.warning("skipping malformed record on %s: %s", topic, str(exc)[:200])
        return None


def family_alpha(spec: UseCaseSpec) -> float:
    """Alpha spending over evaluations: each evaluation may spend budget * step / 100000."""
    d = spec.drift
    return min(d.alpha, d.false_alarms_per_100k * min(d.step, d.window) / 100_000)


def evaluate(view: WindowView, ref: Reference, spec: UseCaseSpec) -> tuple[list[Outcome], float]:
    """Run every applicable test of one window; returns (outcomes, per-test threshold)."""
    n_tests = len(spec.model.numeric) + len(spec.model.categorical) + 1  # + score
    n_tests += len(spec.model_inputs) + 1  # quality per input + stale predictions
    threshold = stats.per_test_alpha(family_alpha(spec), n_tests)
    out: list[Outcome] = []
    for name in spec.model.numeric:
        col = view.numeric[name]
        if name in ref.numeric:
            out.extend(_numeric(name, col[np.isfinite(col)], ref, threshold))
        bad, why = _numeric_quality(name, col, spec)
        out.append(_quality(name, bad, col.size, ref.missing_rate.get(name, 0.0), why, spec, threshold))
    for name in spec.model.categorical:
        vals = view.categorical[name]
        present = [v for v in vals if v is not None]
        known = ref.categorical.get(name)
        if known:
            out.extend(_categorical(name, present, known, threshold))
        unseen = sum(1 for v in present if known and v not in known)
        bad, why = len(vals) - len(present) + unseen, f"{len(vals) - len(present)} missing, {unseen} unseen"
        out.append(_quality(name, bad, len(vals), ref.missing_rate.get(name, 0.0), why, spec, threshold))
    out.extend(_numeric(None, view.score[np.isfinite(view.score)], ref, threshold))
    stale = stats.excess_rate_test(view.degraded, view.span.count, spec.drift.quality_tolerance)
    out.append(Outcome("data_quality", None, "stale_rate", stale.statistic, stale.p_value,
                       f"{view.degraded} of {view.span.count} predictions served degraded (stale/unavailable features)"))
    dlq_rate = view.dead_letters / max(1, view.span.count)
    out.append(Outcome("data_quality", None, "dlq_rate", dlq_rate, None,
                       f"{view.dead_letters} events dead-lettered during the window",
                       critical=spec.drift.dlq_rate_max,
                       flagged=view.dead_letters >= MIN_DLQ and dlq_rate > spec.drift.dlq_rate_max))
    return out, threshold


def _numeric(name: str | None, window: np.ndarray, ref: Reference, threshold: float) -> list[Outcome]:
    """KS decides; with serial correlation (window or reference) the p-value uses the
    effective sizes n(1-rho)/(1+rho), since the iid p-value would be far too small."""
    reference = ref.numeric.get(name, np.empty(0)) if name else ref.score
    if min(window.size, reference.size) < MIN_SAMPLES:
        return []
    rho_w, rho_r = serial.serial_correlation(window), ref.rho.get(name or "", 0.0)
    window = np.sort(window)
    d, w = stats.ks_and_wasserstein(window, reference)
    effects = [("wasserstein_sigma", w / ref.sd(name))]
    edges, counts = ref.bins.get(name or "", ([], []))
    if counts:
        effects.append(("psi", stats.psi_numeric(window, edges, counts)))
    detail = f"median {_median(window):.4g} in window vs {_median(reference):.4g} in reference"
    if rho_w or rho_r:
        n_eff, m_eff = serial.effective_size(window.size, rho_w), serial.effective_size(reference.size, rho_r)
        critical = stats.ks_critical(round(n_eff), round(m_eff), threshold)
        p = serial.ks_pvalue_effective(d, n_eff, m_eff) if d >= KS_SCREEN * critical else None
        effects.append(("n_eff", n_eff))
        detail += f"; autocorrelated (lag-1 {rho_w:.2f} window, {rho_r:.2f} reference): effective n {n_eff:.0f}"
    else:
        critical = stats.ks_critical(window.size, reference.size, threshold)
        p = stats.ks_test(window, reference).p_value if d >= KS_SCREEN * critical else None
    kind = "data_drift" if name else "prediction_drift"
    return [Outcome(kind, name, "ks", d, p, detail, critical, tuple(effects))]


def _median(sorted_values: np.ndarray) -> float:
    n = sorted_values.size
    return float(sorted_values[(n - 1) // 2] + sorted_values[n // 2]) / 2


def _categorical(name: str, present: list[str], known: dict[str, int], threshold: float) -> list[Outcome]:
    counts = Counter(present)
    result = stats.chi2_counts(counts, known)
    if result is None or len(present) < MIN_SAMPLES:
        return []
    cat, now, before = stats.largest_shift_counts(counts, known)
    new = "" if cat in known else " (new category)"
    detail = f"largest change: {cat!r} {now:.1%} of window vs {before:.1%} in reference{new}"
    effects = (("psi", stats.psi_categorical(counts, known)), ("js", stats.jensen_shannon(counts, known)))
    return [Outcome("data_drift", name, "chi2", result.statistic, result.p_value, detail, None, effects)]


def _numeric_quality(name: str, col: np.ndarray, spec: UseCaseSpec) -> tuple[int, str]:
    missing, nonfinite = int(np.isnan(col).sum()), int(np.isinf(col).sum())
    field_spec = spec.event.fields.get(name)
    finite = col[np.isfinite(col)]
    out = 0
    if field_spec is not None:
        lo = -np.inf if field_spec.min is None else field_spec.min
        hi = np.inf if field_spec.max is None else field_spec.max
        out = int(((finite < lo) | (finite > hi)).sum())
    return missing + nonfinite + out, f"{missing} missing, {nonfinite} non-finite, {out} out of range"


def _quality(name: str, bad: int, n: int, ref_rate: float, why: str, spec: UseCaseSpec,
             threshold: float) -> Outcome:
    """H0: bad-value rate <= reference rate + tolerance (exact binomial, one-sided)."""
    tolerated = min(1.0, ref_rate + spec.drift.quality_tolerance)
    if n == 0 or bad / n <= tolerated:
        return Outcome("data_quality", name, "quality", bad / n if n else 0.0, 1.0, why)
    res = stats.excess_rate_test(bad, n, tolerated)
    return Outcome("data_quality", name, "quality", res.statistic, res.p_value,
                   f"{why} of {n} (reference {ref_rate:.1%}, tolerated {tolerated:.1%})")


def decide(outcomes: list[Outcome], threshold: float, version: int, window: AlertWindow,
           spec: UseCaseSpec | None = None) -> list[Finding]:
    """A finding where p < threshold AND the effect is material, or where a rule flagged."""
    return [Finding(version, o, threshold, window) for o in outcomes
            if o.flagged or (o.p_value is not None and o.p_value < threshold and material(o, spec))]


def material(o: Outcome, spec: UseCaseSpec | None) -> bool:
    """Effect-size floor: with big windows a statistically significant but negligible
    difference (a Wasserstein shift below ``min_effect_sigma`` reference sd, a Jensen-Shannon
    distance below ``min_effect_js``) must not page anyone."""
    if spec is None:
        return True
    if o.test == "ks":
        return (o.effect("wasserstein_sigma") or 0.0) >= spec.drift.min_effect_sigma
    if o.test == "chi2":
        return (o.effect("js") or 0.0) >= spec.drift.min_effect_js
    return True


def accuracy_outcome(correct: int, n: int, validation_accuracy: float,
                     drop: float, alpha: float) -> Outcome | None:
    """Concept drift: an outcome only if accuracy is below validation - drop AND the
    one-sided binomial test against that tolerated level rejects at ``alpha``."""
    tolerated = validation_accuracy - drop
    if n == 0 or tolerated <= 0:
        return None
    res = stats.accuracy_drop_test(correct, n, tolerated)
    if not (res.statistic < tolerated and res.p_value < alpha):
        return None
    detail = (f"accuracy {res.statistic:.3f} over {n} labeled predictions vs validation "
              f"{validation_accuracy:.3f} (tolerated drop {drop:g})")
    return Outcome("concept_drift", None, "accuracy_drop", res.statistic, res.p_value, detail)


def dead_letter_time(headers: Any, timestamp_ms: int | None) -> float:
    """When an event was dead-lettered: the ``rivulet.dlq.failed_at`` header, else the
    record timestamp (so DLQ counts line up with the predictions' ``served_at``)."""
    for key, value in headers or ():
        if key == "rivulet.dlq.failed_at":
            try:
                return float(value.decode())
            except (ValueError, AttributeError):
                break
    return (timestamp_ms or 0) / 1000.0


def state_fields(ev: Any, incident_id: str | None, now: float) -> dict[str, bytes]:
    """The Redis state hash of one evaluation (``rv:drift:state:{model}``): one JSON per
    test, plus ``_meta``. ``ev`` is a :class:`services.drift.monitor.Evaluation`."""
    flagged = {f.outcome.key for f in ev.findings}
    window = ev.span.model_dump()
    out = {o.key: codec.dumps({
        "kind": o.kind, "feature": o.feature, "test": o.test, "statistic": o.statistic,
        "p_value": o.p_value, "threshold": ev.threshold if o.p_value is not None or o.test == "ks" else o.critical,
        "critical": o.critical, "effects": dict(o.effects), "window": window,
        "drifted": o.key in flagged, "evaluated_at": now}) for o in ev.outcomes}
    out["_meta"] = codec.dumps({"model_version": ev.model_version, "window": window, "threshold": ev.threshold,
                                "incident_id": incident_id, "findings": len(ev.findings), "evaluated_at": now})
    return out
