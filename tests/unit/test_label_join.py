"""Pure join logic: parsing, the per-record decision, and batch planning with the
in-batch overlay (Redis answers are simulated by a tiny in-memory store)."""

from __future__ import annotations

import pytest

from services.label_join.handlers import Done, Step, awaits_label, decide, parse, plan_emissions, to_step
from shared import codec
from shared.contracts import Label, LabeledPrediction, PredictionRecord
from shared.errors import Reason, RejectedRecord
from shared.topics import LABELS_VALID, PREDICTIONS


def pred(pid: str) -> PredictionRecord:
    return PredictionRecord(prediction_id=pid, entity_id="e1", model_version=3, features={"amount": 5.0},
                            score=0.7, label=True, threshold=0.5, served_at=1000.0, degraded=("x",))


def label(pid: str, value: bool | float, t: float = 2000.0) -> Label:
    return Label(prediction_id=pid, label=value, event_time=t)


def step(rec: PredictionRecord | Label) -> Step:
    topic = PREDICTIONS.name if isinstance(rec, PredictionRecord) else LABELS_VALID.name
    return to_step(topic, codec.dumps(rec.model_dump(mode="json")))


class FakeRedis:
    """What the Lua script does: store own side (prediction NX), return (other, done)."""

    def __init__(self) -> None:
        self.kv: dict[tuple[str, str], bytes] = {}

    def run(self, steps: list[Step]) -> list[tuple[bytes | None, bytes | None]]:
        out = []
        for s in steps:
            own, other = ("p", "l") if s.kind == "prediction" else ("l", "p")
            if s.kind == "label" or (own, s.prediction_id) not in self.kv:
                self.kv[(own, s.prediction_id)] = s.stored
            out.append((self.kv.get((other, s.prediction_id)), self.kv.get(("done", s.prediction_id))))
        return out

    def batch(self, steps: list[Step]) -> list[LabeledPrediction]:
        plan = plan_emissions(steps, self.run(steps), now=5000.0)
        for pid, done in plan.final_done().items():
            self.kv[("done", pid)] = done.encode()
        return [e.output for e in plan.emissions]


@pytest.mark.parametrize(("kind", "lab", "have", "done", "expected"), [
    ("prediction", None, True, None, ("waiting", 0)),
    ("label", label("a", True), False, None, ("waiting", 0)),
    ("label", label("a", True), True, None, ("emit", 1)),
    ("prediction", label("a", True), True, None, ("emit", 1)),
    ("prediction", label("a", True), True, Done(1, True), ("already_joined", 0)),
    ("label", label("a", True), True, Done(1, True), ("duplicate", 0)),
    ("label", label("a", 1.0), True, Done(1, True), ("duplicate", 0)),
    ("label", label("a", False), True, Done(2, True), ("correction", 3)),
])
def test_decide(kind: str, lab: Label | None, have: bool, done: Done | None, expected: tuple[str, int]) -> None:
    assert decide(kind, lab, have, done) == expected  # type: ignore[arg-type]


def test_either_order_joins_once_and_fields_are_correct() -> None:
    redis = FakeRedis()
    assert redis.batch([step(label("early", False, t=1500.0)), step(pred("late"))]) == []
    out = redis.batch([step(pred("early")), step(label("late", True))])
    assert [(o.prediction_id, o.revision) for o in out] == [("early", 1), ("late", 1)]
    first = out[0]
    assert first.actual is False and first.label_event_time == 1500.0 and first.labeled_at == 5000.0
    assert PredictionRecord.model_validate(first.model_dump()) == pred("early")
    # redelivery of everything after a crash (done already marked): nothing again
    assert redis.batch([step(pred("early")), step(label("early", False, t=1500.0)),
                        step(pred("late")), step(label("late", True))]) == []


def test_duplicate_ignored_correction_bumps_revision_even_within_one_batch() -> None:
    redis = FakeRedis()
    out = redis.batch([step(pred("a")), step(label("a", True)), step(label("a", True)), step(label("a", False))])
    assert [(o.revision, o.actual) for o in out] == [(1, True), (2, False)]
    assert Done.decode(redis.kv[("done", "a")]) == Done(2, False)
    out = redis.batch([step(label("a", False)), step(label("a", True))])
    assert [(o.revision, o.actual) for o in out] == [(3, True)]


def test_labels_before_the_prediction_join_with_the_latest_label() -> None:
    redis = FakeRedis()
    assert redis.batch([step(label("a", True)), step(label("a", False))]) == []
    out = redis.batch([step(pred("a"))])
    assert [(o.revision, o.actual) for o in out] == [(1, False)]


@pytest.mark.parametrize(("topic", "value", "reason"), [
    (PREDICTIONS.name, b"{", Reason.INVALID_JSON),
    (LABELS_VALID.name, b'"x"', Reason.NOT_AN_OBJECT),
    (LABELS_VALID.name, b'{"prediction_id": "a", "label": "yes", "event_time": 1}', Reason.INVALID),
    (LABELS_VALID.name, b'{"schema_version": 2}', Reason.UNKNOWN_SCHEMA_VERSION),
    ("other.topic", b"{}", Reason.INVALID),
])
def test_invalid_inputs_are_rejected(topic: str, value: bytes, reason: Reason) -> None:
    with pytest.raises(RejectedRecord) as err:
        to_step(topic, value)
    assert err.value.reason is reason


def test_parse_accepts_rfc3339_label_time() -> None:
    got = parse(Label, b'{"prediction_id": "a", "label": 1, "event_time": "1970-01-01T00:00:10Z"}')
    assert got.event_time == 10.0 and got.label == 1


def test_only_answered_predictions_await_a_label() -> None:
    shadow = pred("s").model_copy(update={"role": "shadow"})
    canary = pred("c").model_copy(update={"role": "challenger"})
    assert awaits_label(step(pred("a"))) and awaits_label(step(canary))
    assert awaits_label(step(label("a", True)))  # a label step is always joined
    assert not awaits_label(step(shadow))
