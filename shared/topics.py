"""The topic catalog: every topic Rivulet reads or writes, its contract, key and DLQ.

Partition counts are defaults for a single machine; ``labels.valid`` and ``predictions``
share the key (prediction id) and partition count so a label and its prediction meet
on the same partition number.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from shared import contracts as c


@dataclass(frozen=True)
class Topic:
    name: str
    contract: type[BaseModel] | None  # None: built from the spec (events)
    key: str
    partitions: int
    dlq: str | None = None
    public: bool = False  # part of the user-facing contract


EVENTS_RAW = Topic("events.raw", None, "entity_id", 4, dlq="events.dlq", public=True)
EVENTS_VALID = Topic("events.valid", None, "entity_id", 4)
EVENTS_DLQ = Topic("events.dlq", c.DeadLetter, "original key", 1, public=True)
# Valid events the features service refused: later than the spec's allowed lateness.
EVENTS_LATE = Topic("events.late", c.DeadLetter, "original key", 1, public=True)
LABELS_RAW = Topic("labels.raw", c.Label, "prediction_id", 4, dlq="labels.dlq", public=True)
LABELS_VALID = Topic("labels.valid", c.Label, "prediction_id", 4)
LABELS_DLQ = Topic("labels.dlq", c.DeadLetter, "original key", 1, public=True)
PREDICTIONS = Topic("predictions", c.PredictionRecord, "prediction_id", 4)
PREDICTIONS_LABELED = Topic("predictions.labeled", c.LabeledPrediction, "prediction_id", 4)
DRIFT_ALERTS = Topic("drift.alerts", c.DriftAlert, "model_version", 1, public=True)
MODELS = Topic("models", c.ModelEvent, "version", 1, public=True)
RETRAIN_REQUESTS = Topic("retrain.requests", c.RetrainRequest, "request_id", 1, public=True)
LABELS_MISSING = Topic("labels.missing", c.LabelMissing, "prediction_id", 4, public=True)
LABELS_UNMATCHED = Topic("labels.unmatched", c.UnmatchedLabel, "prediction_id", 1, public=True)
METRICS = Topic("metrics", c.MetricsRecord, "model_version[:slice]", 1, public=True)
RETRAIN_DECISIONS = Topic("retrain.decisions", c.RetrainDecision, "trigger", 1, public=True)

CATALOG: tuple[Topic, ...] = (
    EVENTS_RAW,
    EVENTS_VALID,
    EVENTS_DLQ,
    EVENTS_LATE,
    LABELS_RAW,
    LABELS_VALID,
    LABELS_DLQ,
    PREDICTIONS,
    PREDICTIONS_LABELED,
    DRIFT_ALERTS,
    MODELS,
    RETRAIN_REQUESTS,
    LABELS_MISSING,
    LABELS_UNMATCHED,
    METRICS,
    RETRAIN_DECISIONS,
)

BY_NAME: dict[str, Topic] = {t.name: t for t in CATALOG}
