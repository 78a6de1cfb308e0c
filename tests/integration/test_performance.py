"""performance as a real process: estimated accuracy while no labels exist, measured
metrics (per slice too) once they do, corrections counted once, label coverage, the
Prometheus endpoint, and the same numbers again after a SIGKILL + restart (replay)."""

from __future__ import annotations

import urllib.request

import numpy as np
import pytest

from shared import codec
from shared.contracts import (
    LabeledPrediction,
    LabelMissing,
    MetricsRecord,
    PredictionRecord,
)
from shared.embedded import free_port
from shared.topics import LABELS_MISSING, METRICS, PREDICTIONS, PREDICTIONS_LABELED
from tests.helpers import Stack, produce_json, read_topic, wait_for


def make(i: int, score: float) -> PredictionRecord:
    return PredictionRecord(prediction_id=f"p{i}", entity_id="e", model_version=1, score=score,
                            features={"channel": "online" if i % 2 else "pos", "amount": 1.0},
                            label=score >= 0.5, threshold=0.5, served_at=1000.0 + i)


def latest(stack: Stack, **match: object) -> MetricsRecord | None:
    found = None
    for r in read_topic(stack.broker.url, METRICS.name, count=1_000_000, timeout=0.7):
        rec = MetricsRecord.model_validate(codec.loads(r.value))
        if all(getattr(rec, k) == v for k, v in match.items()):
            found = rec
    return found


def test_estimated_then_measured_metrics_and_prometheus(stack: Stack) -> None:
    port = free_port()
    env = {"RIVULET_PUBLISH_INTERVAL_S": 0.3, "RIVULET_PERFORMANCE_PORT": port}
    proc = stack.spawn("services.performance", **env)
    rng = np.random.default_rng(3)
    preds = [make(i, float(s)) for i, s in enumerate(rng.beta(0.6, 0.9, size=800))]
    produce_json(stack.broker.url, PREDICTIONS.name, [(p.prediction_id, p.model_dump(mode="json")) for p in preds])
    est = wait_for(lambda: latest(stack, kind="performance", slice=None, estimated=True, window=800),
                   timeout=20, what="estimated accuracy")

    actual = {p.prediction_id: bool(rng.random() < p.score) for p in preds[:700]}
    labeled = [LabeledPrediction(**p.model_dump(), actual=actual[p.prediction_id], label_event_time=1.0,
                                 labeled_at=p.served_at + 30, revision=1) for p in preds[:700]]
    fixed = labeled[0].model_copy(update={"actual": not labeled[0].actual, "revision": 2})
    actual["p0"] = fixed.actual
    out = [(x.prediction_id, x.model_dump(mode="json")) for x in labeled + labeled[:20] + [fixed]]
    produce_json(stack.broker.url, PREDICTIONS_LABELED.name, out)
    missing = [LabelMissing(**p.model_dump(), maturity_s=60, expired_at=2e9) for p in preds[700:]]
    produce_json(stack.broker.url, LABELS_MISSING.name, [(m.prediction_id, m.model_dump(mode="json")) for m in missing])

    truth = float(np.mean([(p.score >= 0.5) == actual[p.prediction_id] for p in preds[:700]]))
    measured = wait_for(lambda: latest(stack, kind="performance", slice=None, estimated=False, window=700),
                        timeout=20, what="measured accuracy")
    assert measured.metrics["accuracy"] == pytest.approx(truth)          # corrections replace, never add
    assert est.metrics["accuracy"] == pytest.approx(truth, abs=0.05)      # the estimate was close
    assert {"precision", "recall", "f1", "log_loss", "roc_auc"} <= set(measured.metrics)
    online = latest(stack, kind="performance", slice="channel=online", estimated=False)
    assert online is not None and online.window == 350
    labels = wait_for(lambda: latest(stack, kind="labels", model_version=1, window=800), timeout=10, what="labels")
    assert labels.metrics["coverage"] == pytest.approx(700 / 800) and labels.metrics["corrections"] == 1
    assert labels.metrics["label_delay_p50_s"] == pytest.approx(30.0)

    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'rivulet_model_performance{metric="accuracy",model_version="1",slice="all"}' in body
    assert 'rivulet_model_performance_estimated{model_version="1",slice="all"} 0.0' in body
    assert 'rivulet_labels{metric="coverage",model_version="1"} 0.875' in body

    proc.kill()
    proc.wait()
    before = len(read_topic(stack.broker.url, METRICS.name, count=1_000_000, timeout=0.7))
    stack.spawn("services.performance", **env)                               # state rebuilt by replay
    wait_for(lambda: len(read_topic(stack.broker.url, METRICS.name, count=1_000_000, timeout=0.5)) > before + 5,
             timeout=20, what="snapshots after restart")
    again = latest(stack, kind="performance", slice=None, estimated=False)
    assert again is not None and again.window == 700 and again.metrics["accuracy"] == pytest.approx(truth)
