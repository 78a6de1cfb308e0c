"""performance on a regression spec (``model.task = "regression"``), as a real process on
the real broker: MAE and RMSE overall and per slice on ``metrics`` and Prometheus,
corrections replacing (not adding to) the errors, and a count-only estimated record
before enough labels exist."""

from __future__ import annotations

import urllib.request

import numpy as np
import pytest

from shared.contracts import LabeledPrediction, PredictionRecord
from shared.embedded import free_port
from shared.topics import PREDICTIONS, PREDICTIONS_LABELED
from tests.helpers import Stack, produce_json, wait_for
from tests.integration.test_performance import latest

SPEC = """name = "delivery_time"
features = []
[event.fields.distance_km]
type = "float"
[event.fields.channel]
type = "str"
[model]
task = "regression"
numeric = ["distance_km"]
categorical = ["channel"]
[monitoring]
slices = ["channel"]
window = 1000
min_labels = 50
"""


def test_regression_spec_publishes_mae_and_rmse(stack: Stack) -> None:
    spec_path = stack.tmp / "regression.toml"
    spec_path.write_text(SPEC)
    port = free_port()
    stack.spawn("services.performance", RIVULET_SPEC=str(spec_path), RIVULET_PUBLISH_INTERVAL_S=0.3,
                RIVULET_PERFORMANCE_PORT=port)
    rng = np.random.default_rng(5)
    n = 400
    predicted = rng.uniform(10, 60, n)
    actual = predicted + rng.normal(0, 4, n)
    preds = [PredictionRecord(prediction_id=f"p{i}", entity_id="e", model_version=1, score=float(predicted[i]),
                              features={"distance_km": 3.0, "channel": "app" if i % 4 else "web"},
                              label=False, threshold=0.0, served_at=1000.0 + i) for i in range(n)]
    produce_json(stack.broker.url, PREDICTIONS.name, [(p.prediction_id, p.model_dump(mode="json")) for p in preds[:30]])
    early = wait_for(lambda: latest(stack, kind="performance", slice=None, estimated=True), timeout=20,
                     what="estimated record")
    assert "mae" not in early.metrics and early.metrics["predictions"] == 30

    produce_json(stack.broker.url, PREDICTIONS.name, [(p.prediction_id, p.model_dump(mode="json")) for p in preds[30:]])
    labeled = [LabeledPrediction(**p.model_dump(), actual=float(actual[i]), label_event_time=1.0,
                                 labeled_at=p.served_at + 5) for i, p in enumerate(preds)]
    wrong = labeled[0].model_copy(update={"actual": 1e6})  # revision 1 sent twice: the second is stale
    fixed = labeled[1].model_copy(update={"actual": float(predicted[1]) + 100.0, "revision": 2})
    actual[1] = fixed.actual
    produce_json(stack.broker.url, PREDICTIONS_LABELED.name,
                 [(x.prediction_id, x.model_dump(mode="json")) for x in [*labeled, wrong, fixed]])

    err = predicted - actual
    rec = wait_for(lambda: latest(stack, kind="performance", slice=None, estimated=False, window=n),
                   timeout=20, what="measured regression metrics")
    assert rec.metrics["mae"] == pytest.approx(float(np.mean(np.abs(err))))
    assert rec.metrics["rmse"] == pytest.approx(float(np.sqrt(np.mean(err ** 2))))
    assert rec.metrics["mean_error"] == pytest.approx(float(np.mean(err)))
    assert "accuracy" not in rec.metrics
    web = latest(stack, kind="performance", slice="channel=web", estimated=False)
    mask = np.arange(n) % 4 == 0
    assert web is not None and web.window == mask.sum()
    assert web.metrics["mae"] == pytest.approx(float(np.mean(np.abs(err[mask]))))

    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'rivulet_model_performance{metric="rmse",model_version="1",slice="all"}' in body
    assert 'rivulet_model_performance{metric="mae",model_version="1",slice="channel=web"}' in body
