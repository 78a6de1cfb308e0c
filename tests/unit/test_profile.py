"""Reference profiles: deterministic, and they count values the way drift reads them."""

from __future__ import annotations

import math

from shared.profile import build_profile, category_value, numeric_value
from shared.spec import load_spec

SPEC = load_spec()


def _rows(n: int) -> list[dict]:
    return [{"amount": float(i), "txn_count_5m": i % 3, "merchant_category": "m" + str(i % 4),
             "country": None if i % 5 == 0 else "US", "channel": "pos"} for i in range(n)]


def test_profile_is_deterministic_and_sampled_to_size() -> None:
    rows = _rows(100)
    a = build_profile(rows, [0.1] * 100, SPEC, size=30, seed=1)
    assert a == build_profile(rows, [0.1] * 100, SPEC, size=30, seed=1)
    assert a["count"] == 30 and len(a["numeric"]["amount"]) == 30 and len(a["score"]) == 30
    assert a != build_profile(rows, [0.1] * 100, SPEC, size=30, seed=2)


def test_profile_skips_missing_values() -> None:
    rows = _rows(10) + [{"amount": math.nan, "txn_count_5m": True, "merchant_category": None}]
    p = build_profile(rows, [0.5] * 11, SPEC)
    assert len(p["numeric"]["amount"]) == 10 and len(p["numeric"]["txn_count_5m"]) == 10
    assert p["numeric"]["amount_sum_5m"] == []  # never present
    assert p["categorical"]["country"] == {"US": 8}
    assert sum(p["categorical"]["merchant_category"].values()) == 10


def test_value_readers() -> None:
    assert numeric_value(3) == 3.0 and numeric_value(True) is None and numeric_value(math.inf) is None
    assert numeric_value("1") is None and category_value(None) is None and category_value(7) == "7"


def test_profile_has_quantile_bins_missing_counts_and_score_bins_over_all_rows() -> None:
    rows = _rows(1000)
    p = build_profile(rows, [i / 1000 for i in range(1000)], SPEC, size=100)
    assert p["rows"] == 1000 and p["count"] == 100
    bins = p["bins"]["amount"]
    assert len(bins["edges"]) == 9 and sum(bins["counts"]) == 1000 and max(bins["counts"]) - min(bins["counts"]) <= 1
    assert p["bins"]["txn_count_5m"]["edges"] == [0.0, 1.0, 2.0]  # heavy ties: duplicate edges dropped
    assert sum(p["bins"]["txn_count_5m"]["counts"]) == 1000
    assert p["missing"]["country"] == 200 and p["missing"]["amount"] == 0 and p["missing"]["amount_sum_5m"] == 1000
    assert sum(p["score_bins"]["counts"]) == 1000
