"""Drift monitor on seeded synthetic streams: false alarms, detection delay, new
categories, concept drift, dedupe and the version-0 self-reference."""

from __future__ import annotations

import math

import numpy as np

from services.drift.handlers import Finding, to_alert
from services.drift.monitor import DriftMonitor
from shared.contracts import LabeledPrediction, ModelEvent, PredictionRecord
from shared.profile import build_profile
from shared.spec import DriftSpec, UseCaseSpec, load_spec

SPEC = load_spec()
MERCHANTS = ["grocery", "fuel", "travel", "electronics", "restaurants", "fashion", "health", "games"]
MERCHANT_P = [0.25, 0.15, 0.1, 0.1, 0.15, 0.1, 0.1, 0.05]
COUNTRIES = ["US", "GB", "DE", "FR", "ES", "IT", "NL", "PL", "SE", "BR"]
COUNTRY_P = [0.4, 0.15, 0.1, 0.08, 0.07, 0.06, 0.05, 0.04, 0.03, 0.02]


def synth_rows(rng: np.random.Generator, n: int, spec: UseCaseSpec = SPEC, amount_scale: float = 1.0,
               new_category: str | None = None, new_share: float = 0.0) -> list[dict]:
    """Model inputs for ``spec`` drawn independently: counts are Poisson, times
    exponential, money lognormal; ``amount`` can be scaled and a new merchant injected."""
    cols: dict[str, np.ndarray] = {}
    for name in spec.model.numeric:
        if name == "amount":
            cols[name] = rng.lognormal(3.5, 1.0, n) * amount_scale
        elif "count" in name or "distinct" in name:
            cols[name] = rng.poisson(3.0, n).astype(float)
        elif name.startswith("secs"):
            cols[name] = rng.exponential(600.0, n)
        else:
            cols[name] = rng.lognormal(4.0, 1.0, n)
    merchants = rng.choice(MERCHANTS, n, p=MERCHANT_P)
    if new_category:
        merchants = np.where(rng.random(n) < new_share, new_category, merchants)
    cats = {"merchant_category": merchants, "country": rng.choice(COUNTRIES, n, p=COUNTRY_P),
            "channel": rng.choice(["online", "pos", "atm"], n, p=[0.5, 0.4, 0.1])}
    return [{**{k: float(v[i]) for k, v in cols.items()},
             **{k: str(cats[k][i]) for k in spec.model.categorical if k in cats}} for i in range(n)]


def synth_score(row: dict) -> float:
    """The baseline's shape: the score rises with amount (so amount drift moves it)."""
    z = -6.0 + 0.9 * math.log1p(row["amount"]) + 0.6 * math.log1p(row.get("txn_count_5m", 0.0))
    return 1.0 / (1.0 + math.exp(-z))


def records(rows: list[dict], version: int, start: int = 0, role: str = "champion") -> list[PredictionRecord]:
    return [PredictionRecord(prediction_id=f"p{start + i}", entity_id=f"c{i % 50}", model_version=version,
                             role=role, features=r, score=synth_score(r), label=synth_score(r) >= 0.5,
                             threshold=0.5, served_at=1000.0 + start + i) for i, r in enumerate(rows)]


def promoted(version: int, rows: list[dict] | None, spec: UseCaseSpec = SPEC, accuracy: float = 0.9) -> ModelEvent:
    profile = build_profile(rows, [synth_score(r) for r in rows], spec) if rows else None
    return ModelEvent(event="promoted", version=version, created_at=1.0, reference_profile=profile,
                      metrics={"accuracy": accuracy, "log_loss": 0.3})


def run_windows(monitor: DriftMonitor, recs: list[PredictionRecord]) -> list[list[Finding]]:
    """Findings per completed window (index = window number)."""
    per_window: list[list[Finding]] = []
    for rec in recs:
        before = monitor.windows_tested
        found = monitor.add_prediction(rec)
        if monitor.windows_tested > before:
            per_window.append(found)
    return per_window


def test_stationary_stream_raises_no_alert_in_20_windows() -> None:
    rng = np.random.default_rng(7)
    monitor = DriftMonitor(SPEC)
    monitor.apply_model_event(promoted(1, synth_rows(rng, 2000)))
    windows = run_windows(monitor, records(synth_rows(rng, 20 * SPEC.drift.window), 1))
    assert len(windows) == 20
    assert sum(len(w) for w in windows) == 0


def test_amount_scaled_x3_is_detected_in_the_first_shifted_window() -> None:
    rng = np.random.default_rng(11)
    monitor = DriftMonitor(SPEC)
    monitor.apply_model_event(promoted(1, synth_rows(rng, 2000)))
    k, w = 5, SPEC.drift.window
    rows = synth_rows(rng, k * w) + synth_rows(rng, 3 * w, amount_scale=3.0)
    windows = run_windows(monitor, records(rows, 1))
    first = next(i for i, found in enumerate(windows) if any(f.outcome.feature == "amount" for f in found))
    assert first == k
    assert all(not found for found in windows[:k])
    amount = next(f for f in windows[k] if f.outcome.feature == "amount")
    assert amount.outcome.kind == "data_drift" and amount.outcome.test == "ks"
    assert amount.outcome.p_value < amount.threshold
    assert amount.threshold == SPEC.drift.alpha / 15  # 11 numeric + 3 categorical + score
    assert {f.outcome.kind for f in windows[k]} >= {"data_drift", "prediction_drift"}
    assert amount.window.count == w and amount.window.start == 1000.0 + k * w


