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


def test_decide_uses_bonferroni_per_test_alpha() -> None:
    span = AlertWindow(start=1.0, end=2.0, count=10)
    outcomes = [Outcome("data_drift", f"f{i}", "ks", 0.1, p, "") for i, p in
                enumerate([0.0002, 0.0003, 0.5, 0.9])]
    found = handlers.decide(outcomes, alpha=0.001, version=3, window=span)
    assert [f.outcome.feature for f in found] == ["f0"]  # 0.0003 > 0.001 / 4
    assert found[0].threshold == pytest.approx(0.00025) and found[0].model_version == 3


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
