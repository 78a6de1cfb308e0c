"""Pure join logic: parse the two inputs, decide what to emit, build the outputs.

Each input record becomes a :class:`Step`. Redis stores the step's side and returns the
other side plus the done marker (atomically, see ``join_state``); :func:`plan_emissions`
then decides, per step, in order:

* first pair (prediction + label, nothing emitted yet)    -> emit revision 1
* a label whose value differs from the last emitted one  -> emit revision n + 1 (correction)
* the same label value again, or a redelivered record    -> nothing
* a label for a prediction whose window already closed   -> ``labels.unmatched`` (expired)
* only one side so far                                    -> nothing (it waits in Redis)

The done marker records the revision AND label value emitted, so a redelivery after a
crash is recognised as a duplicate, not mistaken for a correction. Revision 0 means
"the maturity window closed without a label" (a ``labels.missing`` record was emitted).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, TypeVar

from pydantic import BaseModel

from shared import codec
from shared.contracts import (
    Label,
    LabeledPrediction,
    LabelMissing,
    PredictionRecord,
    UnmatchedLabel,
)
from shared.contracts import parse_record as parse
from shared.errors import Reason, RejectedRecord
from shared.topics import LABELS_VALID, PREDICTIONS

M = TypeVar("M", bound=BaseModel)
Kind = Literal["prediction", "label"]
Action = Literal["emit", "correction", "duplicate", "already_joined", "expired", "waiting"]
UnmatchedReason = Literal["unknown_prediction", "expired"]


@dataclass(frozen=True)
class Step:
    """One input record: which side it is, and the JSON Redis keeps for it."""

    kind: Kind
    prediction_id: str
    stored: bytes
    prediction: PredictionRecord | None = None
    label: Label | None = None
    source: tuple[str, int] = ("", -1)  # input (topic, partition): where its pending outputs live


def to_step(topic: str, value: bytes | None, partition: int = -1) -> Step:
    if topic == PREDICTIONS.name:
        rec = parse(PredictionRecord, value)
        return Step("prediction", rec.prediction_id, codec.dumps(rec.model_dump(mode="json")), prediction=rec,
                    source=(topic, partition))
    if topic == LABELS_VALID.name:
        label = parse(Label, value)
        return Step("label", label.prediction_id, codec.dumps(label.model_dump(mode="json")), label=label,
                    source=(topic, partition))
    raise RejectedRecord(Reason.INVALID, f"unexpected topic {topic!r}")


@dataclass(frozen=True)
class Done:
    """What was last emitted for a prediction: its revision and the label value
    (revision 0, actual None: the window closed without a label)."""

    revision: int
    actual: bool | float | None

    def encode(self) -> bytes:
        return codec.dumps({"revision": self.revision, "actual": self.actual})

    @classmethod
    def decode(cls, raw: bytes | None) -> Done | None:
        if raw is None:
            return None
        data = codec.loads(raw)
        return cls(int(data["revision"]), data["actual"])


MISSING = Done(0, None)


def awaits_label(step: Step) -> bool:
    """False for a shadow prediction: it was never answered, so it is never labeled (the
    rollout controller pairs it with the champion's labeled record of the same request)."""
    return step.prediction is None or step.prediction.role != "shadow"


def decide(kind: Kind, label: Label | None, have_prediction: bool, done: Done | None) -> tuple[Action, int]:
    """What one arriving record causes, and the revision to emit (0 when nothing)."""
    if label is None or not have_prediction:
        return "waiting", 0
    if done is None:
        return "emit", 1
    if kind == "prediction":
        return "already_joined", 0
    if done.revision == 0:
        return "expired", 0
    if label.label == done.actual:
        return "duplicate", 0
    return "correction", done.revision + 1


@dataclass(frozen=True)
class Emission:
    output: LabeledPrediction
    done: Done
    source: tuple[str, int]


@dataclass
class Plan:
    emissions: list[Emission] = field(default_factory=list)
    unmatched: list[UnmatchedLabel] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def final_done(self) -> dict[str, Done]:
        """The done marker to store per prediction (the last revision of this batch)."""
        return {e.output.prediction_id: e.done for e in self.emissions}


def plan_emissions(steps: list[Step], fetched: list[tuple[bytes | None, bytes | None]], now: float) -> Plan:
    """Decide every step in order. ``fetched[i]`` = (other side, done) as Redis returned
    them right after storing step i; emissions earlier in this batch are not in Redis yet,
    so they overlay the done marker."""
    plan, pending = Plan(), {}
    for step, (other, done_raw) in zip(steps, fetched, strict=True):
        prediction = step.prediction or (PredictionRecord.model_validate_json(other) if other else None)
        label = step.label or (Label.model_validate_json(other) if other else None)
        done = pending.get(step.prediction_id) or Done.decode(done_raw)
        action, revision = decide(step.kind, label, prediction is not None, done)
        plan.counts[action] = plan.counts.get(action, 0) + 1
        if action == "expired" and label is not None and prediction is not None:
            plan.unmatched.append(unmatched(label, "expired", now, prediction.model_version))
        if revision and prediction is not None and label is not None:
            output = labeled(prediction, label, revision, now)
            pending[step.prediction_id] = Done(revision, label.label)
            plan.emissions.append(Emission(output, pending[step.prediction_id], step.source))
    return plan


def labeled(prediction: PredictionRecord, label: Label, revision: int, now: float) -> LabeledPrediction:
    return LabeledPrediction(
        **prediction.model_dump(), actual=label.label, label_event_time=label.event_time,
        labeled_at=now, revision=revision,
    )


def unmatched(label: Label, reason: UnmatchedReason, now: float, model_version: int | None = None) -> UnmatchedLabel:
    return UnmatchedLabel(**label.model_dump(), reason=reason, unmatched_at=now, model_version=model_version)


def expired_output(member: str, payload: bytes, maturity_s: float, now: float) -> LabelMissing | UnmatchedLabel:
    """The record a claimed deadline produces: ``p:{id}`` -> label_missing,
    ``l:{id}`` -> unmatched label (its prediction never came within the grace period)."""
    if member.startswith("p:"):
        rec = PredictionRecord.model_validate_json(payload)
        return LabelMissing(**rec.model_dump(), maturity_s=maturity_s, expired_at=now)
    return unmatched(Label.model_validate_json(payload), "unknown_prediction", now)

