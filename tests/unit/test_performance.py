"""Online performance metrics (pure): metric values against independent computations,
the confidence-based estimate against a synthetic calibrated stream, corrections that
replace instead of adding, slices, and label coverage / delay."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from services.performance.handlers import (
    classification_metrics,
    estimated_accuracy,
    roc_auc,
    slice_keys,
)
from services.performance.tracker import Tracker
from shared.contracts import LabeledPrediction, LabelMissing, PredictionRecord
from shared.spec import MonitoringSpec


def pred(i: int, score: float, channel: str = "pos", version: int = 1) -> PredictionRecord:
    return PredictionRecord(prediction_id=f"p{i}", entity_id="e", model_version=version,
                            features={"channel": channel, "amount": 1.0}, score=score, label=score >= 0.5,
                            threshold=0.5, served_at=1000.0 + i)


def labeled(p: PredictionRecord, actual: bool, revision: int = 1, delay: float = 60.0) -> LabeledPrediction:
    return LabeledPrediction(**p.model_dump(), actual=actual, label_event_time=p.served_at + 1,
                             labeled_at=p.served_at + delay, revision=revision)


def test_metrics_match_independent_computations() -> None:
    rng = np.random.default_rng(1)
    y = rng.random(400) < 0.3
    s = np.clip(0.3 * y + rng.random(400) * 0.7, 0, 1)
    s[:50] = 0.5  # ties
    p = s >= 0.5
    m = classification_metrics(s.tolist(), p.tolist(), y.tolist())
    tp, fp, fn = (p & y).sum(), (p & ~y).sum(), (~p & y).sum()
    assert m["accuracy"] == pytest.approx((p == y).mean())
    assert m["precision"] == pytest.approx(tp / (tp + fp)) and m["recall"] == pytest.approx(tp / (tp + fn))
    assert m["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    sc = np.clip(s, 1e-15, 1 - 1e-15)
    assert m["log_loss"] == pytest.approx(-np.mean(y * np.log(sc) + (~y) * np.log(1 - sc)))
    u = mannwhitneyu(s[y], s[~y]).statistic
    assert m["roc_auc"] == pytest.approx(u / (y.sum() * (~y).sum()))
    assert math.isnan(roc_auc(np.array([0.1, 0.9]), np.array([True, True])))
    assert math.isnan(classification_metrics([0.1], [False], [False])["precision"])


def test_estimate_matches_measured_accuracy_on_a_calibrated_stream() -> None:
    """y ~ Bernoulli(score): the scores are calibrated by construction."""
    rng = np.random.default_rng(7)
    tracker = Tracker(MonitoringSpec(window=5000, min_labels=5000))
    recs = [pred(i, float(s)) for i, s in enumerate(rng.beta(0.6, 0.9, size=5000))]
    for r in recs:
        tracker.on_prediction(r)
    before = {(m.slice, m.kind): m for m in tracker.snapshot(2.0)}[(None, "performance")]
    assert before.estimated is True and before.metrics["labeled"] == 0
    for r in recs:
        tracker.on_labeled(labeled(r, bool(rng.random() < r.score)))
    after = {(m.slice, m.kind): m for m in tracker.snapshot(3.0)}[(None, "performance")]
    assert after.estimated is False and after.window == 5000
    assert before.metrics["accuracy"] == pytest.approx(after.metrics["accuracy"], abs=0.02)
    assert after.metrics["estimated_accuracy"] == pytest.approx(before.metrics["accuracy"])


def test_estimate_is_off_when_scores_are_not_calibrated() -> None:
    """The same check fails on an overconfident model: the test above can fail."""
    rng = np.random.default_rng(8)
    scores = rng.beta(0.6, 0.9, size=5000)
    y = rng.random(5000) < 0.5 + 0.2 * (scores - 0.5)  # the truth barely follows the scores
    measured = float(((scores >= 0.5) == y).mean())
    assert abs(estimated_accuracy(scores.tolist(), [0.5] * 5000) - measured) > 0.1


def test_corrections_replace_and_redeliveries_are_ignored() -> None:
    tracker = Tracker(MonitoringSpec(window=100, min_labels=2))
    a, b = pred(1, 0.9), pred(2, 0.2)
    assert tracker.on_labeled(labeled(a, False)) == "new"
    assert tracker.on_labeled(labeled(b, False)) == "new"
    assert tracker.on_labeled(labeled(a, False)) == "stale"          # redelivered
    assert tracker.on_labeled(labeled(a, True, revision=2)) == "correction"
    assert tracker.on_labeled(labeled(a, False, revision=1)) == "stale"  # late older revision
    perf = next(m for m in tracker.snapshot(1.0) if m.kind == "performance" and m.slice is None)
    assert perf.window == 2 and perf.metrics["accuracy"] == 1.0        # counted once, latest label
    labels = next(m for m in tracker.snapshot(1.0) if m.kind == "labels")
    assert labels.metrics["corrections"] == 1 and labels.metrics["labeled_total"] == 2


def test_slices_window_bound_and_coverage_and_delay() -> None:
    tracker = Tracker(MonitoringSpec(window=4, min_labels=1, slices=("channel",)))
    for i in range(6):
        p = pred(i, 0.8, channel="online" if i % 2 else "pos")
        tracker.on_prediction(p)
        if i < 4:
            tracker.on_labeled(labeled(p, i != 0, delay=10.0 * (i + 1)))
        else:
            tracker.on_missing(LabelMissing(**p.model_dump(), maturity_s=60, expired_at=2000.0))
    tracker.on_missing(LabelMissing(**pred(4, 0.8).model_dump(), maturity_s=60, expired_at=2001.0))  # again
    snap = {(m.kind, m.slice): m for m in tracker.snapshot(5.0)}
    assert snap[("performance", None)].window == 4
    assert snap[("performance", "channel=pos")].metrics["accuracy"] == 0.5      # p0 wrong, p2 right
    assert snap[("performance", "channel=online")].metrics["accuracy"] == 1.0
    lab = snap[("labels", None)]
    assert lab.window == 4 and lab.metrics["coverage"] == 0.5                   # p2, p3 labeled; p4, p5 missing
    assert lab.metrics["missing_total"] == 2
    assert lab.metrics["label_delay_p50_s"] == pytest.approx(25.0)              # delays 10, 20, 30, 40
    assert slice_keys({"channel": None}, ("channel",)) == [None, "channel=<missing>"]


def test_regression_labels_are_skipped_not_crashing() -> None:
    tracker = Tracker(MonitoringSpec())
    assert tracker.on_labeled(labeled(pred(1, 0.3), True).model_copy(update={"actual": 3.5})) == "non_binary"
    assert [m.kind for m in tracker.snapshot(1.0)] == []
