"""Reference profiles: what a model's inputs and scores looked like when it was trained.

Stored with each model version (in the ``models`` announcement) and compared by the
drift service against recent traffic.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from shared.spec import UseCaseSpec

BINS = 10  # quantile bins per numeric input (deciles)


def build_profile(rows: Sequence[Mapping[str, Any]], scores: Sequence[float], spec: UseCaseSpec,
                  size: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Per numeric input a sample of finite values and quantile bins; per categorical input
    frequencies; a sample and quantile bins of the scores; per input the missing count.
    Sampling is seeded, so the same rows give the same profile."""
    size = size or spec.drift.reference_size
    rng = random.Random(seed)
    idx = list(range(len(rows)))
    if len(idx) > size:
        idx = sorted(rng.sample(idx, size))
    numeric: dict[str, list[float]] = {}
    for name in spec.model.numeric:
        vals = (numeric_value(rows[i].get(name)) for i in idx)
        numeric[name] = [v for v in vals if v is not None]
    categorical: dict[str, dict[str, int]] = {}
    for name in spec.model.categorical:
        cats = (category_value(rows[i].get(name)) for i in idx)
        categorical[name] = dict(Counter(c for c in cats if c is not None))
    return {
        "count": len(idx),
        "numeric": numeric,
        "categorical": categorical,
        "score": [float(scores[i]) for i in idx if i < len(scores)],
        # Over ALL rows, not the sample: quantile bins (PSI) and missing counts (data quality).
        "rows": len(rows),
        "bins": {name: quantile_bins([numeric_value(r.get(name)) for r in rows]) for name in spec.model.numeric},
        "score_bins": quantile_bins([numeric_value(s) for s in scores]),
        "missing": {name: sum(1 for r in rows if _missing(r.get(name), name in spec.model.numeric))
                    for name in spec.model_inputs},
    }


def quantile_bins(values: Sequence[float | None], n_bins: int = BINS) -> dict[str, list[float]]:
    """Decile edges of the finite values (duplicates dropped, so heavy ties give fewer
    bins) and the count of values per bin: ``edges`` are the interior cut points and bin
    ``i`` holds ``edges[i-1] < x <= edges[i]`` (``numpy.searchsorted(edges, x, "left")``)."""
    finite = np.array([v for v in values if v is not None], dtype=float)
    if finite.size == 0:
        return {"edges": [], "counts": []}
    qs = np.quantile(finite, np.linspace(0, 1, n_bins + 1)[1:-1])
    edges = np.unique(qs)
    counts = np.bincount(np.searchsorted(edges, finite, "left"), minlength=edges.size + 1)
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def _missing(v: Any, numeric: bool) -> bool:
    return (numeric_value(v) if numeric else category_value(v)) is None


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def numeric_value(v: Any) -> float | None:
    """The value a numeric profile counts (finite number), else None (missing).
    Public so that whoever compares traffic to a profile reads values the same way."""
    return float(v) if _finite(v) else None


def category_value(v: Any) -> str | None:
    """The value a categorical profile counts (``str(v)``), else None (missing)."""
    return None if v is None else str(v)
