"""Drift alerts users can trust on realistic (not iid) traffic: serial correlation,
a self-reference caught during start-up, negligible-but-significant effects, and the
change point an incident reports (``DriftAlert.change_point_at``)."""

from __future__ import annotations

import numpy as np
import pytest

from services.drift import serial, stats
from services.drift.incidents import Tracker, observe
from services.drift.monitor import DriftMonitor, reference_settled
from shared.contracts import DriftAlert, LabeledPrediction, ModelEvent, PredictionRecord
from shared.profile import build_profile
from shared.spec import UseCaseSpec

FEATURES = [f"f{i}" for i in range(10)]


def spec(**drift: object) -> UseCaseSpec:
    return UseCaseSpec.model_validate({
        "name": "robust", "event": {"fields": {f: {"type": "float"} for f in FEATURES}},
        "features": [], "model": {"numeric": FEATURES}, "drift": drift})


def ar1(rng: np.random.Generator, n: int, phi: float) -> np.ndarray:
    """Stationary AR(1) with unit variance: x_t = phi x_{t-1} + sqrt(1 - phi^2) e_t."""
    e = rng.normal(size=n) * np.sqrt(1 - phi ** 2)
    x = np.empty(n)
    x[0] = rng.normal()
    for t in range(1, n):
        x[t] = phi * x[t - 1] + e[t]
    return x


def stream(rng: np.random.Generator, n: int, phi: float = 0.0, shift_at: int | None = None,
           size: float = 0.0) -> np.ndarray:
    """Ten N(0,1) inputs; f0 is AR(1) with ``phi`` (0: iid); f3 shifts by ``size`` sigma."""
    x = rng.normal(size=(n, len(FEATURES)))
    if phi:
        x[:, 0] = ar1(rng, n, phi)
    if shift_at is not None:
        x[shift_at:, 3] += size
    return x


def recs(x: np.ndarray, version: int, start: int = 0) -> list[PredictionRecord]:
    score = 1 / (1 + np.exp(-0.3 * x[:, 1]))  # the score does not depend on f0
    return [PredictionRecord(prediction_id=f"p{start + i}", entity_id=f"e{i % 97}", model_version=version,
                             role="champion", features=dict(zip(FEATURES, row.tolist())), score=float(s),
                             label=bool(s >= 0.5), threshold=0.5, served_at=1000.0 + start + i)
            for i, (row, s) in enumerate(zip(x, score))]


def alerts(sp: UseCaseSpec, records: list[PredictionRecord], monitor: DriftMonitor | None = None) -> list[DriftAlert]:
    monitor = monitor or DriftMonitor(sp)
    tracker, out = Tracker(), []
    for r in records:
        ev = monitor.add(r)
        if ev is not None:
            out += observe(tracker, ev, sp, r.served_at, lambda n=len(out): f"inc{n}")
    return out


def opened(found: list[DriftAlert]) -> list[DriftAlert]:
    return [a for a in found if a.status == "opened"]


def test_effective_size_matches_the_variance_of_an_ar1_mean() -> None:
    """n(1-rho)/(1+rho) is the right shrinkage: the empirical variance of AR(1) means of
    500 values equals 1/n_eff (within sampling error), not 1/500."""
    rng = np.random.default_rng(3)
    means = [ar1(rng, 500, 0.8).mean() for _ in range(400)]
    n_eff = serial.effective_size(500, 0.8)
    assert n_eff == pytest.approx(500 * 0.2 / 1.8)
    assert np.var(means) == pytest.approx(1 / n_eff, rel=0.25)
    assert serial.serial_correlation(ar1(rng, 500, 0.8)) > 0.7
    assert serial.serial_correlation(rng.normal(size=500)) == 0.0  # iid: inside the noise band


