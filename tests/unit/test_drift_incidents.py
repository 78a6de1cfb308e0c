"""Incidents, not noise: lifecycle, hysteresis, cool-down, replay, severity, probable cause;
and the false-alarm budget / detection delay on seeded ten-feature streams (exact points)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from loadtests.drift import FEATURES, bench_spec, first_detection, run, stream
from services.drift import incidents
from services.drift.handlers import Finding, Outcome
from services.drift.incidents import Tracker, observe
from services.drift.monitor import Evaluation
from shared.contracts import AlertWindow, DriftAlert
from shared.spec import load_spec

SPEC = load_spec()  # window 500, step 100, resolve_after 2 -> 10 clean evaluations resolve
ids = itertools.count()


def ev(end: float, *outcomes: Outcome, version: int = 1) -> Evaluation:
    span = AlertWindow(start=end - 499, end=end, count=500)
    return Evaluation(version, span, 1e-5, list(outcomes), [Finding(version, o, 1e-5, span) for o in outcomes])


def ks(feature: str, psi: float = 0.05, p: float = 1e-9) -> Outcome:
    return Outcome("data_drift", feature, "ks", 0.2, p, f"{feature} moved", 0.1, (("psi", psi),))


def step(tr: Tracker, e: Evaluation, now: float = 0.0) -> list[DriftAlert]:
    return observe(tr, e, SPEC, now, lambda: f"inc{next(ids)}")


def test_lifecycle_opened_updated_resolved_with_one_incident_id() -> None:
    tr = Tracker()
    [opened] = step(tr, ev(1000, ks("amount", psi=0.3), ks("txn_count_5m", p=1e-6)), now=10.0)
    assert (opened.status, opened.kind, opened.feature, opened.test) == ("opened", "data_drift", "amount", "ks")
    assert opened.probable_cause == "covariate_shift" and opened.severity == "high"
    assert [f.feature for f in opened.top_features] == ["amount", "txn_count_5m"]
    assert opened.threshold == 1e-5 and opened.p_value == 1e-9 and opened.window.end == 1000
    assert step(tr, ev(1100, ks("amount", psi=0.3))) == []  # nothing new: silent
    [upd] = step(tr, ev(1200, ks("amount", psi=0.3), ks("country")))  # a new feature drifts
    assert upd.status == "updated" and upd.incident_id == opened.incident_id
    assert upd.alert_id != opened.alert_id
    clean = [a for i in range(10) for a in step(tr, ev(1300 + 100 * i), now=50.0)]
    assert [a.status for a in clean] == ["resolved"]  # hysteresis: only after 10 clean evaluations
    assert clean[0].incident_id == opened.incident_id and clean[0].window.end == 2200
    assert tr.incident is None and tr.resolved_at == 50.0


def test_a_dirty_evaluation_resets_the_hysteresis() -> None:
    tr = Tracker()
    step(tr, ev(1000, ks("amount")))
    for i in range(9):
        assert step(tr, ev(1100 + 100 * i)) == []
    assert step(tr, ev(2000, ks("amount"))) == []  # still the same incident, nothing new
    assert [a for i in range(9) for a in step(tr, ev(2100 + 100 * i))] == []
    assert [a.status for a in step(tr, ev(3000))] == ["resolved"]


def test_cool_down_after_resolution_then_a_new_incident() -> None:
    tr = Tracker()
    first = step(tr, ev(1000, ks("amount")), now=0.0)[0]
    for i in range(10):
        step(tr, ev(1100 + 100 * i), now=100.0)
    assert step(tr, ev(3000, ks("amount")), now=100.0 + SPEC.drift.cooldown - 1) == []
    assert tr.suppressed == 1
    [again] = step(tr, ev(3100, ks("amount")), now=100.0 + SPEC.drift.cooldown + 1)
    assert again.status == "opened" and again.incident_id != first.incident_id


def test_cool_down_does_not_hide_a_different_drift() -> None:
    """A resolved data-quality blip must not mute real drift that starts right after it."""
    tr = Tracker()
    quality = Outcome("data_quality", "amount_max_5m", "quality", 0.12, None, "35 missing", flagged=True)
    step(tr, ev(1000, quality), now=0.0)
    for i in range(10):
        step(tr, ev(1100 + 100 * i), now=100.0)
    assert tr.incident is None and tr.resolved_seen == [quality.key]
    assert step(tr, ev(2200, quality), now=110.0) == []  # the same finding again: flapping, muted
    [drift] = step(tr, ev(2300, quality, ks("amount")), now=120.0)  # a new one: opened at once
    assert drift.status == "opened" and drift.feature == "amount"
    assert tr.suppressed == 1
    assert Tracker.from_json(tr.to_json()).resolved_seen == tr.resolved_seen


def test_replayed_older_windows_are_ignored_and_state_round_trips() -> None:
    tr = Tracker()
    step(tr, ev(5000, ks("amount")))
    restored = Tracker.from_json(tr.to_json())
    assert restored.incident == tr.incident and restored.last_end == 5000
    assert [a for i in range(30) for a in step(restored, ev(1000 + 100 * i))] == []  # replay: no resolve
    assert restored.incident is not None and restored.incident.clean == 0
    assert step(restored, ev(5100)) == [] and restored.incident.clean == 1  # new traffic counts


def test_out_of_order_window_ends_in_one_process_still_count() -> None:
    """Partitions interleave: a later window may end slightly before the previous one."""
    tr = Tracker()
    step(tr, ev(5000, ks("amount")))
    for i in range(9):
        step(tr, ev(4990 + 100 * i))
    assert [a.status for a in step(tr, ev(5850))] == ["resolved"]


@pytest.mark.parametrize("outcomes,cause", [
    ([ks("amount"), Outcome("concept_drift", None, "adwin", 0.3, None, "", flagged=True)], "concept_drift"),
    ([ks("amount"), ks("country")], "covariate_shift"),
    ([Outcome("prediction_drift", None, "ks", 0.2, 1e-9, "")], "prediction_drift"),
    ([ks("amount"), Outcome("data_quality", "amount", "quality", 0.3, 1e-12, ""),
      Outcome("data_quality", "country", "quality", 0.3, 1e-12, "")], "upstream_data"),
    ([Outcome("data_quality", "amount", "quality", 0.3, 1e-12, "")], "upstream_data"),
    ([ks("amount"), ks("country"), Outcome("data_quality", None, "dlq_rate", 0.2, None, "", 0.05, (), True)],
     "upstream_data"),
    ([ks("amount"), ks("country"), Outcome("data_quality", "country", "quality", 0.1, 1e-9, "")], "covariate_shift"),
    ([ks("country"), Outcome("data_quality", "country", "quality", 0.2, 1e-30, "")], "covariate_shift"),
])
def test_probable_cause(outcomes: list[Outcome], cause: str) -> None:
    assert incidents.probable_cause(ev(1000, *outcomes).findings) == cause


def test_severity_comes_from_effect_size() -> None:
    assert incidents.severity(ev(1, ks("a", psi=0.02)).findings) == "low"
    assert incidents.severity(ev(1, ks("a", psi=0.12)).findings) == "medium"
    assert incidents.severity(ev(1, ks("a", psi=0.4)).findings) == "high"
    assert incidents.severity(ev(1, ks("a"), ks("b"), ks("c")).findings) == "medium"  # 3 features drift


def test_cause_change_to_concept_drift_is_an_update() -> None:
    tr = Tracker()
    step(tr, ev(1000, ks("amount")))
    [upd] = step(tr, ev(1100, ks("amount"), Outcome("concept_drift", None, "adwin", 0.3, None, "", flagged=True)))
    assert upd.status == "updated" and upd.probable_cause == "concept_drift" and upd.severity == "high"


# -- the false-alarm budget and detection delay, on the benchmark's seeded streams ---------------
def test_stationary_100k_predictions_open_no_incident() -> None:
    spec = bench_spec()
    alerts = run(spec, 0, stream(np.random.default_rng(0), 100_000))
    assert alerts == []


@pytest.mark.parametrize("seed,size,delay", [(0, 0.5, 299), (1, 0.5, 299), (2, 0.5, 299), (0, 1.0, 199),
                                             (3, 0.25, 499)])
def test_abrupt_shift_in_one_of_ten_features_is_detected_at_an_exact_point(seed: int, size: float,
                                                                           delay: int) -> None:
    got, feature = first_detection(bench_spec(), seed, size)
    assert (got, feature) == (delay, "f3")
    assert got is not None and got <= 2000 and len(FEATURES) == 10


def test_top_finding_prefers_input_drift_over_quality_so_retraining_sees_it() -> None:
    tr = Tracker()
    quality = Outcome("data_quality", "merchant_category", "quality", 0.2, 1e-40, "unseen")
    [opened] = step(tr, ev(1000, quality, ks("merchant_category", p=1e-6)))
    assert (opened.kind, opened.feature, opened.test) == ("data_drift", "merchant_category", "ks")
    assert [f.test for f in opened.top_features] == ["ks", "quality"]
