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

from shared.spec import UseCaseSpec


def build_profile(rows: Sequence[Mapping[str, Any]], scores: Sequence[float], spec: UseCaseSpec,
                  size: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Per numeric input a sample of finite values; per categorical input frequencies;
    a sample of scores. Sampling is seeded, so the same rows give the same profile."""
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
    }


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def numeric_value(v: Any) -> float | None:
    """The value a numeric profile counts (finite number), else None (missing).
    Public so that whoever compares traffic to a profile reads values the same way."""
    return float(v) if _finite(v) else None


def category_value(v: Any) -> str | None:
    """The value a categorical profile counts (``str(v)``), else None (missing)."""
    return None if v is None else str(v)
