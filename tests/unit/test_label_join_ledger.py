"""The label ledger's pure pieces: expiry decisions, label_missing / unmatched records,
and the pending-output bookkeeping that closes the re-emit gap."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner

from services.label_join import pending as pend
from services.label_join.handlers import (
    MISSING,
    Done,
    decide,
    expired_output,
    plan_emissions,
    to_step,
)
from shared import codec
from shared.contracts import (
    Label,
    LabeledPrediction,
    LabelMissing,
    PredictionRecord,
    UnmatchedLabel,
)
from shared.topics import LABELS_VALID, PREDICTIONS


def pred(pid: str, version: int = 4) -> PredictionRecord:
    return PredictionRecord(prediction_id=pid, entity_id="e1", model_version=version, features={"amount": 5.0},
                            score=0.7, label=True, threshold=0.5, served_at=1000.0, role="shadow")


def label(pid: str, value: bool = True) -> Label:
    return Label(prediction_id=pid, label=value, event_time=2000.0)


def test_a_label_after_the_window_closed_is_expired_not_joined() -> None:
    assert decide("label", label("a"), True, MISSING) == ("expired", 0)
    assert decide("prediction", label("a"), True, MISSING) == ("already_joined", 0)
    assert Done.decode(MISSING.encode()) == MISSING
    step = to_step(LABELS_VALID.name, codec.dumps(label("a", False).model_dump(mode="json")), partition=3)
    assert step.source == (LABELS_VALID.name, 3)
    plan = plan_emissions([step], [(codec.dumps(pred("a").model_dump(mode="json")), MISSING.encode())], now=9.0)
    assert plan.emissions == [] and plan.counts == {"expired": 1}
    assert plan.unmatched == [UnmatchedLabel(prediction_id="a", label=False, event_time=2000.0, reason="expired",
                                             unmatched_at=9.0, model_version=4)]


def test_expired_deadlines_become_missing_or_unmatched_records() -> None:
    missing = expired_output("p:a", codec.dumps(pred("a").model_dump(mode="json")), 3600.0, now=5000.0)
    assert isinstance(missing, LabelMissing) and missing.status == "label_missing"
    assert PredictionRecord.model_validate(missing.model_dump()) == pred("a")  # role=shadow kept
    assert (missing.maturity_s, missing.expired_at) == (3600.0, 5000.0)
    orphan = expired_output("l:b", codec.dumps(label("b").model_dump(mode="json")), 3600.0, now=5000.0)
    assert isinstance(orphan, UnmatchedLabel)
    assert (orphan.reason, orphan.prediction_id, orphan.model_version) == ("unknown_prediction", "b", None)


def test_emissions_remember_their_input_partition() -> None:
    p = to_step(PREDICTIONS.name, codec.dumps(pred("a").model_dump(mode="json")), partition=2)
    plan = plan_emissions([p], [(codec.dumps(label("a").model_dump(mode="json")), None)], now=9.0)
    assert [(e.output.revision, e.source) for e in plan.emissions] == [(1, (PREDICTIONS.name, 2))]


def test_pending_entries_round_trip_and_only_unpublished_are_republished() -> None:
    lp = [LabeledPrediction(**pred(f"x{i}").model_dump(), actual=True, label_event_time=1.0, labeled_at=2.0,
                            revision=1 + i % 2) for i in range(4)]
    entries = {pend.entry_field(x): pend.encode_entry(x, pend.output_partition(x.prediction_id.encode()), 7)
               for x in lp}
    assert pend.decode_entry(entries["x1#2"])[0] == lp[1]
    again = pend.to_publish(entries, found={"x0#1", "x3#2"})
    assert [(x.prediction_id, x.revision) for x, _ in again] == [("x1", 2), ("x2", 1)]
    assert all(part == pend.output_partition(x.prediction_id.encode()) for x, part in again)


def test_output_partition_is_the_default_partitioners_choice() -> None:
    for i in range(200):
        key = f"pred-{i}".encode()
        assert pend.output_partition(key, 4) == DefaultPartitioner()(key, [0, 1, 2, 3], [0, 1, 2, 3])