@pytest.mark.parametrize("announced", [True, False])
def test_autocorrelated_stationary_stream_no_longer_alarms(announced: bool) -> None:
    """AR(1) phi=0.95 in one input (like a slowly drifting per-entity count), stationary:
    the iid KS p-value (what the service used before) fires within 20,000 predictions,
    the effective-size p-value does not. Both with a training profile (a random sample
    spanning a long stretch) and with a self-reference (the first 2,000 predictions)."""
    sp, rng = spec(), np.random.default_rng(21)
    monitor = DriftMonitor(sp)
    if announced:
        train = stream(rng, 20_000, phi=0.95)
        score = (1 / (1 + np.exp(-0.3 * train[:, 1]))).tolist()
        monitor.apply_model_event(ModelEvent(event="promoted", version=1, created_at=0.0, metrics={"accuracy": 0.9},
                                             reference_profile=build_profile(
                                                 [dict(zip(FEATURES, r.tolist())) for r in train], score, sp)))
    x = stream(rng, 20_000, phi=0.95)
    iid_pvalues = []
    for r in recs(x, 1 if announced else 0):
        ev = monitor.add(r)
        if ev is not None:
            assert not ev.findings, [f.outcome.detail for f in ev.findings]
            ref = monitor.versions[r.model_version].reference
            col = monitor.versions[r.model_version].ring.view(0).numeric["f0"]
            iid_pvalues.append(stats.ks_test(col, ref.numeric["f0"]).p_value)
    assert min(iid_pvalues) < handlers_threshold(sp) / 100  # the iid test would have paged, repeatedly
    ks = next(o for o in ev.outcomes if o.feature == "f0" and o.test == "ks")
    assert "autocorrelated" in ks.detail and ks.effect("n_eff") < 100


def handlers_threshold(sp: UseCaseSpec) -> float:
    from services.drift import handlers
    return stats.per_test_alpha(handlers.family_alpha(sp), 2 * len(FEATURES) + 2)


def test_real_shift_in_an_autocorrelated_stream_is_still_detected() -> None:
    """A 0.5 sigma shift in f3 (iid) next to the AR(1) input: detected within 2,000
    predictions, f3 named, f0 not."""
    sp, rng = spec(), np.random.default_rng(5)
    monitor = DriftMonitor(sp)
    x = stream(rng, 8_000, phi=0.95, shift_at=5_000, size=0.5)
    found = opened(alerts(sp, recs(x, 0), monitor))
    assert len(found) == 1
    a = found[0]
    assert a.feature == "f3" and 5_000 < a.window.end - 1000.0 <= 7_000
    assert "f0" not in {f.feature for f in a.top_features}


def warm_up_then_steady(rng: np.random.Generator, n: int, warm: int = 250) -> list[PredictionRecord]:
    """The demo's start: ``warm`` readiness requests (no request fields, counts still 0
    while features load), then stationary traffic."""
    x = stream(rng, n)
    out = recs(x, 0)
    for i in range(warm):
        features = {f: (0.0 if f in ("f1", "f2") else None) for f in FEATURES}
        out[i] = out[i].model_copy(update={"features": {k: v for k, v in features.items() if v is not None},
                                           "score": 0.01})
    return out


def test_self_reference_drops_a_start_up_transient_and_no_false_alarm_follows() -> None:
    """The demo's v0 false alarm, reproduced: 250 warm-up predictions in the first 2,000
    made every later window look drifted. The self-reference now skips the unsettled
    first chunk; the same stream raises nothing, and a later real shift is still found."""
    sp, rng = spec(), np.random.default_rng(8)
    rows = warm_up_then_steady(rng, 12_000)
    cut, why = reference_settled(rows[:2_000], sp)
    assert cut == 500 and "differ" in why
    assert reference_settled(rows[2_000:4_000], sp) == (0, "")
    monitor = DriftMonitor(sp)
    assert opened(alerts(sp, rows, monitor)) == []
    assert monitor.versions[0].burned_in == 500
    shifted = stream(rng, 3_000, shift_at=0, size=0.5)
    found = opened(alerts(sp, recs(shifted, 0, start=12_000), monitor))
    assert [a.feature for a in found] == ["f3"]


