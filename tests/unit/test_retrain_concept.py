"""Retrain controller after a concept change: refinements relearn from the newest change
point, a change-point incident is never answered by a training planned without it, a
concept incident outlives a routine refresh, the replay ignores pre-change traffic, and a
warm (pre-started) trainer child gives the same artifact as a fresh one."""

from __future__ import annotations

import asyncio
from pathlib import Path

from services.retrain import guards, policy, trainer
from services.retrain import handlers as h
from services.retrain.rows import Row
from shared.contracts import AlertWindow, DriftAlert, ModelEvent, TrainingWindow
from shared.spec import TriggerPolicy, default_spec_path
from tests.unit.test_retrain_policy import buffer, spec_with
from tests.unit.test_retrain_trainer import SECRET, rows


def event(version: int, start: float, end: float, basis: str = "recent", since: float | None = None,
          kind: str = "promoted", parent: int = 0) -> ModelEvent:
    return ModelEvent(event=kind, version=version, parent=parent, created_at=float(version), artifact_b64="eA==",
                      signature="s", trained_on=TrainingWindow(start=start, end=end, count=10, basis=basis,
                                                               since=since))


def concept_alert(version: int, cp: float, incident: str = "c1", kind: str = "concept_drift") -> DriftAlert:
    return DriftAlert(alert_id=f"{incident}-opened", kind=kind, model_version=version, feature="-", test="adwin",
                      statistic=0.3, threshold=0.1, window=AlertWindow(start=cp - 10, end=cp + 10, count=50),
                      detected_at=cp + 20, severity="high", incident_id=incident, change_point_at=cp)


REFRESH = {"new_labels": 20, "min_labels": 10, "budget_per_hour": 0,
           "on_new_labels": TriggerPolicy(mode="stateless", window="change_point")}


def test_refinement_relearns_from_the_newest_change_point() -> None:
    state = h.ControllerState()
    for ev in (event(1, 0.0, 9.0), event(2, 40.0, 49.0, "change_point", 40.0),
               event(3, 30.0, 60.0, "change_point", 30.0, kind="rejected", parent=2)):
        h.apply_model_event(state, ev)
    assert state.champion == 2 and state.concept_since == 40.0  # the newest change point, not the last one seen
    d = guards.on_new_labels(state, buffer(100), spec_with(**REFRESH), now=1.0)
    assert d is not None and d.action == "pending"
    assert (state.pending.since, state.pending.basis, state.pending.mode) == (40.0, "change_point", "stateless")
    plan = policy.plan_window(buffer(100).eligible(None), state.pending, state, spec_with(**REFRESH))
    assert plan.train[0].served_at >= 40.0 and plan.basis == "change_point"
    recent = spec_with(**{**REFRESH, "on_new_labels": TriggerPolicy(mode="stateless", window="recent")})
    state.pending = None
    guards.on_new_labels(state, buffer(100), recent, now=1.0)
    assert state.pending.since is None and state.pending.basis == "recent"  # the default: unchanged


def test_change_point_incident_waits_for_its_own_training_and_survives_a_refresh() -> None:
    state = h.ControllerState()
    h.apply_model_event(state, event(1, 0.0, 50.0))
    state.pending = h.Trigger(["new_labels:v1:50"], None, 1)
    refresh = h.start_training(state)
    d = h.on_alert(state, concept_alert(1, cp=70.0))
    assert d.action == "pending" and state.pending.ids == ["drift:c1"] and refresh.ids == ["new_labels:v1:50"]
    # the refresh (recent window 20..80: mostly the old concept) is promoted meanwhile: the incident stays
    state.in_flight = None
    h.apply_model_event(state, event(2, 20.0, 80.0, parent=1))
    assert state.champion == 2 and state.pending is not None and state.pending.ids == ["drift:c1"]
    assert state.pending.champion == 2 and state.pending.since == 70.0
    # a champion that learned from the change point on answers it: dropped (and reported)
    h.apply_model_event(state, event(3, 70.0, 90.0, "change_point", 70.0, parent=2))
    assert state.pending is None and "drift:c1" in state.dropped


def test_concept_alert_about_an_older_version_applies_until_the_champion_learned_from_it() -> None:
    state = h.ControllerState()
    h.apply_model_event(state, event(1, 0.0, 50.0))
    h.apply_model_event(state, event(2, 20.0, 80.0, parent=1))  # a refresh that still mixes in the old concept
    assert h.on_alert(state, concept_alert(1, cp=70.0)).action == "pending"
    state.pending = None
    assert h.on_alert(state, concept_alert(1, cp=70.0, incident="d1", kind="data_drift")).code == "stale_model"
    h.apply_model_event(state, event(3, 75.0, 90.0, "change_point", 75.0, parent=2))
    assert h.on_alert(state, concept_alert(2, cp=70.0, incident="c2")).code == "stale_model"


def test_replay_ignores_traffic_from_before_the_newest_change_point() -> None:
    spec = spec_with(min_labels=10, window=30, holdout_fraction=0.25)
    state = h.ControllerState()
    h.apply_model_event(state, event(1, 0.0, 9.0))
    trigger = h.Trigger(["request:r"], None, 1, mode="stateless")
    assert min(r.served_at for r in policy.plan_window(buffer(100).eligible(None), trigger, state, spec).replay) == 10.0
    h.apply_model_event(state, event(2, 60.0, 62.0, "change_point", 60.0, kind="rejected", parent=1))
    plan = policy.plan_window(buffer(100).eligible(None), trigger, state, spec)
    assert plan.replay and min(r.served_at for r in plan.replay) >= 60.0