def test_new_merchant_category_raises_chi2_alert_naming_it() -> None:
    rng = np.random.default_rng(3)
    monitor = DriftMonitor(SPEC)
    monitor.apply_model_event(promoted(1, synth_rows(rng, 2000)))
    rows = synth_rows(rng, SPEC.drift.window, new_category="crypto", new_share=0.08)
    [found] = run_windows(monitor, records(rows, 1))
    [chi] = [f for f in found if f.outcome.test == "chi2"]
    assert chi.outcome.feature == "merchant_category" and chi.outcome.kind == "data_drift"
    alert = to_alert(chi, "a1", 5.0)
    assert "'crypto'" in alert.message and "new category" in alert.message
    assert alert.severity == "high"


def _labeled(rec: PredictionRecord, correct: bool) -> LabeledPrediction:
    actual = rec.label if correct else not rec.label
    return LabeledPrediction(**rec.model_dump(), actual=actual, label_event_time=1.0, labeled_at=2.0)


def test_accuracy_drop_raises_concept_drift() -> None:
    spec = SPEC.model_copy(update={"drift": DriftSpec(accuracy_window=300, accuracy_drop=0.05)})
    rng = np.random.default_rng(5)
    monitor = DriftMonitor(spec)
    monitor.apply_model_event(promoted(1, synth_rows(rng, 500), spec, accuracy=0.9))
    recs = records(synth_rows(rng, 600), 1)
    good = [monitor.add_labeled(_labeled(r, rng.random() < 0.9)) for r in recs[:300]]
    bad = [monitor.add_labeled(_labeled(r, rng.random() < 0.7)) for r in recs[300:]]
    assert sum(len(f) for f in good) == 0
    [finding] = [f for found in bad for f in found]
    assert finding.outcome.kind == "concept_drift" and finding.outcome.test == "accuracy_drop"
    assert finding.outcome.statistic < 0.85 and finding.outcome.p_value < spec.drift.alpha
    assert to_alert(finding, "a2", 1.0).feature is None


def test_version_zero_is_not_checked_for_concept_drift() -> None:
    monitor = DriftMonitor(SPEC)
    recs = records(synth_rows(np.random.default_rng(1), 400), 0)
    assert all(monitor.add_labeled(_labeled(r, False)) == [] for r in recs)


def test_version_zero_uses_its_first_predictions_as_reference() -> None:
    spec = SPEC.model_copy(update={"drift": DriftSpec(window=200, reference_size=400)})
    rng = np.random.default_rng(9)
    monitor = DriftMonitor(spec)
    windows = run_windows(monitor, records(synth_rows(rng, 400 + 3 * 200), 0))
    assert len(windows) == 3 and not any(windows)  # the 400 reference rows are not tested
    profile = monitor.take_self_references()[0]
    assert profile["count"] == 400 and len(profile["score"]) == 400
    assert monitor.take_self_references() == {}
    shifted = records(synth_rows(rng, 200, amount_scale=3.0), 0, start=10_000)
    [found] = run_windows(monitor, shifted)
    assert "amount" in {f.outcome.feature for f in found}


def test_redelivered_and_non_champion_predictions_do_not_count() -> None:
    spec = SPEC.model_copy(update={"drift": DriftSpec(window=100, reference_size=100)})
    rng = np.random.default_rng(2)
    monitor = DriftMonitor(spec)
    monitor.apply_model_event(promoted(1, synth_rows(rng, 500), spec))
    recs = records(synth_rows(rng, 150), 1)
    run_windows(monitor, recs)
    assert monitor.windows_tested == 1
    run_windows(monitor, recs)  # the whole batch redelivered
    run_windows(monitor, records(synth_rows(rng, 100), 1, start=500, role="shadow"))
    assert monitor.windows_tested == 1 and len(monitor.versions[1].window.rows) == 50


def test_announced_profile_wins_over_stored_self_reference() -> None:
    rng = np.random.default_rng(4)
    monitor = DriftMonitor(SPEC)
    event = promoted(2, synth_rows(rng, 300))
    monitor.apply_model_event(event)
    monitor.load_self_reference(2, {"numeric": {}, "categorical": {}, "score": []})
    assert len(monitor.versions[2].reference.score) == 300
    assert monitor.knows(2) and monitor.knows(0) and not monitor.knows(3)


def test_promotion_without_profile_bootstraps_a_self_reference() -> None:
    spec = SPEC.model_copy(update={"drift": DriftSpec(window=100, reference_size=200)})
    monitor = DriftMonitor(spec)
    monitor.apply_model_event(promoted(4, None, spec, accuracy=0.8))
    assert monitor.knows(4) and monitor.versions[4].reference is None
    windows = run_windows(monitor, records(synth_rows(np.random.default_rng(6), 300, spec), 4))
    assert len(windows) == 1 and list(monitor.take_self_references()) == [4]
    assert monitor.versions[4].accuracy == 0.8
