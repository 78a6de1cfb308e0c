"""The accuracy-drop test's yardstick pools a small validation holdout with the version's own
first live windows: a lucky 20-row holdout (accuracy 1.0) no longer makes a steady 0.90
model look drifted, while a real drop after the reference settled still fires."""

from __future__ import annotations

import numpy as np

from services.drift.monitor import DriftMonitor, reference_accuracy
from shared.contracts import ModelEvent
from tests.unit.test_drift_monitor import SPEC, _labeled, records, synth_rows


def _errors_fired(monitor: DriftMonitor, rng: np.random.Generator, accuracies: list[float],
                  start: int = 0) -> list[str]:
    recs = records(synth_rows(rng, len(accuracies)), 1, start=start)  # distinct ids: no redelivery
    return [f.outcome.test for rec, p in zip(recs, accuracies)
            for f in monitor.add_labeled(_labeled(rec, bool(rng.random() < p)))]


def _promote(monitor: DriftMonitor, accuracy: float, count: float) -> None:
    monitor.apply_model_event(ModelEvent(event="promoted", version=1, created_at=0.0,
                                         metrics={"accuracy": accuracy, "count": count}))


def test_lucky_small_holdout_is_pooled_with_live_windows_before_it_judges() -> None:
    window, size = SPEC.drift.accuracy_window, SPEC.drift.reference_size
    monitor = DriftMonitor(SPEC)
    _promote(monitor, 1.0, 20.0)
    st = monitor.versions[1]
    assert 0.85 < reference_accuracy(st) < 0.9  # the lower bound of 20/20, not 1.0
    rng = np.random.default_rng(3)
    steady = _errors_fired(monitor, rng, [0.9] * (4 * size))
    assert "accuracy_drop" not in steady  # 0.90 vs a 20-row 1.0 taken as exact would fire (tolerated 0.95)
    assert st.live_n == (size // window + (size % window > 0)) * window  # pooling stops at reference_size
    assert abs(reference_accuracy(st) - 0.9) < 0.03
    drop = _errors_fired(monitor, rng, [0.6] * (2 * window), start=10 * size)
    assert "accuracy_drop" in drop
    assert st.live_n == (size // window + (size % window > 0)) * window  # the failing windows are not pooled


def test_without_pooling_the_same_stream_would_fire() -> None:
    monitor = DriftMonitor(SPEC)
    _promote(monitor, 1.0, 1e9)  # a holdout so large that live windows cannot move the reference
    assert "accuracy_drop" in _errors_fired(monitor, np.random.default_rng(3), [0.9] * 2 * SPEC.drift.accuracy_window)
