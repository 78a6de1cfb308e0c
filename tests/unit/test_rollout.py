"""Rollout controller: evidence, the models fold, verdicts and the events they become (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from services.rollout import handlers as h
from services.rollout.evidence import Outcome, Side, StageEvidence
from services.serving.rollout import RouteState, fold, transition
from shared import modeling
from shared.contracts import LabeledPrediction, ModelEvent, PredictionRecord
from shared.spec import RolloutSpec

T0 = 1_000_000.0
SPEC = RolloutSpec(enabled=True, shadow_predictions=4, shadow_min_labels=2, canary_share=0.25,
                   canary_min_labels=3, tolerance=0.05, stage_timeout=600)


def pred(pid: str, version: int, role: str, score: float, served_at: float = T0 + 1, threshold: float = 0.5) -> PredictionRecord:
    return PredictionRecord(prediction_id=pid, entity_id="e", model_version=version, role=role, features={},
                            score=score, label=score >= threshold, threshold=threshold, served_at=served_at)


def labeled(pid: str, version: int, role: str, score: float, actual: bool, served_at: float = T0 + 1,
            revision: int = 1) -> LabeledPrediction:
    return LabeledPrediction(**pred(pid, version, role, score, served_at).model_dump(), actual=actual,
                             label_event_time=served_at, labeled_at=served_at + 3, revision=revision)


def event(kind: str, version: int, strategy: str | None = None, at: float = T0, **kw: Any) -> ModelEvent:
    art = {"artifact_b64": "QUJD", "artifact_sha256": "x" * 64, "signature": "s" * 64, "threshold": 0.4,
               "metrics": {"accuracy": 0.9, "log_loss": 0.2}, "reference_profile": {"k": 1}, "trigger": "drift:abc",
               "parent": version - 1} if kind in ("registered", "promoted") else {}
    return ModelEvent(event=kind, version=version, strategy=strategy, created_at=at, **{**art, **kw})


# -- evidence -------------------------------------------------------------------------------
def test_side_metrics_match_the_validation_gate_and_corrections_replace() -> None:
    rows = [(0.9, True), (0.2, False), (0.7, False), (0.4, True), (0.05, False)]
    side = Side()
    for i, (score, actual) in enumerate(rows):
        side.add(str(i), Outcome(score, 0.5, actual))

    class Fixed:
        def __init__(self) -> None:
            self.i = -1

        def predict_proba_one(self, x: dict[str, Any]) -> dict[bool, float]:
            self.i += 1
            return {True: rows[self.i][0]}

    from shared.spec import load_spec
    want = modeling.evaluate(Fixed(), [({}, y) for _, y in rows], load_spec(), 0.5)
    got = side.metrics()
    for key in ("accuracy", "log_loss", "f1", "count"):
        assert got[key] == pytest.approx(want[key]), key
    assert not side.add("2", Outcome(0.7, 0.5, True, revision=1))  # same revision: a duplicate
    assert side.add("2", Outcome(0.7, 0.5, True, revision=2))  # a correction replaces the label
    assert side.metrics()["accuracy"] == pytest.approx(4 / 5)
    assert side.metrics()["count"] == 5


def test_shadow_scores_pair_with_the_labeled_champion_answer_in_any_order() -> None:
    ev = StageEvidence("shadow", version=2, champion=1, started_at=T0)
    assert ev.add_prediction(pred("a.shadow", 2, "shadow", 0.9))
    assert not ev.add_prediction(pred("a.shadow", 2, "shadow", 0.9))  # redelivery
    assert not ev.add_prediction(pred("old.shadow", 2, "shadow", 0.9, served_at=T0 - 1))  # before the stage
    assert not ev.add_prediction(pred("x.shadow", 3, "shadow", 0.9))  # another challenger
    assert not ev.add_prediction(pred("b", 1, "champion", 0.1))  # answers are not shadow scores
    ev.add_labeled(labeled("a", 1, "champion", 0.2, True))  # shadow first, then label
    ev.add_labeled(labeled("b", 1, "champion", 0.3, False))  # label first, then shadow
    assert len(ev.champion_side) == 1
    ev.add_prediction(pred("b.shadow", 2, "shadow", 0.1))
    assert ev.shadow_count == 2 and len(ev.champion_side) == len(ev.challenger_side) == 2
    assert ev.challenger_side.items["a"] == Outcome(0.9, 0.5, True)
    assert ev.champion_side.items["a"] == Outcome(0.2, 0.5, True)
    assert ev.challenger_side.metrics()["accuracy"] == 1.0 and ev.champion_side.metrics()["accuracy"] == 0.5


def test_canary_sides_are_the_stage_versions_own_labeled_predictions() -> None:
    ev = StageEvidence("canary", version=2, champion=1, started_at=T0)
    assert ev.add_labeled(labeled("a", 2, "challenger", 0.9, True))
    assert ev.add_labeled(labeled("b", 1, "champion", 0.9, False))
    assert not ev.add_labeled(labeled("c", 1, "champion", 0.9, False, served_at=T0 - 5))  # shadow period
    assert not ev.add_labeled(labeled("d", 0, "champion", 0.9, False))  # an older champion
    assert not ev.add_labeled(labeled("a", 2, "challenger", 0.9, True))  # redelivery
    assert not ev.add_prediction(pred("e.shadow", 2, "shadow", 0.5))
    assert (len(ev.challenger_side), len(ev.champion_side)) == (1, 1)


# -- the models fold ------------------------------------------------------------------------
def test_fold_follows_serving_rules_and_keeps_a_stage_across_duplicates() -> None:
    f = h.ModelsFold()
    events = [event("promoted", 1), event("registered", 2, at=T0 + 5),
              event("promoted", 2, "shadow", at=T0 + 10)]
    for i, e in enumerate(events):
        f.apply(e, i)
    stage = f.stage
    assert stage is not None and stage.key == (2, 1, "shadow") and stage.started_at == T0 + 10
    assert stage.announcement is not None and stage.announcement.artifact_b64 == "QUJD"
    f.apply(event("promoted", 2, "shadow", at=T0 + 99), 3)  # a redelivered announcement
    f.apply(event("rejected", 3, at=T0 + 100), 4)
    assert f.stage is stage
    f.apply(event("promoted", 2, "canary", at=T0 + 200, share=0.3), 5)
    assert f.stage is not None and (f.stage.key, f.stage.share, f.stage.offset) == ((2, 1, "canary"), 0.3, 5)
    f.apply(ModelEvent(event="rolled_back", version=1, created_at=T0 + 300), 6)
    assert f.stage is None and f.route == fold([*events, event("promoted", 2, "canary"),
                                                ModelEvent(event="rolled_back", version=1, created_at=0)])


# -- verdicts -------------------------------------------------------------------------------
def _stage(strategy: str, started_at: float = T0) -> h.Stage:
    return h.Stage(2, 1, strategy, 0.25 if strategy == "canary" else 0.0, started_at, 7,  # type: ignore[arg-type]
                   event("promoted", 2, "shadow"))


def _shadow(n: int, labels: list[tuple[float, float, bool]]) -> StageEvidence:
    """n shadow-scored requests; labels: (challenger score, champion score, actual) for the first ones."""
    ev = StageEvidence("shadow", 2, 1, T0)
    for i in range(n):
        score = labels[i][0] if i < len(labels) else 0.5
        ev.add_prediction(pred(f"r{i}.shadow", 2, "shadow", score))
    for i, (_, champ, actual) in enumerate(labels):
        ev.add_labeled(labeled(f"r{i}", 1, "champion", champ, actual))
    return ev


def _canary(challenger: list[tuple[float, bool]], champion: list[tuple[float, bool]]) -> StageEvidence:
    ev = StageEvidence("canary", 2, 1, T0)
    for i, (score, actual) in enumerate(challenger):
        ev.add_labeled(labeled(f"c{i}", 2, "challenger", score, actual))
    for i, (score, actual) in enumerate(champion):
        ev.add_labeled(labeled(f"p{i}", 1, "champion", score, actual))
    return ev


GOOD = [(0.9, True), (0.1, False), (0.8, True), (0.2, False)]
BAD = [(0.4, True), (0.6, False), (0.3, True), (0.7, False)]


def test_shadow_waits_for_requests_and_labels_then_goes_canary_or_back() -> None:
    few = h.verdict(_stage("shadow"), _shadow(3, [(0.9, 0.6, True)] * 3), SPEC, "log_loss", T0 + 5)
    assert few.action == "wait" and "3/4 shadow-scored" in few.reason
    unlabeled = h.verdict(_stage("shadow"), _shadow(10, [(0.9, 0.6, True)]), SPEC, "log_loss", T0 + 5)
    assert unlabeled.action == "wait" and "1/2 labeled" in unlabeled.reason
    good = h.verdict(_stage("shadow"), _shadow(5, [(0.9, 0.6, True), (0.1, 0.3, False)]), SPEC, "log_loss", T0 + 5)
    assert good.action == "canary" and "log_loss challenger=0.1054 champion=0.4338" in good.reason
    assert good.evidence and good.evidence["challenger"]["count"] == 2
    bad = h.verdict(_stage("shadow"), _shadow(5, [(0.3, 0.9, True), (0.8, 0.1, False)]), SPEC, "log_loss", T0 + 5)
    assert bad.action == "rollback" and "worse than champion v1 beyond tolerance" in bad.reason
    no_labels = RolloutSpec(enabled=True, shadow_predictions=4, shadow_min_labels=0)
    assert h.verdict(_stage("shadow"), _shadow(4, []), no_labels, "log_loss", T0).action == "canary"


def test_canary_promotes_when_better_rolls_back_when_worse_and_waits_in_between() -> None:
    assert h.verdict(_stage("canary"), _canary(GOOD[:2], BAD), SPEC, "log_loss", T0).action == "wait"
    full = h.verdict(_stage("canary"), _canary(GOOD, BAD), SPEC, "log_loss", T0)
    assert full.action == "full" and "canary better than champion v1" in full.reason
    back = h.verdict(_stage("canary"), _canary(BAD, GOOD), SPEC, "log_loss", T0)
    assert back.action == "rollback" and "accuracy challenger=0.0000 champion=1.0000" in back.reason
    slightly = [(s - 0.01 if y else s + 0.01, y) for s, y in GOOD]  # a little worse, within tolerance
    between = h.verdict(_stage("canary"), _canary(slightly, GOOD), SPEC, "log_loss", T0 + 10)
    assert between.action == "wait" and "within tolerance but not better" in between.reason
    on_accuracy = h.verdict(_stage("canary"), _canary(GOOD, BAD), SPEC, "accuracy", T0)
    assert on_accuracy.action == "full" and on_accuracy.reason.startswith("v2 canary better") and "accuracy challenger=1.0000" in on_accuracy.reason


def test_a_stage_that_times_out_is_rolled_back_or_advanced_as_configured() -> None:
    late = T0 + SPEC.stage_timeout + 1
    starved = h.verdict(_stage("canary"), _canary(GOOD[:1], BAD), SPEC, "log_loss", late)
    assert starved.action == "rollback" and "timed out after 601 s" in starved.reason
    promote = SPEC.model_copy(update={"on_timeout": "promote"})
    assert h.verdict(_stage("canary"), _canary(GOOD[:1], BAD[:1]), promote, "log_loss", late).action == "full"
    assert h.verdict(_stage("canary"), _canary(BAD[:1], GOOD[:1]), promote, "log_loss", late).action == "full"  # 1 label: no evidence
    assert h.verdict(_stage("canary"), _canary(BAD[:2], GOOD[:2]), promote, "log_loss", late).action == "rollback"
    assert h.verdict(_stage("shadow"), _shadow(1, []), promote, "log_loss", late).action == "canary"
    never = h.verdict(_stage("shadow"), _shadow(0, []), promote, "log_loss", late)
    assert never.action == "rollback" and "never shadow-scored" in never.reason
    between = [(s - 0.01 if y else s + 0.01, y) for s, y in GOOD]
    assert h.verdict(_stage("canary"), _canary(between, GOOD), SPEC, "log_loss", late).action == "rollback"


# -- events ---------------------------------------------------------------------------------
def test_step_events_reannounce_the_artifact_or_withdraw_the_challenger() -> None:
    stage = _stage("shadow", started_at=T0)
    canary = h.step_event(stage, h.Verdict("canary", "numbers", {"challenger": {"log_loss": 0.1}}), SPEC, T0 + 9)
    assert (canary.event, canary.strategy, canary.share, canary.who, canary.reason) == (
        "promoted", "canary", 0.25, "rollout", "numbers")
    shadow_ann = stage.announcement
    assert shadow_ann is not None
    for key in ("artifact_b64", "artifact_sha256", "signature", "threshold", "metrics", "reference_profile",
                "trigger", "parent", "version"):
        assert getattr(canary, key) == getattr(shadow_ann, key), key
    assert canary.created_at == T0 + 9 and canary.evidence == {"challenger": {"log_loss": 0.1}}
    full = h.step_event(stage, h.Verdict("full", "better"), SPEC, T0 + 20)
    assert (full.strategy, full.share, full.artifact_b64) == ("full", None, "QUJD")
    back = h.step_event(stage, h.Verdict("rollback", "worse"), SPEC, T0 + 30)
    assert (back.event, back.version, back.withdrawn, back.who, back.artifact_b64) == ("rolled_back", 1, 2, "rollout", None)
    # serving's rules: canary adds the challenger, full makes it champion, rollback drops it
    state = RouteState(champion=1, challenger=2, strategy="shadow")
    assert transition(state, canary) == RouteState(1, 2, "canary", 0.25)
    assert transition(transition(state, canary), full).champion == 2
    assert transition(transition(state, canary), back) == RouteState(1, None, "full", 0.0)
    with pytest.raises(ValueError):
        h.step_event(stage, h.Verdict("wait", "-"), SPEC, T0)


def test_a_difference_counts_only_when_significant() -> None:
    """Noisy small samples: a point estimate beyond the tolerance is not enough to act on."""
    noisy_ch = [(0.9, True), (0.05, True), (0.1, False), (0.6, False)]  # one confident miss
    noisy_cp = [(0.8, True), (0.3, True), (0.2, False), (0.4, False)]
    cmp = h.compare(_canary(noisy_ch, noisy_cp).challenger_side, _canary(noisy_ch, noisy_cp).champion_side,
                    "log_loss", 0.02, z=1.64)
    assert cmp.gain < -0.02 and not cmp.worse and not cmp.better and cmp.se > 0.3
    point = h.compare(_canary(noisy_ch, noisy_cp).challenger_side, _canary(noisy_ch, noisy_cp).champion_side,
                      "log_loss", 0.02, z=0.0)
    assert point.worse
    assert h.verdict(_stage("canary"), _canary(noisy_ch, noisy_cp), SPEC, "log_loss", T0).action == "wait"
    many = _canary(GOOD * 20, [(s - 0.3 if y else s + 0.3, y) for s, y in GOOD] * 20)
    strong = h.verdict(_stage("canary"), many, SPEC, "log_loss", T0)
    assert strong.action == "full" and "± " in strong.reason
    assert strong.evidence and strong.evidence["challenger"]["log_loss_se"] >= 0
