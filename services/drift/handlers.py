"""Pure drift logic: parse inputs, test a full window against a reference, decide which
results become alerts. No Kafka, Redis or clock: the caller passes ids and times in.

Decision rule (documented in the README of the service, restated here): in one window
every model input and the score is tested once; Bonferroni gives each test
``alpha / n_tests`` (``DriftAlert.threshold``), so a stationary stream raises a false
alarm in at most ``alpha`` of its windows.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from services.drift import stats
from shared import codec
from shared.contracts import AlertWindow, DriftAlert, LabeledPrediction, ModelEvent, PredictionRecord
from shared.profile import category_value, numeric_value
from shared.spec import UseCaseSpec

log = logging.getLogger(__name__)
MIN_SAMPLES = 20  # fewer values than this on either side: the test is skipped


@dataclass(frozen=True)
class Reference:
    """A model version's reference profile, ready for testing (arrays, not JSON lists)."""

    numeric: dict[str, np.ndarray]
    categorical: dict[str, dict[str, int]]
    score: np.ndarray

    @classmethod
    def from_profile(cls, profile: Mapping[str, Any]) -> "Reference":
        """Tolerant of a malformed profile: bad entries are dropped (that test is skipped)."""
        numeric = {
            str(k): np.array([x for x in (numeric_value(v) for v in vals) if x is not None])
            for k, vals in (profile.get("numeric") or {}).items() if isinstance(vals, list)
        }
        categorical = {
            str(k): {str(c): int(n) for c, n in freqs.items() if numeric_value(n) is not None and n > 0}
            for k, freqs in (profile.get("categorical") or {}).items() if isinstance(freqs, dict)
        }
        raw_score = profile.get("score") if isinstance(profile.get("score"), list) else []
        score = np.array([x for x in (numeric_value(v) for v in raw_score) if x is not None])
        return cls(numeric, categorical, score)


@dataclass(frozen=True)
class Outcome:
    """The result of one test in one window (alert or not)."""

    kind: str  # data_drift | prediction_drift | concept_drift
    feature: str | None
    test: str  # ks | chi2 | accuracy_drop
    statistic: float
    p_value: float
    detail: str


@dataclass(frozen=True)
class Finding:
    """An outcome that crossed its threshold: an alert candidate (before the cool-down)."""

    model_version: int
    outcome: Outcome
    threshold: float
    window: AlertWindow


def parse(topic: str, value: bytes | None) -> PredictionRecord | ModelEvent | None:
    """Validate one record by topic; ``None`` (logged) for anything malformed."""
    kinds: dict[str, type[PredictionRecord] | type[ModelEvent]] = {
        "predictions": PredictionRecord, "predictions.labeled": LabeledPrediction, "models": ModelEvent,
    }
    try:
        return kinds[topic].model_validate(codec.loads(value or b""))
    except (codec.JSONDecodeError, ValidationError, KeyError) as exc:
        log.warning("skipping malformed record on %s: %s", topic, str(exc)[:200])
        return None


def window_outcomes(rows: Sequence[tuple[Mapping[str, Any], float]], ref: Reference,
                    spec: UseCaseSpec) -> list[Outcome]:
    """Run every applicable test of one full window (rows = (features, score))."""
    out: list[Outcome] = []
    for name in spec.model.numeric:
        vals = [x for x in (numeric_value(f.get(name)) for f, _ in rows) if x is not None]
        if name in ref.numeric and min(len(vals), len(ref.numeric[name])) >= MIN_SAMPLES:
            out.append(_ks(name, vals, ref.numeric[name]))
    for name in spec.model.categorical:
        cats = [c for c in (category_value(f.get(name)) for f, _ in rows) if c is not None]
        result = stats.chi2_test(cats, ref.categorical[name]) if name in ref.categorical else None
        if result is not None and len(cats) >= MIN_SAMPLES:
            cat, now, before = stats.largest_shift(cats, ref.categorical[name])
            new = "" if cat in ref.categorical[name] else " (new category)"
            detail = f"largest change: {cat!r} {now:.1%} of window vs {before:.1%} in reference{new}"
            out.append(Outcome("data_drift", name, "chi2", result.statistic, result.p_value, detail))
    scores = [s for _, s in rows]
    if min(len(scores), len(ref.score)) >= MIN_SAMPLES:
        out.append(_ks(None, scores, ref.score))
    return out


def _ks(name: str | None, window: Sequence[float], reference: np.ndarray) -> Outcome:
    res = stats.ks_test(window, reference)
    detail = f"median {np.median(window):.4g} in window vs {np.median(reference):.4g} in reference"
    kind = "data_drift" if name else "prediction_drift"
    return Outcome(kind, name, "ks", res.statistic, res.p_value, detail)


def decide(outcomes: Sequence[Outcome], alpha: float, version: int,
           window: AlertWindow) -> list[Finding]:
    """Bonferroni over the window's tests: a finding where p < alpha / n_tests."""
    threshold = stats.per_test_alpha(alpha, len(outcomes))
    return [Finding(version, o, threshold, window) for o in outcomes if o.p_value < threshold]


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


def to_alert(finding: Finding, alert_id: str, detected_at: float) -> DriftAlert:
    """The public alert: what drifted, how sure we are, over which predictions."""
    o = finding.outcome
    what = o.feature or ("prediction score" if o.kind == "prediction_drift" else "model accuracy")
    message = (f"model v{finding.model_version}: {o.kind.replace('_', ' ')} on {what} "
               f"({o.test} statistic {o.statistic:.4g}, p={o.p_value:.3g} < {finding.threshold:.3g}); "
               f"{o.detail}")
    return DriftAlert(
        alert_id=alert_id, kind=o.kind, model_version=finding.model_version,  # type: ignore[arg-type]
        feature=o.feature, test=o.test, statistic=o.statistic, p_value=o.p_value,
        threshold=finding.threshold, window=finding.window, detected_at=detected_at,
        severity=stats.severity(o.p_value, finding.threshold),  # type: ignore[arg-type]
        message=message,
    )
