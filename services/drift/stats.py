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
from functools import lru_cache

import numpy as np
from scipy import special, stats
from scipy.spatial import distance

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
    return chi2_counts(Counter(str(v) for v in window), reference, min_expected)


def chi2_counts(observed: Mapping[str, int], reference: Mapping[str, int],
                min_expected: float = MIN_EXPECTED) -> ChiSquareResult | None:
    """:func:`chi2_test` on window counts (the service counts each window once). Pearson's
    statistic on the 2 x k table and its chi-square(k - 1) p-value, computed with numpy
    (the same arithmetic as ``chi2_contingency(correction=False)``, without its overhead)."""
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
    expected_freq = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    statistic = float(((table - expected_freq) ** 2 / expected_freq).sum())
    p_value = float(special.chdtrc(len(bins) - 1, statistic))
    return ChiSquareResult(statistic, p_value, bins, tuple(win), tuple(float(x) for x in expected_freq[0]))


def ks_statistic(window_sorted: np.ndarray, reference_sorted: np.ndarray) -> float:
    """The two-sample KS statistic D of ``scipy.stats.ks_2samp``, computed the same way
    (ECDF difference at every pooled value) on already sorted arrays. Why separate: the
    service computes D at every evaluation and asks scipy for the exact p-value only when
    D is near the critical value (see :func:`ks_critical`), which keeps it cheap.

    >>> ks_statistic(np.array([1.0, 2.0]), np.array([3.0, 4.0]))
    1.0
    """
    return ks_and_wasserstein(window_sorted, reference_sorted)[0]


@lru_cache(maxsize=4096)
def ks_critical(n: int, m: int, threshold: float) -> float:
    """Smirnov's asymptotic critical D for sizes n, m at ``threshold`` (what scipy's
    ``method="asymp"`` inverts). Used only as a pre-screen: D below 0.85 of it is far
    from significant; at or above it scipy's exact p-value decides."""
    en = round(n * m / (n + m))
    return float(stats.kstwo.isf(threshold, en))


def wasserstein(window_sorted: np.ndarray, reference_sorted: np.ndarray) -> float:
    """1-Wasserstein (earth mover's) distance, same as ``scipy.stats.wasserstein_distance``:
    the area between the two ECDFs. In the units of the feature (the service divides it
    by the reference's standard deviation for a unit-free effect size).

    >>> wasserstein(np.array([0.0, 1.0]), np.array([2.0, 3.0]))
    2.0
    """
    return ks_and_wasserstein(window_sorted, reference_sorted)[1]


def ks_and_wasserstein(window_sorted: np.ndarray, reference_sorted: np.ndarray) -> tuple[float, float]:
    """Both statistics from one pass over the pooled sorted values (the service's hot
    path): D = max |ECDF difference| at the pooled values (as ``ks_2samp``), W = the area
    between the ECDFs (as ``wasserstein_distance``)."""
    n, m = window_sorted.size, reference_sorted.size
    pooled = np.concatenate([window_sorted, reference_sorted])
    order = np.argsort(pooled, kind="stable")  # merges the two sorted runs
    both = pooled[order]
    # ECDF difference after each pooled value; with ties only the last of a run counts.
    in_window = np.cumsum(order < n)
    gaps = np.abs(in_window / n - (np.arange(1, both.size + 1) - in_window) / m)
    last = np.empty(both.size, dtype=bool)
    last[:-1] = both[1:] != both[:-1]
    last[-1] = True
    gaps = gaps[last]
    return float(gaps.max()), float(np.dot(gaps[:-1], np.diff(both[last])))


def jensen_shannon(window: Mapping[str, float], reference: Mapping[str, float]) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) between two category count tables,
    exactly ``scipy.spatial.distance.jensenshannon`` over the union of categories.

    >>> jensen_shannon({"a": 1}, {"b": 1})
    1.0
    """
    cats = sorted(set(window) | set(reference))
    p = np.array([float(window.get(c, 0)) for c in cats])
    q = np.array([float(reference.get(c, 0)) for c in cats])
    if p.sum() == 0 or q.sum() == 0:
        return 0.0
    return float(distance.jensenshannon(p, q, base=2))


PSI_EPS = 1e-4  # share floor of an empty bin: keeps PSI finite


def psi(window_counts: Sequence[float], reference_counts: Sequence[float]) -> float:
    """Population stability index sum((w - r) * ln(w / r)) over bins of shares.
    Rule of thumb: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 major shift.

    >>> psi([50, 50], [50, 50])
    0.0
    >>> round(psi([90, 10], [50, 50]), 4)
    0.8789
    """
    w = np.asarray(window_counts, dtype=float)
    r = np.asarray(reference_counts, dtype=float)
    if w.sum() == 0 or r.sum() == 0:
        return 0.0
    w = np.clip(w / w.sum(), PSI_EPS, None)
    r = np.clip(r / r.sum(), PSI_EPS, None)
    return float(np.sum((w - r) * np.log(w / r)))


def psi_numeric(window: np.ndarray, edges: Sequence[float], reference_counts: Sequence[int]) -> float:
    """PSI of finite values over the reference's quantile bins (see shared.profile.quantile_bins)."""
    if len(reference_counts) < 2:
        return 0.0
    counts = np.bincount(np.searchsorted(np.asarray(edges), window, "left"), minlength=len(reference_counts))
    return psi(counts, reference_counts)


def psi_categorical(window: Mapping[str, int], reference: Mapping[str, int]) -> float:
    """PSI over the union of categories (a new category is a bin with reference share 0)."""
    cats = sorted(set(window) | set(reference))
    return psi([window.get(c, 0) for c in cats], [reference.get(c, 0) for c in cats])


def excess_rate_test(bad: int, n: int, tolerated_rate: float) -> TestResult:
    """One-sided exact binomial test (``scipy.stats.binomtest``, alternative ``greater``)
    of H0: rate of bad values <= ``tolerated_rate``. Statistic = observed rate. Used for
    data quality (missing, non-finite, out-of-range, unseen) and stale predictions.

    >>> excess_rate_test(5, 100, 0.05).p_value > 0.3
    True
    >>> excess_rate_test(30, 100, 0.05).p_value < 1e-9
    True
    """
    if n == 0 or tolerated_rate >= 1.0:
        return TestResult(0.0 if n == 0 else bad / n, 1.0)
    res = stats.binomtest(int(bad), int(n), float(tolerated_rate), alternative="greater")
    return TestResult(bad / n, float(res.pvalue))


def largest_shift(window: Iterable[str], reference: Mapping[str, int]) -> tuple[str, float, float]:
    """The category whose share moved most: (category, window share, reference share).
    Used to name the culprit in an alert message.

    >>> largest_shift(["a", "b", "z", "z"], {"a": 5, "b": 5})
    ('z', 0.5, 0.0)
    """
    return largest_shift_counts(Counter(str(v) for v in window), reference)


def largest_shift_counts(observed: Mapping[str, int], reference: Mapping[str, int]) -> tuple[str, float, float]:
    """:func:`largest_shift` on window counts."""
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
