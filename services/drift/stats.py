"""Pure statistics for drift detection (no I/O, no service state).

Every test here is a thin, documented wrapper over :mod:`scipy.stats`, so the numbers
users see in ``drift.alerts`` are the textbook ones and can be reproduced offline.
The only decisions made here are the ones scipy leaves open: how to bin categories
(unseen and rare categories are pooled into one ``other`` bin) and that categories
are compared as two samples (window vs reference sample), not against "known" shares.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

OTHER = "__other__"
MIN_EXPECTED = 5.0  # bins expected to hold fewer rows are pooled into ``other``


@dataclass(frozen=True)
class TestResult:
    """One hypothesis test: the statistic and its p-value."""

    statistic: float
    p_value: float


@dataclass(frozen=True)
class ChiSquareResult(TestResult):
    """A chi-square test plus its bins, window counts and their expected values."""

    bins: tuple[str, ...]
    observed: tuple[float, ...]
    expected: tuple[float, ...]


def ks_test(window: Sequence[float], reference: Sequence[float]) -> TestResult:
    """Two-sample Kolmogorov-Smirnov test (exactly ``scipy.stats.ks_2samp``).

    Why KS: it needs no binning and no distributional assumption; with ties (counts,
    rounded amounts) it is conservative, which errs on the side of fewer false alarms.

    >>> r = ks_test([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0])
    >>> (r.statistic, r.p_value)
    (0.0, 1.0)
    >>> ks_test([10.0, 11.0, 12.0, 13.0, 14.0], [1.0, 2.0, 3.0, 4.0, 5.0]).statistic
    1.0
    """
    res = stats.ks_2samp(np.asarray(window, dtype=float), np.asarray(reference, dtype=float))
    return TestResult(float(res.statistic), float(res.pvalue))


def chi2_test(window: Iterable[str], reference: Mapping[str, int],
              min_expected: float = MIN_EXPECTED) -> ChiSquareResult | None:
    """Chi-square test that the window's categories come from the same distribution as
    the reference sample: Pearson's test of homogeneity on the 2 x k table of window
    counts and reference counts (``scipy.stats.chi2_contingency``, no Yates correction).

    Why not goodness of fit against the reference proportions: those proportions are
    themselves estimated from a finite sample, and treating them as exact inflates the
    statistic by about ``1 + n_window / n_reference`` (2.5x more false alarms than
    nominal in our calibration). The two-sample table accounts for both samples' noise.

    Categories unseen in the reference, and categories whose expected window count is
    below ``min_expected``, are pooled into one ``other`` bin, so sparse bins do not
    inflate the statistic and a new category needs no smoothing: its reference count is
    0, so a frequent new category gives a huge statistic, not a division by zero.
    ``None`` when there is nothing to test (empty side, or one bin after pooling).

    >>> ref = {"a": 500, "b": 500}
    >>> chi2_test(["a"] * 50 + ["b"] * 50, ref).p_value
    1.0
    >>> r = chi2_test(["a"] * 40 + ["b"] * 40 + ["new"] * 20, ref)
    >>> r.p_value < 1e-12, r.bins
    (True, ('a', 'b', '__other__'))
    """
    observed = Counter(str(v) for v in window)
    ref = {str(k): float(v) for k, v in reference.items() if float(v) > 0}
    n, m = sum(observed.values()), sum(ref.values())
    if n == 0 or m == 0:
        return None
    share = n / (n + m)
    small = min(share, 1.0 - share)  # expected counts of the smaller side
    keep = sorted(k for k in ref if (ref[k] + observed.get(k, 0)) * small >= min_expected)
    win = [float(observed.get(k, 0)) for k in keep]
    rest = [ref[k] for k in keep]
    other = (n - sum(win), m - sum(rest))
    bins = tuple(keep) + ((OTHER,) if sum(other) > 0 else ())
    if sum(other) > 0:
        win, rest = [*win, other[0]], [*rest, other[1]]
    if len(bins) < 2:
        return None
    table = np.array([win, rest])
    res = stats.chi2_contingency(table, correction=False)
    expected = tuple(float(x) for x in res.expected_freq[0])
    return ChiSquareResult(float(res.statistic), float(res.pvalue), bins, tuple(win), expected)


def largest_shift(window: Iterable[str], reference: Mapping[str, int]) -> tuple[str, float, float]:
    """The category whose share moved most: (category, window share, reference share).
    Used to name the culprit in an alert message.

    >>> largest_shift(["a", "b", "z", "z"], {"a": 5, "b": 5})
    ('z', 0.5, 0.0)
    """
    observed = Counter(str(v) for v in window)
    n = sum(observed.values()) or 1
    total = sum(reference.values()) or 1
    cats = set(observed) | set(reference)
    best = max(sorted(cats), key=lambda k: abs(observed.get(k, 0) / n - reference.get(k, 0) / total))
    return best, observed.get(best, 0) / n, reference.get(best, 0) / total


def accuracy_drop_test(correct: int, n: int, tolerated_accuracy: float) -> TestResult:
    """One-sided exact binomial test (``scipy.stats.binomtest``, alternative ``less``) of
    H0: true accuracy >= ``tolerated_accuracy`` (validation accuracy minus the allowed
    drop). Statistic = observed accuracy. Testing against the tolerated level, not the
    validation accuracy itself, keeps noise in the validation estimate from firing alerts.

    >>> round(accuracy_drop_test(90, 100, 0.85).p_value, 3)
    0.945
    >>> accuracy_drop_test(60, 100, 0.85).p_value < 1e-6
    True
    """
    res = stats.binomtest(int(correct), int(n), float(tolerated_accuracy), alternative="less")
    return TestResult(correct / n if n else 0.0, float(res.pvalue))


def per_test_alpha(alpha: float, n_tests: int) -> float:
    """Bonferroni: keeps the chance of ANY false alarm in a window at most ``alpha``.

    >>> per_test_alpha(0.001, 4)
    0.00025
    """
    return alpha / max(1, n_tests)


def severity(p_value: float, threshold: float) -> str:
    """high: p below threshold/100; medium: below threshold/10; low: otherwise.

    >>> severity(1e-9, 1e-4), severity(5e-6, 1e-4), severity(5e-5, 1e-4)
    ('high', 'medium', 'low')
    """
    if p_value < threshold / 100:
        return "high"
    return "medium" if p_value < threshold / 10 else "low"
