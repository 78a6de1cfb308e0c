"""Pure metric computations: classification metrics on a window, confidence-based
accuracy estimation, and label delay quantiles.

Why estimation: labels arrive late (``spec.labels.maturity``). Until they do, a
calibrated binary model's expected accuracy is known from its scores alone: for a
prediction with score p and decision ``p >= threshold``, P(correct) = p if it predicted
positive, else 1 - p. The mean over a window estimates accuracy (CBPE); it is exact in
expectation when the scores are calibrated, and is replaced by the measured value once
enough labels have matured.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata

EPS = 1e-15


def expected_correct(score: float, threshold: float) -> float:
    """P(the decision is right) if ``score`` is a calibrated P(label is true)."""
    return score if score >= threshold else 1.0 - score


def estimated_accuracy(scores: Sequence[float], thresholds: Sequence[float]) -> float:
    if not scores:
        return math.nan
    s, t = np.asarray(scores, dtype=float), np.asarray(thresholds, dtype=float)
    return float(np.mean(np.where(s >= t, s, 1.0 - s)))


def roc_auc(scores: np.ndarray, actual: np.ndarray) -> float:
    """Mann-Whitney U with average ranks for ties; NaN when only one class is present."""
    n_pos = int(actual.sum())
    n_neg = len(actual) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(scores)
    return float((ranks[actual].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classification_metrics(scores: Sequence[float], predicted: Sequence[bool],
                           actual: Sequence[bool]) -> dict[str, float]:
    """accuracy, precision, recall, f1, log_loss, roc_auc (NaN where undefined), count."""
    s = np.clip(np.asarray(scores, dtype=float), EPS, 1 - EPS)
    p, y = np.asarray(predicted, dtype=bool), np.asarray(actual, dtype=bool)
    n = len(y)
    if n == 0:
        return {"count": 0.0}
    tp, fp, fn = int((p & y).sum()), int((p & ~y).sum()), int((~p & y).sum())
    precision = tp / (tp + fp) if tp + fp else math.nan
    recall = tp / (tp + fn) if tp + fn else math.nan
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan
    log_loss = float(-np.mean(np.where(y, np.log(s), np.log(1 - s))))
    return {
        "count": float(n), "accuracy": float((p == y).mean()), "precision": precision, "recall": recall,
        "f1": f1, "log_loss": log_loss, "roc_auc": roc_auc(s, y), "positive_rate": float(y.mean()),
    }


def regression_metrics(predicted: Sequence[float], actual: Sequence[float]) -> dict[str, float]:
    """mae, rmse, mean_error (bias: predicted - actual), count.

    >>> regression_metrics([1.0, 2.0, 4.0], [1.0, 3.0, 2.0])["mae"]
    1.0
    """
    err = np.asarray(predicted, dtype=float) - np.asarray(actual, dtype=float)
    if err.size == 0:
        return {"count": 0.0}
    return {"count": float(err.size), "mae": float(np.mean(np.abs(err))),
            "rmse": float(np.sqrt(np.mean(err ** 2))), "mean_error": float(np.mean(err))}


def delay_quantiles(delays: Sequence[float]) -> dict[str, float]:
    if not delays:
        return {}
    q50, q95 = np.quantile(np.asarray(delays, dtype=float), [0.5, 0.95])
    return {"label_delay_p50_s": float(q50), "label_delay_p95_s": float(q95)}


def finite(metrics: dict[str, float]) -> dict[str, float]:
    """Only the defined values (JSON and the contracts reject NaN)."""
    return {k: v for k, v in metrics.items() if math.isfinite(v)}


def slice_keys(features: dict[str, object], slices: Sequence[str]) -> list[str | None]:
    """None (all predictions) plus ``"field=value"`` for each declared slice field."""
    keys: list[str | None] = [None]
    for name in slices:
        value = features.get(name)
        keys.append(f"{name}={'<missing>' if value is None else value}")
    return keys
