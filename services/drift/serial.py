"""Serial dependence and change points: what makes the iid tests of :mod:`stats` honest
on real traffic (pure, no I/O).

Production features arrive in bursts and trends, so consecutive values are correlated;
a KS test that assumes independent samples is then far too confident. These helpers
measure the lag-1 autocorrelation, shrink the sample size accordingly (only when the
correlation is significant) and place a detected change in time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats


def lag1_autocorrelation(values: np.ndarray) -> float:
    """Sample lag-1 autocorrelation of a sequence in arrival order (0 if constant or short).

    >>> round(lag1_autocorrelation(np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])), 3)
    0.5
    """
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size < 3:
        return 0.0
    x = x - x.mean()
    denom = float(np.dot(x, x))
    return float(np.dot(x[:-1], x[1:]) / denom) if denom > 0 else 0.0


def serial_correlation(values: np.ndarray) -> float:
    """The lag-1 autocorrelation used to shrink the sample size: only when it is positive
    AND significant (above 2/sqrt(n), the iid noise band), else 0, so iid streams keep
    their full power while truly correlated streams get their honest n.

    >>> serial_correlation(np.arange(100.0)) > 0.9
    True
    >>> serial_correlation(np.random.default_rng(0).normal(size=500))
    0.0
    """
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    rho = lag1_autocorrelation(x)
    return rho if x.size >= 3 and rho > 2.0 / math.sqrt(x.size) else 0.0


def effective_size(n: int, rho: float) -> float:
    """Effective sample size of an AR(1)-like sequence: n (1 - rho) / (1 + rho), at least 2.
    Why: the variance of a mean (and of an ECDF point) of n positively autocorrelated
    values equals that of n_eff independent ones, so tests that assume iid samples
    are too confident by that factor.

    >>> effective_size(1000, 0.0), effective_size(1000, 0.5)
    (1000.0, 333.3333333333333)
    """
    rho = min(max(rho, 0.0), 0.99)
    return max(2.0, n * (1.0 - rho) / (1.0 + rho))


def ks_pvalue_effective(d: float, n_eff: float, m_eff: float) -> float:
    """KS p-value for statistic ``d`` at effective sizes: Smirnov's distribution at
    en = n_eff m_eff / (n_eff + m_eff) (what ``ks_2samp(method="asymp")`` uses with the
    nominal sizes)."""
    en = max(1, round(n_eff * m_eff / (n_eff + m_eff)))
    return float(stats.kstwo.sf(d, en))


def mean_shift_point(values: Sequence[float]) -> int:
    """Index of the first value after the most likely single change of mean: the argmax
    of the standardized CUSUM |S_k - k S_n / n| / sqrt(k (n - k) / n) (the likelihood-ratio
    change-point estimator for a mean shift). Used to place a concept detector's alarm in
    time: ADWIN and Page-Hinkley say *that* the error rate moved, this says *where*.

    >>> mean_shift_point([0.0] * 30 + [1.0] * 10)
    30
    """
    x = np.asarray(values, dtype=float)
    n = x.size
    if n < 2:
        return 0
    k = np.arange(1, n)
    s = np.cumsum(x)[:-1]
    score = np.abs(s - k * x.sum() / n) / np.sqrt(k * (n - k) / n)
    return int(np.argmax(score)) + 1
