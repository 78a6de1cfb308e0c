"""Drift monitor on seeded synthetic streams (exact detection points for fixed seeds):
false alarms, detection delay, new categories, data quality and upstream health, concept
drift with River detectors, dedupe and the version-0 self-reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.drift.monitor import DriftMonitor, Evaluation
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


def run_windows(monitor: DriftMonitor, recs: list[PredictionRecord]) -> list[Evaluation]:
    """Every evaluation the records trigger, in order."""
    return [ev for ev in (monitor.add(r) for r in recs) if ev is not None]


def drifted(ev: Evaluation) -> set[str]:
    return {f.outcome.key for f in ev.findings}


def test_stationary_stream_raises_nothing_over_96_sliding_evaluations() -> None:
    rng = np.random.default_rng(7)
    monitor = DriftMonitor(SPEC)
    monitor.apply_model_event(promoted(1, synth_rows(rng, 2000)))
    evs = run_windows(monitor, records(synth_rows(rng, 10_000), 1))
    assert len(evs) == 1 + (10_000 - SPEC.drift.window) // SPEC.drift.step == 96
    assert [ev for ev in evs if ev.findings] == []
    n_tests = 11 + 3 + 1 + 14 + 1  # distribution per input + score, quality per input + stale
    assert evs[0].threshold == pytest.approx(min(SPEC.drift.alpha, SPEC.drift.step / 100_000) / n_tests)
    assert {o.test for o in evs[0].outcomes} == {"ks", "chi2", "quality", "stale_rate", "dlq_rate"}


def test_amount_scaled_x3_is_detected_at_an_exact_point() -> None:
    rng = np.random.default_rng(11)
    monitor = DriftMonitor(SPEC)
    monitor.apply_model_event(promoted(1, synth_rows(rng, 2000)))
    rows = synth_rows(rng, 2000) + synth_rows(rng, 1000, amount_scale=3.0)
    evs = run_windows(monitor, records(rows, 1))
    first = next(ev for ev in evs if "amount|ks" in drifted(ev))
    assert first.span.end - 1000.0 == 2199  # 200 shifted predictions into the window
    assert all(not ev.findings for ev in evs if ev.span.end < 3000.0)
    amount = next(f for f in first.findings if f.outcome.key == "amount|ks")
    assert amount.outcome.p_value is not None and amount.outcome.p_value < amount.threshold
    assert amount.outcome.statistic > amount.outcome.critical
    assert amount.outcome.effect("psi") > 0.05 and amount.outcome.effect("wasserstein_sigma") > 0.1


def test_new_merchant_category_raises_chi2_and_an_unseen_category_quality_finding() -> None:
    rng = np.random.default_rng(3)
    monitor = DriftMonitor(SPEC)
    monitor.apply_model_event(promoted(1, synth_rows(rng, 2000)))
    [ev] = run_windows(monitor, records(synth_rows(rng, 500, new_category="crypto", new_share=0.15), 1))
    chi = next(f for f in ev.findings if f.outcome.key == "merchant_category|chi2")
    assert "'crypto'" in chi.outcome.detail and "new category" in chi.outcome.detail
    assert chi.outcome.effect("js") > 0.1 and chi.outcome.effect("psi") > 0.25
    quality = next(f for f in ev.findings if f.outcome.key == "merchant_category|quality")
    assert 0.1 < quality.outcome.statistic < 0.2 and "unseen" in quality.outcome.detail


def test_data_quality_missing_out_of_range_and_stale_predictions() -> None:
    rng = np.random.default_rng(12)
    monitor = DriftMonitor(SPEC)
    monitor.apply_model_event(promoted(1, synth_rows(rng, 2000)))
    rows = synth_rows(rng, 500)
    for i, row in enumerate(rows):
        if i % 4 == 0:
            row.pop("txn_count_1h")  # 25% missing
    recs = [r.model_copy(update={
        "degraded": ("stale_features",) if i % 3 == 0 else (),
        "features": {**r.features, "amount": -5.0} if i % 5 == 0 else r.features,  # below the spec's min 0
    }) for i, r in enumerate(records(rows, 1))]
    [ev] = run_windows(monitor, recs)
    keys = drifted(ev)
    assert {"txn_count_1h|quality", "amount|quality", "-|stale_rate"} <= keys
    by_key = {f.outcome.key: f.outcome for f in ev.findings}
    assert by_key["txn_count_1h|quality"].statistic == 0.25
    assert "100 out of range" in by_key["amount|quality"].detail
    assert by_key["-|stale_rate"].statistic == pytest.approx(167 / 500)


def test_dead_letters_during_the_window_make_an_upstream_finding() -> None:
    rng = np.random.default_rng(13)
    monitor = DriftMonitor(SPEC)
    monitor.apply_model_event(promoted(1, synth_rows(rng, 2000)))
    for t in np.linspace(1000.0, 1499.0, 60):  # 60 dead letters while 500 predictions are served
        monitor.add_dead_letter(float(t))
    monitor.add_dead_letter(50.0)  # long before: not counted
    [ev] = run_windows(monitor, records(synth_rows(rng, 500), 1))
    [dlq] = [f for f in ev.findings if f.outcome.test == "dlq_rate"]
    assert dlq.outcome.statistic == pytest.approx(60 / 500) and dlq.outcome.critical == SPEC.drift.dlq_rate_max


def _labeled(rec: PredictionRecord, correct: bool) -> LabeledPrediction:
    actual = rec.label if correct else not rec.label
    return LabeledPrediction(**rec.model_dump(), actual=actual, label_event_time=1.0, labeled_at=2.0)


def test_error_stream_increase_fires_adwin_page_hinkley_and_accuracy_drop_at_exact_points() -> None:
    rng = np.random.default_rng(5)
    monitor = DriftMonitor(SPEC)
    monitor.apply_model_event(promoted(1, synth_rows(rng, 500), accuracy=0.9))
    assert len(run_windows(monitor, records(synth_rows(rng, 500), 1, start=20_000))) == 1
    recs = records(synth_rows(rng, 6000), 1)
    fired: dict[str, int] = {}
    for i, rec in enumerate(recs):
        correct = rng.random() < (0.9 if i < 3000 else 0.7)
        for f in monitor.add_labeled(_labeled(rec, correct)):
            fired.setdefault(f.outcome.test, i - 3000)
    assert fired == {"adwin": 135, "accuracy_drop": 299, "page_hinkley": 1325}
    # the concept findings stay active for the next evaluations of the prediction stream
    [ev] = run_windows(monitor, records(synth_rows(rng, 100), 1, start=10_000))
    assert {"-|adwin", "-|accuracy_drop", "-|page_hinkley"} <= drifted(ev)


def test_stable_error_stream_fires_no_concept_detector() -> None:
    rng = np.random.default_rng(6)
    monitor = DriftMonitor(SPEC)
    monitor.apply_model_event(promoted(1, synth_rows(rng, 500), accuracy=0.85))
    recs = records(synth_rows(rng, 20_000), 1)
    assert [f for r in recs for f in monitor.add_labeled(_labeled(r, rng.random() < 0.85))] == []


def test_version_zero_is_not_checked_for_concept_drift() -> None:
    monitor = DriftMonitor(SPEC)
    recs = records(synth_rows(np.random.default_rng(1), 400), 0)
    assert all(monitor.add_labeled(_labeled(r, False)) == [] for r in recs)


def test_version_zero_uses_its_first_predictions_as_reference() -> None:
    spec = SPEC.model_copy(update={"drift": DriftSpec(window=200, reference_size=400, step=200)})
    rng = np.random.default_rng(9)
    monitor = DriftMonitor(spec)
    evs = run_windows(monitor, records(synth_rows(rng, 400 + 3 * 200), 0))
    assert len(evs) == 3 and not any(ev.findings for ev in evs)  # the 400 reference rows are not tested
    profile = monitor.take_self_references()[0]
    assert profile["count"] == 400 and len(profile["score"]) == 400 and profile["rows"] == 400
    assert monitor.take_self_references() == {}
    [ev] = run_windows(monitor, records(synth_rows(rng, 200, amount_scale=3.0), 0, start=10_000))
    assert "amount|ks" in drifted(ev)


def test_redelivered_and_non_champion_predictions_do_not_count() -> None:
    spec = SPEC.model_copy(update={"drift": DriftSpec(window=100, reference_size=100, step=100)})
    rng = np.random.default_rng(2)
    monitor = DriftMonitor(spec)
    monitor.apply_model_event(promoted(1, synth_rows(rng, 500), spec))
    recs = records(synth_rows(rng, 150), 1)
    run_windows(monitor, recs)
    assert monitor.windows_tested == 1
    run_windows(monitor, recs)  # the whole batch redelivered
    run_windows(monitor, records(synth_rows(rng, 100), 1, start=500, role="shadow"))
    assert monitor.windows_tested == 1 and monitor.versions[1].since_eval == 50


def test_announced_profile_wins_over_stored_self_reference() -> None:
    rng = np.random.default_rng(4)
    monitor = DriftMonitor(SPEC)
    monitor.apply_model_event(promoted(2, synth_rows(rng, 300)))
    monitor.load_self_reference(2, {"numeric": {}, "categorical": {}, "score": []})
    assert len(monitor.versions[2].reference.score) == 300
    assert monitor.knows(2) and monitor.knows(0) and not monitor.knows(3)


def test_promotion_without_profile_bootstraps_a_self_reference() -> None:
    spec = SPEC.model_copy(update={"drift": DriftSpec(window=100, reference_size=200)})
    monitor = DriftMonitor(spec)
    monitor.apply_model_event(promoted(4, None, spec, accuracy=0.8))
    assert monitor.knows(4) and monitor.versions[4].reference is None
    evs = run_windows(monitor, records(synth_rows(np.random.default_rng(6), 300, spec), 4))
    assert len(evs) == 1 and list(monitor.take_self_references()) == [4]
    assert monitor.versions[4].accuracy == 0.8