def test_a_refresh_is_judged_on_the_traffic_its_window_stands_for() -> None:
    spec = spec_with(min_labels=10, window=40, holdout_fraction=0.25)
    state = h.ControllerState()
    h.apply_model_event(state, event(1, 0.0, 9.0))
    request = policy.plan_window(buffer(100).eligible(None), h.Trigger(["request:r"], None, 1), state, spec)
    refresh = policy.plan_window(buffer(100).eligible(None), h.Trigger(["new_labels:v1:9"], None, 1), state, spec)
    assert min(r.served_at for r in request.replay) == 10.0  # a request: all traffic after the champion
    assert refresh.train[0].served_at == 60.0 and min(r.served_at for r in refresh.replay) >= 60.0
    assert len(refresh.replay) == len(refresh.holdout) == 10


def test_warm_trainer_child_gives_the_same_artifact_as_a_fresh_one() -> None:
    data = rows(120)
    job = trainer.make_job(data[:90], data[90:], None, SECRET, 0.5)

    async def both() -> tuple[dict, dict]:
        spare = await trainer.spawn(default_spec_path(), 0)
        await asyncio.sleep(0.5)  # imports under way while the spare waits for its job
        warm = await trainer.run_in_child(job, default_spec_path(), 0, 120.0, proc=spare)
        idle = await trainer.spawn(default_spec_path(), 0)
        await trainer.discard(idle)
        assert idle.returncode is not None
        fresh = await trainer.run_in_child(job, default_spec_path(), 0, 120.0)
        return warm, fresh

    warm, fresh = asyncio.run(both())
    assert warm["sha256"] == fresh["sha256"] and warm["metrics"] == fresh["metrics"]


async def test_an_incident_preempts_a_running_refresh_but_not_an_incident_training() -> None:
    from services.retrain.app import Retrain
    from services.retrain.settings import RetrainSettings

    app = Retrain(RetrainSettings(spec=default_spec_path()))
    app.caught_up = True
    h.apply_model_event(app.state, event(1, 0.0, 50.0))
    for running_ids, preempted in ((["new_labels:v1:50", "schedule:v1:1"], True), (["drift:z9"], False)):
        app.state.pending, app.state.handled = h.Trigger(list(running_ids), None, 1), set()
        h.start_training(app.state)
        app.training = asyncio.create_task(asyncio.sleep(30))
        app.on_trigger(concept_alert(1, cp=70.0, incident=f"c{int(preempted)}"))
        await asyncio.sleep(0)
        assert app.training.cancelled() is preempted and app.state.pending.ids == [f"drift:c{int(preempted)}"]
        skipped = {d.trigger for d in app.outbox if d.code == "preempted"}
        assert skipped == ({"new_labels:v1:50", "schedule:v1:1"} if preempted else skipped)
        app.training.cancel()
        app.state.in_flight = None


def test_concept_spec_learners_are_reproducible_and_report_progress_sparingly() -> None:
    """The benchmark specs' learners (SGD with ``min_updates``: hundreds of passes over a
    short window; a Hoeffding tree with the histogram splitter and majority-class leaves)
    give the same bytes in two fresh children, and a job reports at most ten progress steps."""
    from loadtests.concept_streams import CASES
    from loadtests.concept_streams import rows as stream_rows
    from shared import modeling
    from shared.spec import load_spec

    for name in ("sea_abrupt", "agrawal_abrupt"):
        path = CASES[name].spec
        spec = load_spec(path)
        data = [Row(f"p{i}", float(i), x, y) for i, (x, y) in enumerate(stream_rows(CASES[name], 150, 0, 5))]
        job = trainer.make_job(data[:120], data[120:], None, SECRET, 0.5)
        steps: list[tuple[int, int]] = []

        async def twice(job: dict, path: Path, steps: list[tuple[int, int]]) -> tuple[dict, dict]:
            first = await trainer.run_in_child(job, path, 0, 120.0, on_progress=lambda e, n: steps.append((e, n)))
            return first, await trainer.run_in_child(job, path, 0, 120.0)

        first, second = asyncio.run(twice(job, path, steps))
        assert first["sha256"] == second["sha256"]
        epochs = modeling.epochs_for(spec, 120)
        assert 1 <= len(steps) <= 10 and steps[-1] == (epochs, epochs)
        if spec.model.learner.min_updates:
            assert epochs * 120 >= spec.model.learner.min_updates > spec.model.learner.epochs * 120


def test_new_learner_options_are_opt_in() -> None:
    from river import tree

    from loadtests.concept_streams import CASES
    from shared import modeling
    from shared.spec import load_spec

    fraud = load_spec(default_spec_path())
    assert fraud.model.learner.min_updates is None
    assert [modeling.epochs_for(fraud, n) for n in (1, 10, 10_000)] == [fraud.model.learner.epochs] * 3
    agrawal = load_spec(CASES["agrawal_abrupt"].spec)
    learner = modeling.build_learner(agrawal)[-1]
    assert isinstance(learner.splitter, tree.splitter.HistogramSplitter) and learner.leaf_prediction == "mc"
    plain = agrawal.model_copy(update={"model": agrawal.model.model_copy(update={"learner": agrawal.model.learner.model_copy(
        update={"splitter": None, "leaf_prediction": None})})})
    default = modeling.build_learner(plain)[-1]
    assert isinstance(default.splitter, tree.splitter.GaussianSplitter) and default.leaf_prediction == "nba"
