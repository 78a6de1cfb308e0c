"""The drift statistics are the textbook scipy ones, and their doctests hold."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from scipy import stats as sps

from services.drift import handlers, stats
from services.drift.handlers import Outcome
from shared.contracts import AlertWindow


def test_doctests_pass() -> None:
    for module in (stats,):
        result = doctest.testmod(module)
        assert result.attempted > 5 and result.failed == 0


def test_ks_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 300), rng.normal(0.3, 1, 900)
    ours, ref = stats.ks_test(a.tolist(), b.tolist()), sps.ks_2samp(a, b)
    assert ours.statistic == pytest.approx(ref.statistic) and ours.p_value == pytest.approx(ref.pvalue)


def test_chi2_matches_scipy_contingency_when_no_bin_is_pooled() -> None:
    rng = np.random.default_rng(1)
    window = rng.choice(["a", "b", "c"], 500, p=[0.5, 0.3, 0.2]).tolist()
    reference = dict(zip(*np.unique(rng.choice(["a", "b", "c"], 2000, p=[0.45, 0.35, 0.2]),
                                    return_counts=True)))
    reference = {str(k): int(v) for k, v in reference.items()}
    ours = stats.chi2_test(window, reference)
    table = [[window.count(k) for k in ("a", "b", "c")], [reference[k] for k in ("a", "b", "c")]]
    ref = sps.chi2_contingency(np.array(table), correction=False)
    assert ours is not None and ours.bins == ("a", "b", "c")
    assert ours.statistic == pytest.approx(ref.statistic) and ours.p_value == pytest.approx(ref.pvalue)


def test_chi2_pools_rare_and_unseen_categories() -> None:
    reference = {"a": 1000, "b": 990, "rare": 10}
    result = stats.chi2_test(["a"] * 240 + ["b"] * 250 + ["new"] * 10, reference)
    assert result is not None and result.bins == ("a", "b", stats.OTHER)
    assert result.observed == (240.0, 250.0, 10.0)  # "new" pooled with "rare"
    assert result.p_value > 0.001  # 2% unseen vs 0.5% rare: noticeable, far from an alert


def test_chi2_gives_a_new_frequent_category_a_huge_statistic() -> None:
    result = stats.chi2_test(["a"] * 200 + ["b"] * 200 + ["new"] * 100, {"a": 1000, "b": 1000})
    assert result is not None and result.statistic > 100 and result.p_value < 1e-20


def test_chi2_has_nothing_to_test_with_one_category_or_empty_window() -> None:
    assert stats.chi2_test([], {"a": 3}) is None
    assert stats.chi2_test(["a"] * 50, {"a": 100}) is None


def test_accuracy_test_matches_scipy_binomtest() -> None:
    ours = stats.accuracy_drop_test(230, 300, 0.85)
    ref = sps.binomtest(230, 300, 0.85, alternative="less")
    assert ours.statistic == pytest.approx(230 / 300) and ours.p_value == pytest.approx(ref.pvalue)


def test_decide_uses_the_per_test_threshold_and_rules() -> None:
    span = AlertWindow(start=1.0, end=2.0, count=10)
    outcomes = [Outcome("data_drift", f"f{i}", "ks", 0.1, p, "") for i, p in
                enumerate([0.0002, 0.0003, 0.5, None])]
    outcomes.append(Outcome("data_quality", None, "dlq_rate", 0.2, None, "", critical=0.05, flagged=True))
    found = handlers.decide(outcomes, 0.00025, version=3, window=span)
    assert [f.outcome.key for f in found] == ["f0|ks", "-|dlq_rate"]
    assert found[0].threshold == 0.00025 and found[0].model_version == 3


def test_family_alpha_spends_the_budget_over_evaluations() -> None:
    from shared.spec import DriftSpec, load_spec
    spec = load_spec()
    assert handlers.family_alpha(spec) == pytest.approx(min(spec.drift.alpha, spec.drift.step / 100_000))
    tight = spec.model_copy(update={"drift": DriftSpec(step=50, false_alarms_per_100k=0.5)})
    assert handlers.family_alpha(tight) == pytest.approx(0.5 * 50 / 100_000)


@pytest.mark.parametrize("shift,n,m", [(0.0, 500, 2000), (0.3, 500, 2000), (0.0, 120, 400), (1.0, 60, 2000)])
def test_fast_ks_and_wasserstein_match_scipy(shift: float, n: int, m: int) -> None:
    rng = np.random.default_rng(int(shift * 10) + n)
    a, b = np.sort(rng.normal(shift, 1, n)), np.sort(rng.normal(0, 1, m))
    d, w = stats.ks_and_wasserstein(a, b)
    assert d == pytest.approx(sps.ks_2samp(a, b).statistic, abs=1e-12)
    assert w == pytest.approx(sps.wasserstein_distance(a, b), rel=1e-9)
    assert stats.ks_statistic(a, b) == d and stats.wasserstein(a, b) == w


def test_fast_ks_handles_ties_like_scipy() -> None:
    rng = np.random.default_rng(3)
    a, b = np.sort(rng.poisson(3.0, 500).astype(float)), np.sort(rng.poisson(3.3, 2000).astype(float))
    assert stats.ks_statistic(a, b) == pytest.approx(sps.ks_2samp(a, b).statistic, abs=1e-12)


def test_ks_screen_never_hides_a_significant_result() -> None:
    """Below KS_SCREEN * critical D the p-value is skipped: it must be far above threshold."""
    rng = np.random.default_rng(4)
    ref = np.sort(rng.normal(0, 1, 2000))
    threshold = 1e-5
    crit = stats.ks_critical(500, 2000, threshold)
    for shift in np.linspace(0, 0.4, 9):
        a = np.sort(rng.normal(shift, 1, 500))
        d = stats.ks_statistic(a, ref)
        if d < handlers.KS_SCREEN * crit:
            assert sps.ks_2samp(a, ref).pvalue > 10 * threshold


def test_jensen_shannon_matches_scipy() -> None:
    from scipy.spatial.distance import jensenshannon
    window, ref = {"a": 30, "b": 50, "new": 20}, {"a": 400, "b": 500, "c": 100}
    p, q = [30, 50, 0, 20], [400, 500, 100, 0]
    assert stats.jensen_shannon(window, ref) == pytest.approx(jensenshannon(p, q, base=2))
    assert stats.jensen_shannon(ref, ref) == pytest.approx(0.0, abs=1e-7)


def test_chi2_matches_scipy_on_window_values() -> None:
    window = ["a"] * 120 + ["b"] * 300 + ["c"] * 80
    ref = {"a": 500, "b": 1200, "c": 300}
    res = stats.chi2_test(window, ref)
    exp = sps.chi2_contingency(np.array([[120, 300, 80], [500, 1200, 300]]), correction=False)
    assert res is not None and res.statistic == pytest.approx(exp.statistic) and res.p_value == pytest.approx(exp.pvalue)


def test_psi_matches_its_formula_and_rules_of_thumb() -> None:
    w, r = np.array([30, 20, 50]), np.array([40, 40, 20])
    pw, pr = w / w.sum(), r / r.sum()
    assert stats.psi(w, r) == pytest.approx(float(np.sum((pw - pr) * np.log(pw / pr))))
    rng = np.random.default_rng(5)
    from shared.profile import quantile_bins
    bins = quantile_bins(rng.normal(0, 1, 20_000).tolist())
    same = stats.psi_numeric(rng.normal(0, 1, 5000), bins["edges"], bins["counts"])
    moved = stats.psi_numeric(rng.normal(0.5, 1, 5000), bins["edges"], bins["counts"])
    assert same < 0.01 and 0.2 < moved < 0.35  # PSI of a 0.5 sigma shift is about 0.25
    assert stats.psi_categorical({"a": 50, "new": 50}, {"a": 100}) > 1.0


def test_excess_rate_matches_scipy_binomtest() -> None:
    ours = stats.excess_rate_test(40, 500, 0.05)
    ref = sps.binomtest(40, 500, 0.05, alternative="greater")
    assert ours.statistic == pytest.approx(0.08) and ours.p_value == pytest.approx(ref.pvalue)


def test_accuracy_outcome_needs_both_the_drop_and_significance() -> None:
    assert handlers.accuracy_outcome(80, 100, 0.9, 0.05, 0.001) is None  # below, not significant
    assert handlers.accuracy_outcome(200, 300, 0.9, 0.05, 0.001) is not None
    assert handlers.accuracy_outcome(0, 0, 0.9, 0.05, 0.001) is None


def test_parse_skips_malformed_records() -> None:
    assert handlers.parse("predictions", b"{not json") is None
    assert handlers.parse("predictions", b'{"prediction_id": "x"}') is None
    assert handlers.parse("models", b'{"event": "promoted", "version": 1, "created_at": 1}') is not None


def test_reference_from_malformed_profile_drops_bad_entries() -> None:
    ref = handlers.Reference.from_profile(
        {"numeric": {"a": [1, "x", None, 2.5], "b": "oops"}, "categorical": {"c": {"u": 3, "v": -1}},
         "score": "nope"})
    assert ref.numeric["a"].tolist() == [1.0, 2.5] and "b" not in ref.numeric
    assert ref.categorical == {"c": {"u": 3}} and ref.score.size == 0
