"""Retrain controller decisions: triggers, debounce, readiness, split, gate, events."""

from __future__ import annotations

import pytest

from services.retrain import guards
from services.retrain import handlers as h
from services.retrain.rows import LabeledBuffer, Row, split_window, to_row
from shared.contracts import (
    AlertWindow,
    DriftAlert,
    LabeledPrediction,
    ModelEvent,
    RetrainRequest,
)
from shared.spec import RetrainSpec, load_spec

SPEC = load_spec()


def alert(alert_id: str = "a1", kind: str = "data_drift", version: int = 0, start: float = 100.0) -> DriftAlert:
    return DriftAlert(alert_id=alert_id, kind=kind, model_version=version, feature="amount", test="ks",
                      statistic=0.5, threshold=0.1, window=AlertWindow(start=start, end=start + 50, count=500),
                      detected_at=start + 60)


def request(request_id: str = "r1", since: float | None = None) -> RetrainRequest:
    return RetrainRequest(request_id=request_id, requested_at=1.0, since=since)


def buffer_with(times: list[float], capacity: int = 10_000) -> LabeledBuffer:
    buf = LabeledBuffer(capacity)
    for i, t in enumerate(times):
        buf.add(Row(f"p{i}", t, {"amount": float(i)}, i % 2 == 0))
    return buf


def promoted(version: int, trigger: str = "") -> ModelEvent:
    return ModelEvent(event="promoted", version=version, parent=version - 1, created_at=1.0,
                      trigger=trigger, artifact_b64="eA==", artifact_sha256="x", signature="s")


# -- buffer -------------------------------------------------------------------------------
def test_buffer_keeps_latest_revision_and_is_bounded() -> None:
    buf = LabeledBuffer(3)
    assert buf.add(Row("a", 1.0, {}, False, revision=2))
    assert not buf.add(Row("a", 1.0, {}, True, revision=1))  # older revision ignored
    assert buf.add(Row("a", 1.0, {}, True, revision=3))
    assert [r.actual for r in buf.eligible(None)] == [True]
    for i, t in enumerate([2.0, 3.0, 4.0]):
        buf.add(Row(f"b{i}", t, {}, False))
    assert len(buf) == 3 and [r.prediction_id for r in buf.eligible(None)] == ["b0", "b1", "b2"]


def test_to_row_skips_shadow_and_maps_float_labels() -> None:
    base = dict(prediction_id="p", entity_id="e", model_version=0, features={"amount": 1.0}, score=0.1,
                label=False, threshold=0.5, served_at=5.0, label_event_time=6.0, labeled_at=7.0)
    assert to_row(LabeledPrediction(**base, actual=0.9)).actual is True
    assert to_row(LabeledPrediction(**base, actual=False)).actual is False
    assert to_row(LabeledPrediction(**base, actual=True, role="shadow")) is None


def test_eligible_filters_by_since_and_sorts() -> None:
    buf = buffer_with([30.0, 10.0, 20.0, 40.0])
    assert [r.served_at for r in buf.eligible(20.0)] == [20.0, 30.0, 40.0]


# -- triggers and debounce ----------------------------------------------------------------
def test_bootstrap_waits_for_min_labels_then_starts() -> None:
    state = h.ControllerState()
    assert h.on_bootstrap(state, SPEC).action == "pending"
    assert h.on_bootstrap(state, SPEC) is None  # already pending: not raised twice
    ready, why = guards.readiness(state, buffer_with([1.0] * 5), 10)
    assert not ready and "5/10" in why
    ready, why = guards.readiness(state, buffer_with([1.0] * 10), 10)
    assert ready, why
    trigger = h.start_training(state)
    assert trigger.ids == ["bootstrap"] and state.pending is None
    assert guards.readiness(state, buffer_with([1.0] * 10), 10)[0] is False  # one training at a time


def test_bootstrap_off_or_champion_not_baseline() -> None:
    spec = SPEC.model_copy(update={"retrain": RetrainSpec(bootstrap=False)})
    assert h.on_bootstrap(h.ControllerState(), spec) is None
    assert h.on_bootstrap(h.ControllerState(champion=3), SPEC) is None