def test_burn_in_is_bounded() -> None:
    """Traffic that never settles does not block monitoring forever."""
    sp, rng = spec(reference_size=400, reference_max_burn_in=2.0), np.random.default_rng(1)
    x = stream(rng, 3_000)
    x[:, 5] = np.arange(3_000) / 100.0  # a trend: every first chunk differs from the rest
    monitor = DriftMonitor(sp)
    for r in recs(x, 0):
        monitor.add(r)
    st = monitor.versions[0]
    assert st.reference is not None and st.burned_in == 800


def test_significant_but_negligible_effect_is_not_a_finding() -> None:
    """A 0.08 sigma shift over windows of 20,000 is highly significant (KS p << threshold)
    but below the 0.1 sigma floor: no finding; with the floor off, it is one."""
    rng = np.random.default_rng(2)
    for floor, expect in ((0.1, False), (0.0, True)):
        sp = spec(window=20_000, step=20_000, reference_size=20_000, min_effect_sigma=floor)
        monitor = DriftMonitor(sp)
        x = np.vstack([stream(rng, 20_000), stream(rng, 20_000, shift_at=0, size=0.08)])
        evs = [ev for ev in (monitor.add(r) for r in recs(x, 0)) if ev is not None]
        ks = next(o for o in evs[-1].outcomes if o.feature == "f3" and o.test == "ks")
        assert ks.p_value is not None and ks.p_value < evs[-1].threshold
        assert ks.effect("wasserstein_sigma") < 0.1
        assert ("f3|ks" in {f.outcome.key for f in evs[-1].findings}) is expect


def test_data_drift_change_point_is_where_the_first_drifted_window_changes() -> None:
    """The first drifted window is part old, part new data: the change point is the rank
    CUSUM split inside it (served time 4000 here), not the window's start."""
    sp, rng = spec(), np.random.default_rng(4)
    monitor = DriftMonitor(sp)
    found = alerts(sp, recs(stream(rng, 6_000, shift_at=3_000, size=1.0), 0), monitor)
    first = opened(found)[0]
    assert first.window.start < first.change_point_at <= first.window.end
    assert abs(first.change_point_at - (1000.0 + 3_000)) <= 25
    assert all(a.change_point_at == first.change_point_at for a in found if a.status == "updated")


def test_concept_drift_change_point_is_the_detectors_cut() -> None:
    """Error rate 5% -> 40% at label 3,000: ADWIN's cut (the first labeled prediction it
    keeps) lies near the change, and the incident reports it as change_point_at."""
    sp, rng = spec(), np.random.default_rng(6)
    monitor = DriftMonitor(sp)
    monitor.apply_model_event(ModelEvent(event="promoted", version=1, created_at=0.0, metrics={"accuracy": 0.95},
                                         reference_profile=build_profile(
                                             [dict(zip(FEATURES, r.tolist())) for r in stream(rng, 2_000)],
                                             [0.5] * 2_000, sp)))
    x = stream(rng, 6_000)
    rows = recs(x, 1)
    tracker, found = Tracker(), []
    for i, r in enumerate(rows):
        wrong = rng.random() < (0.05 if i < 3_000 else 0.4)
        monitor.add_labeled(LabeledPrediction(**r.model_dump(exclude={"schema_version"}),
                                              actual=bool(r.label) != wrong, label_event_time=r.served_at,
                                              labeled_at=r.served_at + 1))
        ev = monitor.add(r)
        if ev is not None:
            found += observe(tracker, ev, sp, r.served_at, lambda: "inc")
    concept = [a for a in found if a.probable_cause == "concept_drift"]
    assert concept, [a.message for a in found]
    cp = concept[0].change_point_at
    assert cp is not None and 1000.0 + 2_700 <= cp <= 1000.0 + 3_400
