"""prediction_log as a real process stores predictions (shadow included) AND every label
revision from ``predictions.labeled``; the training-set reader is point-in-time correct
on what the service wrote."""

from __future__ import annotations

import time

from services.prediction_log.reader import read_labels, read_predictions, training_set
from shared.contracts import LabeledPrediction, PredictionRecord
from shared.topics import PREDICTIONS, PREDICTIONS_LABELED
from tests.helpers import Stack, produce_json, wait_for

DAY1 = 1714521600.0  # 2024-05-01T00:00:00Z
FAST = {"RIVULET_FLUSH_RECORDS": 200, "RIVULET_FLUSH_INTERVAL_S": 0.3, "RIVULET_SESSION_TIMEOUT_MS": 3000}


def make(i: int) -> PredictionRecord:
    return PredictionRecord(
        prediction_id=f"p{i:04d}", entity_id=f"card-{i % 13}", model_version=1 + i % 2,
        role="shadow" if i % 10 == 0 else "champion", features={"amount": i * 1.5, "channel": "pos"},
        score=(i % 100) / 100, label=i % 100 >= 50, threshold=0.5, served_at=DAY1 + 60 * i,
        latency_ms=0.7, feature_set_version=3, feature_event_time=DAY1 + 60 * i - 5, feature_age_s=5.0,
    )


def labeled(p: PredictionRecord, actual: bool, at: float, revision: int = 1) -> tuple[str, dict]:
    lp = LabeledPrediction(**p.model_dump(), actual=actual, label_event_time=at - 1, labeled_at=at, revision=revision)
    return p.prediction_id, lp.model_dump(mode="json")


def test_labels_are_stored_and_the_training_set_is_point_in_time(stack: Stack) -> None:
    data_dir = stack.tmp / "data"
    stack.spawn("services.prediction_log", **FAST)
    preds = [make(i) for i in range(600)]
    t0 = DAY1 + 86400
    items = [labeled(p, i % 3 == 0, t0 + i) for i, p in enumerate(preds[:500])]   # p500.. never labeled
    corrections = [labeled(p, i % 3 != 0, t0 + 10_000 + i, revision=2) for i, p in enumerate(preds[:100])]
    produce_json(stack.broker.url, PREDICTIONS.name, [(p.prediction_id, p.model_dump(mode="json")) for p in preds])
    produce_json(stack.broker.url, PREDICTIONS_LABELED.name, items + items[:50] + corrections)  # + redelivered
    wait_for(lambda: len(read_predictions(data_dir)) == 600 and len(read_labels(data_dir)) == 500
             and sum(r["label_revision"] == 2 for r in read_labels(data_dir).values()) == 100,
             timeout=30, what="predictions and labels stored")
    time.sleep(1.0)

    rows = training_set(data_dir, DAY1, DAY1 + 86400, as_of=t0 + 300)      # before any correction
    assert [r["prediction_id"] for r in rows] == [p.prediction_id for p in preds[:301]]
    assert all(r["actual"] == (i % 3 == 0) and r["label_revision"] == 1 for i, r in enumerate(rows))
    assert PredictionRecord.model_validate(rows[10]) == preds[10] and rows[10]["role"] == "shadow"
    latest = training_set(data_dir, DAY1, DAY1 + 86400)
    assert len(latest) == 500
    assert all(r["actual"] == (i % 3 != 0 if i < 100 else i % 3 == 0) for i, r in enumerate(latest))
    champions = training_set(data_dir, DAY1, DAY1 + 86400, roles=("champion",), include_unlabeled=True)
    assert len(champions) == 540 and sum(r["actual"] is None for r in champions) == 90