def test_rejected_bootstrap_waits_for_fresh_rows() -> None:
    state = h.ControllerState()
    h.apply_model_event(state, ModelEvent(event="rejected", version=1, parent=0, created_at=1.0,
                                          trigger="bootstrap", trained_on={"start": 0, "end": 50, "count": 9}))
    assert state.max_version == 1 and state.champion == 0
    h.on_bootstrap(state, SPEC)
    ready, why = guards.readiness(state, buffer_with([float(t) for t in range(60)]), 20)
    assert not ready and "9/20 new" in why
    assert guards.readiness(state, buffer_with([float(t) for t in range(80)]), 20)[0]


def test_alert_kinds_and_staleness() -> None:
    state = h.ControllerState(champion=2)
    assert h.on_alert(state, alert(kind="data_quality", version=2)).action == "skip"
    assert "champion is v2" in h.on_alert(state, alert(version=1)).reason
    assert state.pending is None
    d = h.on_alert(state, alert(kind="concept_drift", version=2, start=500.0))
    assert d.action == "pending" and state.pending is not None and state.pending.since == 500.0


def test_alerts_merge_into_pending_and_running_trigger() -> None:
    state = h.ControllerState(champion=1)
    h.on_alert(state, alert("a1", version=1, start=200.0))
    d = h.on_alert(state, alert("a2", kind="prediction_drift", version=1, start=100.0))
    assert d.action == "merged" and state.pending.ids == ["drift:a1", "drift:a2"]
    assert state.pending.since == 100.0  # merging never delays: earliest start wins
    assert h.on_alert(state, alert("a2", version=1)).action == "skip"  # duplicate delivery
    h.start_training(state)
    d = h.on_alert(state, alert("a3", version=1))
    assert d.action == "merged" and state.in_flight.ids[-1] == "drift:a3" and state.pending is None
    state.in_flight.closed = True  # its events are built: a new alert must not be lost
    assert h.on_alert(state, alert("a4", version=1)).action == "pending"


def test_request_since_none_keeps_drift_constraint() -> None:
    state = h.ControllerState()
    h.on_alert(state, alert("a1", version=0, start=300.0))
    h.on_request(state, request("r1", since=None))
    assert state.pending.since == 300.0 and state.pending.label == "drift:a1,request:r1"


def test_handled_ids_come_from_model_events() -> None:
    state = h.ControllerState(champion=0)
    h.apply_model_event(state, promoted(1, trigger="bootstrap,drift:a1,request:r1"))
    h.apply_model_event(state, promoted(1, trigger="bootstrap,drift:a1,request:r1"))  # replay: no-op
    assert state.champion == 1 and state.max_version == 1
    assert {"drift:a1", "request:r1"} <= state.handled and "bootstrap" not in state.handled
    assert h.on_request(state, request("r1")).action == "skip"
    assert h.on_alert(state, alert("a1", version=1)).action == "skip"


def test_champion_change_drops_stale_pending_ids_but_keeps_requests() -> None:
    state = h.ControllerState()
    h.on_bootstrap(state, SPEC)
    h.on_request(state, request("r9", since=5.0))
    h.apply_model_event(state, promoted(4))
    assert state.pending is not None and state.pending.ids == ["request:r9"] and state.pending.champion == 4
    h.apply_model_event(state, ModelEvent(event="rolled_back", version=2, created_at=2.0))
    assert state.champion == 2 and state.max_version == 4


# -- window split -------------------------------------------------------------------------
@pytest.mark.parametrize(("n", "window", "frac", "n_train", "n_hold"), [
    (100, 80, 0.25, 60, 20), (10, 100, 0.25, 7, 3), (10, 10, 0.0, 9, 1), (2, 10, 0.9, 1, 1),
])
def test_split_window(n: int, window: int, frac: float, n_train: int, n_hold: int) -> None:
    rows = buffer_with([float(t) for t in range(n)]).eligible(None)
    train, hold = split_window(rows, window, frac)
    assert (len(train), len(hold)) == (n_train, n_hold)
    assert max(r.served_at for r in train) < min(r.served_at for r in hold)  # holdout is the newest
    assert hold[-1].served_at == n - 1
    assert train[0].served_at == n - min(n, window)


