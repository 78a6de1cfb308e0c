"""Regression metrics in the performance tracker (``model.task = "regression"``)."""

from __future__ import annotations

import pytest

from services.performance.handlers import regression_metrics
from services.performance.tracker import Tracker
from shared.contracts import LabeledPrediction
from shared.spec import MonitoringSpec


def labeled(i: int, predicted: float, actual: float | bool, revision: int = 1) -> LabeledPrediction:
    return LabeledPrediction(prediction_id=f"p{i}", entity_id="e", model_version=2, score=predicted,
                             features={"region": "north" if i % 2 else "south"}, label=False, threshold=0.0,
                             served_at=100.0 + i, actual=actual, label_event_time=1.0, labeled_at=110.0 + i,
                             revision=revision)


def test_regression_metrics_match_the_definitions() -> None:
    m = regression_metrics([1.0, 2.0, 4.0, 10.0], [1.0, 3.0, 2.0, 6.0])
    assert m == {"count": 4.0, "mae": 1.75, "rmse": pytest.approx((21 / 4) ** 0.5), "mean_error": 1.25}


def test_tracker_computes_mae_rmse_per_slice_and_counts_a_correction_once() -> None:
    tr = Tracker(MonitoringSpec(slices=("region",), min_labels=3), task="regression")
    for i, (p, a) in enumerate([(10.0, 12.0), (5.0, 5.0), (8.0, 4.0), (1.0, 2.0)]):
        assert tr.on_labeled(labeled(i, p, a)) == "new"
    assert tr.on_labeled(labeled(0, 10.0, 11.0, revision=2)) == "correction"  # error 2 -> 1
    assert tr.on_labeled(labeled(9, 1.0, True)) == "non_numeric"  # a class label on a regression spec
    snap = {r.slice: r for r in tr.snapshot(0.0) if r.kind == "performance"}
    overall = snap[None]
    assert not overall.estimated and overall.window == 4
    assert overall.metrics["mae"] == pytest.approx((1 + 0 + 4 + 1) / 4)
    assert overall.metrics["rmse"] == pytest.approx(((1 + 0 + 16 + 1) / 4) ** 0.5)
    assert "accuracy" not in overall.metrics
    assert "region=south" not in snap and "region=north" not in snap  # 2 labels each < min_labels
