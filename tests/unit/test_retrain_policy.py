"""Retrain policy: drift rules, guards and periodic triggers, the window plan (change point,
fallback, stateful), the full gate (holdout, replay, slices, sanity) and stateful training."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest

from services.retrain import guards, policy, trainer
from services.retrain import handlers as h
from services.retrain.rows import LabeledBuffer, Row, split_window
from shared import codec, modeling
from shared.contracts import AlertWindow, DriftAlert, MetricsRecord, ModelEvent
from shared.spec import DriftRule, RetrainSpec, default_spec_path, load_spec
from tests.unit.test_retrain_trainer import SECRET, rows, train_in_child

SPEC = load_spec()  # fraud.toml: concept -> stateless/change point; mild data drift -> stateful
ROOT = Path(__file__).resolve().parents[2]


def spec_with(**retrain: object):  # type: ignore[no-untyped-def]
    return SPEC.model_copy(update={"retrain": SPEC.retrain.model_copy(update=retrain)})


def alert(kind: str = "data_drift", severity: str = "medium", version: int = 1, cp: float | None = None,
          incident: str = "inc1", status: str = "opened") -> DriftAlert:
    return DriftAlert(alert_id=f"{incident}-{status}-{kind}", kind=kind, model_version=version, feature="amount",
                      test="ks", statistic=0.5, threshold=0.1, window=AlertWindow(start=100.0, end=150.0, count=500),
                      detected_at=160.0, severity=severity, incident_id=incident, status=status, change_point_at=cp)


def champion_state(end: float = 99.0, version: int = 1) -> h.ControllerState:
    state = h.ControllerState(champion=version, max_version=version)
    state.promoted[version] = ModelEvent(event="promoted", version=version, created_at=1.0, artifact_b64="eA==",
                                         signature="s", trained_on={"start": 0.0, "end": end, "count": 80})
    return state


def buffer(n: int, start: float = 0.0) -> LabeledBuffer:
    buf = LabeledBuffer(100_000)
    for r in rows(n):
        buf.add(Row(r.prediction_id, start + r.served_at, r.features, r.actual, labeled_at=start + r.served_at + 5,
                      partition=int(r.served_at) % 2, offset=int(r.served_at) // 2))
    return buf


# -- drift rules ----------------------------------------------------------------------------
def test_drift_rules_pick_mode_and_window_per_kind_and_severity() -> None:
    state = champion_state()
    d = h.on_alert(state, alert("concept_drift", "low", cp=120.0), SPEC)
    assert d.action == "pending" and d.mode == "stateless" and state.pending.since == 120.0
    assert state.pending.basis == "change_point"
    state = champion_state()
    assert h.on_alert(state, alert("data_drift", "low"), SPEC).mode == "stateful"
    assert state.pending.since is None and state.pending.basis == "recent"
    state = champion_state()
    h.on_alert(state, alert("data_drift", "high"), SPEC)  # no change point reported: the drifted window
    assert state.pending.mode == "stateless" and state.pending.since == 100.0
    d = h.on_alert(champion_state(), alert("data_quality", "high"), SPEC)
    assert (d.action, d.code) == ("skip", "policy")
    strict = spec_with(drift_rules=(DriftRule(kinds=("concept_drift",), min_severity="high"),))
    assert h.on_alert(champion_state(), alert("concept_drift", "medium"), strict).code == "policy"
    assert h.on_alert(champion_state(), alert(status="resolved"), SPEC).code == "resolved"
    assert h.on_alert(champion_state(), alert(version=0), SPEC).code == "stale_model"
    state = champion_state()
    h.on_alert(state, alert(), SPEC)
    assert h.on_alert(state, alert(status="updated"), SPEC).code == "duplicate_incident"


def test_merge_stateful_with_concept_change_becomes_stateless_from_the_change_point() -> None:
    state = champion_state()
    h.on_alert(state, alert("data_drift", "low", incident="a"), SPEC)
    d = h.on_alert(state, alert("concept_drift", cp=130.0, incident="b"), SPEC)
    assert d.action == "merged" and state.pending.mode == "stateless"
    assert state.pending.since == 130.0 and state.pending.basis == "change_point"


# -- guards and periodic triggers -------------------------------------------------------------
def test_budget_defers_event_triggers_and_skips_periodic_ones() -> None:
    spec = spec_with(budget_per_hour=2, min_labels=10, new_labels=20)
    state, buf = champion_state(end=-1.0), buffer(50)
    state.train_starts = [1000.0, 1500.0]
    h.on_alert(state, alert("concept_drift", cp=0.0), spec)
    ready, code, why = guards.check_ready(state, buf, spec, now=2000.0)
    assert (ready, code) == (False, "budget") and "budget of 2/h" in why
    assert guards.check_ready(state, buf, spec, now=4700.0)[:2] == (True, "ready")  # an hour later
    state.pending = None
    d = guards.on_new_labels(state, buf, spec, now=2000.0)
    assert (d.action, d.code) == ("skip", "budget")


def test_periodic_triggers_need_labels_and_fire_once() -> None:
    spec = spec_with(min_labels=30, new_labels=40, schedule=60.0, budget_per_hour=0)
    state = champion_state(end=9.0)
    state.champion_since = 1000.0
    assert guards.on_schedule(state, buffer(50), spec, now=1030.0) is None  # not due yet
    d = guards.on_schedule(state, buffer(20), spec, now=1061.0)
    assert (d.action, d.code) == ("skip", "too_few_labels")
    d = guards.on_schedule(state, buffer(50), spec, now=1061.0)
    assert d.action == "pending" and d.mode == "stateful" and d.trigger_id.startswith("schedule:v1:")
    assert guards.on_schedule(state, buffer(50), spec, now=1062.0) is None  # already pending
    state.pending = None
    assert guards.on_new_labels(state, buffer(45), spec, now=1.0) is None  # 35 rows after the window
    d = guards.on_new_labels(state, buffer(60), spec, now=1.0)
    assert d.action == "pending" and state.pending.ids == ["new_labels:v1:9.000"]


def test_performance_floor_uses_measured_overall_champion_metrics_only() -> None:
    spec = spec_with(performance_floor=0.4, performance_min_labels=100, min_labels=10, budget_per_hour=0)
    state, buf = champion_state(), buffer(50)

    def rec(**kw: object) -> MetricsRecord:
        base = dict(kind="performance", model_version=1, window=500, metrics={"log_loss": 0.7}, computed_at=1.0)
        return MetricsRecord(**{**base, **kw})  # type: ignore[arg-type]

    for ignored in (rec(estimated=True), rec(slice="channel=atm"), rec(model_version=0), rec(window=50),
                    rec(metrics={"log_loss": 0.3})):
        assert guards.on_metrics(state, ignored, buf, spec, now=1.0) is None
    d = guards.on_metrics(state, rec(), buf, spec, now=1.0)
    assert d.action == "pending" and d.trigger_id == "performance:v1:0" and d.mode == "stateless"
    acc = spec_with(performance_floor=0.9, primary_metric="accuracy", min_labels=10, budget_per_hour=0)
    assert guards.on_metrics(champion_state(), rec(metrics={"accuracy": 0.95}), buf, acc, 1.0) is None
    assert guards.on_metrics(champion_state(), rec(metrics={"accuracy": 0.85}), buf, acc, 1.0).action == "pending"


def test_change_point_window_waits_then_falls_back_to_the_minimum_size() -> None:
    spec = spec_with(min_labels=20, window_min=40, change_point_max_wait=100.0, budget_per_hour=0)
    state, buf = champion_state(end=-1.0), buffer(100)
    h.on_alert(state, alert("concept_drift", cp=75.0), spec, now=1000.0)  # 25 rows since the change point
    ready, code, why = guards.check_ready(state, buf, spec, now=1050.0)
    assert (ready, code) == (False, "too_few_labels") and "25/40" in why
    ready, code, _ = guards.check_ready(state, buf, spec, now=1101.0)
    assert (ready, code) == (True, "ready_fallback")
    plan = policy.plan_window(buf.eligible(None), state.pending, state, spec)
    assert plan.notes and "extended back to the most recent 40" in plan.notes[0]
    assert len(plan.train) + len(plan.holdout) == 40
    assert all(r.served_at >= 75.0 for r in plan.replay)  # judged on the new concept only
    window = plan.window()
    assert window.basis == "change_point" and window.since == 75.0 and window.fallback


def test_plan_records_offsets_and_replay_excludes_training_and_champion_rows() -> None:
    spec = spec_with(min_labels=10, window=60, holdout_fraction=0.25)
    state, buf = champion_state(end=19.0), buffer(100)
    trigger = h.Trigger(["request:r"], None, 1, mode="stateless")
    plan = policy.plan_window(buf.eligible(None), trigger, state, spec)
    assert len(plan.train) == 45 and plan.train[0].served_at == 40.0
    used = {r.prediction_id for r in plan.train}
    assert not used & {r.prediction_id for r in plan.replay}
    assert min(r.served_at for r in plan.replay) == 20.0  # after the champion's window, not trained on
    assert [r.labeled_at for r in plan.replay] == sorted(r.labeled_at for r in plan.replay)
    window = plan.window()
    assert window.topic == "predictions.labeled" and window.offsets == {"0": (20, 42), "1": (20, 41)}
    stateful = policy.plan_window(buf.eligible(None), h.Trigger(["schedule:x"], None, 1, mode="stateful"),
                                  state, spec)
    assert stateful.mode == "stateful" and stateful.parent is state.promoted[1]
    assert stateful.train[0].served_at == 40.0 and stateful.window().basis == "stateful"
    baseline = policy.plan_window(buf.eligible(None), h.Trigger(["x"], None, 0, mode="stateful"),
                                  h.ControllerState(), spec)
    assert baseline.mode == "stateless" and "baseline" in baseline.notes[0]


# -- gate -------------------------------------------------------------------------------------
def result_with(cand: float, champ: float, slices: dict | None = None, sanity: dict | None = None) -> dict:
    m = lambda v, n=200.0: {"log_loss": v, "accuracy": 0.9, "count": n}
    return {"validation": {
        "holdout": {"candidate": m(cand), "champion": m(champ)},
        "replay": {"candidate": m(cand), "champion": m(champ)},
        "slices": slices or {},
        "sanity": sanity or {"rows": 100, "non_finite": 0, "score_std": 0.2, "positive_share": 0.3,
                             "both_classes": True}}}


def test_gate_collects_every_failure() -> None:
    ok, reasons, _ = policy.judge(result_with(0.2, 0.4), SPEC)
    assert ok and reasons == []
    bad_slice = {"channel=atm": {"count": 80, "candidate": {"log_loss": 0.9}, "champion": {"log_loss": 0.5}},
                 "channel=pos": {"count": 10, "candidate": {"log_loss": 9.0}, "champion": {"log_loss": 0.1}}}
    collapsed = {"rows": 100, "non_finite": 3, "score_std": 0.0, "positive_share": 0.0, "both_classes": True}
    ok, reasons, _ = policy.judge(result_with(0.5, 0.4, bad_slice, collapsed), SPEC)
    assert not ok
    text = " | ".join(reasons)
    assert "holdout:" in text and "replay:" in text and "slice channel=atm" in text
    assert "channel=pos" not in text  # too few rows to judge
    assert "NaN/inf" in text and "collapsed" in text and "one label" in text
    assert len(reasons) == 6


def test_small_replay_is_reported_not_gated() -> None:
    res = result_with(0.2, 0.4)
    res["validation"]["replay"] = {"candidate": {"log_loss": 0.9, "count": 10.0}, "champion": {"log_loss": 0.1}}
    ok, _, summary = policy.judge(res, SPEC)
    assert ok and "not gated" in summary


def test_sanity_sees_nan_scores_that_serving_would_hide() -> None:
    class NaNModel:
        def predict_proba_one(self, x: dict) -> dict:
            return {True: float("nan"), False: float("nan")}

    s = trainer.sanity(NaNModel(), [({"amount": 1.0}, True), ({"amount": 2.0}, False)], SPEC, 0.5)
    assert s["non_finite"] == 2 and policy.sanity_reasons(s, 1e-4)


# -- training ---------------------------------------------------------------------------------
def test_train_epochs_is_byte_identical_to_train() -> None:
    data = [(r.features, r.actual) for r in rows(150)]
    last = None
    for epoch, epochs, last in modeling.train_epochs(SPEC, data):
        assert 1 <= epoch <= epochs
    assert modeling.serialize(last) == modeling.serialize(modeling.train(SPEC, data))


def stateful_job(parent_sig: str | None = None) -> tuple[dict, dict]:
    train, hold = split_window(rows(240), 10_000, 0.25)
    first = trainer.run_job(trainer.make_job(train, hold, None, SECRET, 0.5), SPEC)
    parent = ModelEvent(event="promoted", version=1, created_at=1.0, artifact_b64=first["artifact_b64"],
                        signature=parent_sig or first["signature"])
    new = rows(200, seed=11)
    train2, hold2 = split_window(new, 10_000, 0.25)
    return first, trainer.make_job(train2, hold2, parent, SECRET, 0.5, replay=hold2, parent=parent,
                                   slices=("channel",))


def test_stateful_update_continues_the_parent_and_is_reproducible_across_processes() -> None:
    first, job = stateful_job()
    payload = codec.dumps(job)
    shas, progress = set(), []
    for parent_seed in ("1", "2"):
        out = train_in_child(payload, parent_seed)
        shas.add(out[-1].strip())
        progress.append([line for line in out if line.startswith("P ")])
    assert len(shas) == 1 and shas != {first["sha256"]}
    assert progress[0] == [f"P {e} {SPEC.model.learner.epochs}" for e in range(1, SPEC.model.learner.epochs + 1)]
    # stateful != stateless on the same rows: the parent's learned state is continued
    fresh = trainer.run_job({**job, "parent": None}, SPEC)
    assert fresh["sha256"] not in shas
    result = trainer.run_job(job, SPEC)
    v = result["validation"]
    assert set(v["slices"]) <= {"channel=atm", "channel=online", "channel=pos"} and v["slices"]
    assert v["replay"]["candidate"]["count"] == 50 and v["sanity"]["rows"] == 100


def test_stateful_update_refuses_a_forged_parent() -> None:
    _, job = stateful_job(parent_sig="0" * 64)
    with pytest.raises(trainer.TrainingFailed, match="signature"):  # never continue an unverified artifact
        asyncio.run(trainer.run_in_child(job, default_spec_path(), 0, 60))


def test_model_events_carry_lineage_and_rollout_strategy() -> None:
    res = {"metrics": {"log_loss": 0.2}, "champion_metrics": {"log_loss": 0.4}, "profile": {"count": 1},
           "artifact_b64": "eA==", "sha256": "abc", "signature": "sig"}
    lin = {"policy": "stateful", "seed": 42, "code_version": "0.1.0+abc", "reasons": ()}
    evs = h.model_events(res, h.Trigger(["drift:i"], None, 1), 2, 1, True, "passed",
                         h.TrainingWindow(start=0, end=1, count=2), 0.5, 9.0, lin, "shadow")
    assert evs[1].strategy == "shadow" and evs[0].strategy is None and evs[1].policy == "stateful"
    assert base64.b64decode(evs[1].artifact_b64 or "") == b"x" and evs[1].code_version == "0.1.0+abc"
    assert RetrainSpec().budget_per_hour == 6 and RetrainSpec().drift_rules[0].mode == "stateless"


# -- recency weighting (retrain.recency_half_life) ---------------------------------------------
def test_recency_weights_halve_every_half_life_rows() -> None:
    w = modeling.recency_weights(5, 2)
    assert w[-1] == 1.0 and w[-3] == 0.5 and w[0] == 0.25
    assert w == sorted(w)


def test_only_a_window_without_change_point_is_recency_weighted() -> None:
    spec = spec_with(min_labels=10, window=60, holdout_fraction=0.25, recency_half_life=15)
    state, buf = champion_state(end=19.0), buffer(100)
    recent = policy.plan_window(buf.eligible(None), h.Trigger(["request:r"], None, 1, mode="stateless"), state, spec)
    assert recent.basis == "recent" and recent.half_life == 15
    assert recent.window().recency_half_life == 15
    h.on_alert(state, alert("concept_drift", cp=50.0), spec, now=1000.0)
    since = policy.plan_window(buf.eligible(None), state.pending, state, spec)
    assert since.basis == "change_point" and since.half_life is None
    assert since.window().recency_half_life is None
    unweighted = policy.plan_window(buf.eligible(None), h.Trigger(["request:r"], None, 1, mode="stateless"),
                                    champion_state(end=19.0), spec_with(min_labels=10, window=60))
    assert unweighted.half_life is None


def sea_rows(n: int, theta: float, seed: int) -> list[tuple[dict, bool]]:
    import random
    rng = random.Random(seed)
    xs = [{f"x{i}": rng.uniform(0, 10) for i in range(3)} for _ in range(n)]
    return [(x, x["x0"] + x["x1"] <= theta) for x in xs]


def test_recency_weighting_learns_the_newer_half_of_a_window_that_spans_a_change() -> None:
    """400 rows of SEA concept 0 (theta 8), then 400 of concept 3 (theta 9.5): unweighted,
    logistic regression splits the difference; weighted (half-life 200 rows) it learns the
    newer concept (seed 1: 0.9285 -> 0.9715 on 2,000 fresh rows of it, measured)."""
    spec = load_spec(ROOT / "shared" / "specs" / "sea.toml")
    assert spec.retrain.recency_half_life == 200
    data = sea_rows(400, 8.0, 1) + sea_rows(400, 9.5, 2)
    test = sea_rows(2000, 9.5, 3)

    def accuracy(weights: list[float] | None) -> float:
        model = modeling.train(spec, data, weights=weights)
        return sum((modeling.score(model, x, spec) >= 0.5) == y for x, y in test) / len(test)

    plain, weighted = accuracy(None), accuracy(modeling.recency_weights(len(data), 200))
    assert weighted > plain + 0.02, (plain, weighted)
    first = modeling.train(spec, data, weights=modeling.recency_weights(len(data), 200))
    assert modeling.serialize(first) == modeling.serialize(
        modeling.train(spec, data, weights=modeling.recency_weights(len(data), 200)))


def test_weighted_job_is_reproducible_and_differs_from_the_unweighted_one() -> None:
    train, hold = split_window(rows(240), 10_000, 0.25)
    plain = trainer.run_job(trainer.make_job(train, hold, None, SECRET, 0.5), SPEC)
    weighted = trainer.run_job(trainer.make_job(train, hold, None, SECRET, 0.5, half_life=40), SPEC)
    again = trainer.run_job(trainer.make_job(train, hold, None, SECRET, 0.5, half_life=40), SPEC)
    assert weighted["sha256"] == again["sha256"] != plain["sha256"]