# -- gate ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("metric", "cand", "champ", "margin", "passed"), [
    ("log_loss", 0.30, 0.50, 0.0, True),
    ("log_loss", 0.50, 0.30, 0.0, False),
    ("log_loss", 0.45, 0.50, 0.1, False),   # better, but not by the margin
    ("log_loss", 0.50, 0.50, 0.0, False),   # a tie does not beat the champion
    ("accuracy", 0.90, 0.80, 0.0, True),
    ("accuracy", 0.80, 0.90, 0.0, False),
    ("accuracy", 0.85, 0.80, 0.1, False),
    ("f1", 0.70, 0.50, 0.1, True),
    ("f1", 0.40, 0.50, 0.0, False),
])
def test_gate_direction(metric: str, cand: float, champ: float, margin: float, passed: bool) -> None:
    ok, reason = h.gate({metric: cand}, {metric: champ}, metric, margin)
    assert ok is passed and reason.startswith("passed" if passed else "rejected")


def test_model_events_for_pass_and_fail() -> None:
    trigger = h.Trigger(["drift:a1", "request:r2"], 10.0, champion=1)
    result = {"metrics": {"log_loss": 0.2, "accuracy": 0.9}, "champion_metrics": {"log_loss": 0.4},
              "profile": {"count": 1}, "artifact_b64": "eA==", "sha256": "abc", "signature": "sig"}
    window = h.TrainingWindow(start=10.0, end=20.0, count=5)
    ok = h.model_events(result, trigger, 3, 1, True, "passed", window, 0.5, 99.0)
    assert [e.event for e in ok] == ["registered", "promoted"]
    assert ok[1].version == 3 and ok[1].parent == 1 and ok[1].trigger == "drift:a1,request:r2"
    assert ok[1].signature == "sig" and ok[1].trained_on == window
    bad = h.model_events(result, trigger, 3, 1, False, "rejected", window, 0.5, 99.0)
    assert [e.event for e in bad] == ["rejected"] and bad[0].artifact_b64 == "eA=="  # kept: a human may override
    assert bad[0].metrics["log_loss"] == 0.2


def test_one_retrain_per_incident_even_if_it_opens_as_data_quality() -> None:
    state = h.ControllerState(champion=1)

    def inc(alert_id: str, status: str, kind: str) -> DriftAlert:
        return alert(alert_id, kind=kind, version=1).model_copy(update={"status": status, "incident_id": "inc1"})

    assert h.on_alert(state, inc("a1", "opened", "data_quality")).action == "skip"
    assert state.pending is None
    assert h.on_alert(state, inc("a2", "updated", "data_drift")).action == "pending"
    assert state.pending.ids == ["drift:inc1"]
    assert h.on_alert(state, inc("a3", "updated", "concept_drift")).action == "skip"  # already pending
    assert state.pending.ids == ["drift:inc1"]
    other = h.ControllerState(champion=1)
    assert h.on_alert(other, inc("a4", "resolved", "data_drift")).action == "skip"
    assert other.pending is None


def test_shadow_and_canary_promotions_do_not_change_the_champion() -> None:
    state = h.ControllerState(champion=1)
    h.apply_model_event(state, promoted(2).model_copy(update={"strategy": "shadow"}))
    assert state.champion == 1 and state.max_version == 2
    h.apply_model_event(state, promoted(2).model_copy(update={"strategy": "canary", "share": 0.1}))
    assert state.champion == 1
    h.apply_model_event(state, promoted(2).model_copy(update={"strategy": "full"}))
    assert state.champion == 2
    h.apply_model_event(state, promoted(3))  # no strategy: a full promotion
    assert state.champion == 3
