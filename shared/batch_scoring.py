"""Many rows scored at once: the serving batch path.

:func:`batch_scorer` compiles the linear pipeline of :func:`shared.modeling.build_learner`
into numpy arrays once per loaded model; any other model scores row by row through
:func:`shared.modeling.score`. The compiled plan is checked against River on probe rows
at compile time, so it never serves numbers River would not.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from river import linear_model, optim, preprocessing

from shared.modeling import Columns, Log1p, OneHot, Scorer, score
from shared.spec import UseCaseSpec

BatchScorer = Callable[[Sequence[Mapping[str, Any]]], list[float]]


def score_many(model: Scorer, raws: Sequence[Mapping[str, Any]], spec: UseCaseSpec) -> list[float]:
    """``[score(model, raw, spec) for raw in raws]``, vectorised (numpy) for the logistic
    pipeline of :func:`build_learner`; within 1e-9 of it (float sums in another order)."""
    return batch_scorer(model, spec)(raws)


def batch_scorer(model: Scorer, spec: UseCaseSpec) -> BatchScorer:
    """A scorer of many rows for ``model``, compiled once (serving compiles at load time).

    The linear pipeline (Columns [| Log1p] | StandardScaler [+ OneHot] | LogisticRegression)
    becomes arrays: means, scales, weights. Anything else (trees, the baseline, a pipeline
    of another shape) scores row by row with River. The compiled arrays are a snapshot:
    recompile after the model learns. Self-checked against River on probe rows, so a River
    change in semantics falls back instead of serving different numbers.
    """
    def per_row(raws: Sequence[Mapping[str, Any]]) -> list[float]:
        return [score(model, raw, spec) for raw in raws]

    try:
        linear = _LinearPlan.of(model, spec)
        agrees = linear is not None and linear.agrees_with(model, spec)
    except Exception:  # noqa: BLE001 - an unexpected shape is simply not vectorised
        linear, agrees = None, False
    return linear.score if linear is not None and agrees else per_row


def _chain(model: Any) -> list[Any] | None:
    """The steps of a River pipeline, or None if ``model`` is not one."""
    steps = getattr(model, "steps", None)
    return list(steps.values()) if isinstance(steps, Mapping) else None


@dataclass(frozen=True)
class _LinearPlan:
    numeric: tuple[str, ...]
    log: bool
    means: Any  # np.ndarray
    inv_scale: Any  # 1/sqrt(var), 0 where var == 0 (StandardScaler's 0.0)
    weights: Any
    categorical: tuple[tuple[str, dict[str, float]], ...]  # key -> {value: weight}
    intercept: float
    with_std: bool

    @classmethod
    def of(cls, model: Any, spec: UseCaseSpec) -> _LinearPlan | None:
        from river import compose

        steps = _chain(model)
        if steps is None or len(steps) != 2 or type(steps[1]) is not linear_model.LogisticRegression:
            return None
        first, learner = steps
        onehot: OneHot | None = None
        if isinstance(first, compose.TransformerUnion):
            parts = list(first.transformers.values())
            if len(parts) != 2 or type(parts[1]) is not OneHot:
                return None
            first, onehot = parts
        chain = _chain(first)
        if chain is None or type(chain[0]) is not Columns or type(chain[-1]) is not preprocessing.StandardScaler:
            return None
        log = len(chain) == 3 and type(chain[1]) is Log1p
        scaler = chain[-1]
        if len(chain) != 2 + log or scaler.window_size is not None or not set(chain[0].keys) <= set(spec.model.numeric):
            return None
        if onehot is not None and not set(onehot.keys) <= set(spec.model.categorical):
            return None
        if type(learner.loss) is not optim.losses.Log or compose.Pipeline._LEARN_UNSUPERVISED_DURING_PREDICT:
            return None
        return cls._build(chain[0].keys, log, scaler, learner, onehot.keys if onehot else ())

    @classmethod
    def _build(cls, numeric: tuple[str, ...], log: bool, scaler: Any, learner: Any,
               categorical: tuple[str, ...]) -> _LinearPlan:
        import numpy as np

        weights = learner.weights  # a plain dict copy
        variances = [float(scaler.vars.get(k, 0.0)) for k in numeric] if scaler.with_std else [1.0] * len(numeric)
        tables = tuple((key, {name.split("=", 1)[1]: float(w) for name, w in weights.items()
                              if isinstance(name, str) and name.startswith(f"{key}=")}) for key in categorical)
        return cls(numeric=tuple(numeric), log=log,
                   means=np.array([float(scaler.means.get(k, 0.0)) for k in numeric]),
                   inv_scale=np.array([1.0 / v**0.5 if v else 0.0 for v in variances]),
                   weights=np.array([float(weights.get(k, 0.0)) for k in numeric]),
                   categorical=tables, intercept=float(learner.intercept), with_std=scaler.with_std)

    def score(self, raws: Sequence[Mapping[str, Any]]) -> list[float]:
        import numpy as np

        if not raws:
            return []
        names = self.numeric
        x = np.array([[_number(raw.get(name)) for name in names] for raw in raws], dtype=np.float64)
        x[~np.isfinite(x)] = 0.0  # prepare(): missing or non-finite -> 0.0
        if self.log:
            x = np.log1p(np.maximum(x, 0.0))
        x = (x - self.means) * self.inv_scale if self.with_std else x - self.means
        z = x @ self.weights + self.intercept
        for key, table in self.categorical:
            get = table.get
            z += np.array([get(_category(raw.get(key)), 0.0) for raw in raws])
        with np.errstate(over="ignore"):
            p = 1.0 / (1.0 + np.exp(-z))
        p = np.where(z < -30, 0.0, np.where(z > 30, 1.0, p))  # River's sigmoid clamps
        return np.where(np.isfinite(p), p, 0.0).tolist()  # type: ignore[no-any-return]

    def agrees_with(self, model: Scorer, spec: UseCaseSpec) -> bool:
        """Probe rows (random values, missing ones, unknown categories) scored both ways."""
        rng = random.Random(0)
        probes: list[dict[str, Any]] = [{}]
        for _ in range(8):
            row: dict[str, Any] = {n: rng.choice([None, 0.0, -1.0, rng.expovariate(0.01)]) for n in spec.model.numeric}
            row |= {k: rng.choice([None, "__x__", *t]) for k, t in self.categorical}
            probes.append(row)
        fast = self.score(probes)
        return all(abs(a - score(model, raw, spec)) <= 1e-9 for a, raw in zip(fast, probes))


def _number(value: Any) -> float:
    """prepare()'s numeric rule, NaN meaning "missing" (then 0.0)."""
    if type(value) is float:
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            return math.nan
    return math.nan


def _category(value: Any) -> str:
    return value if type(value) is str else ("__missing__" if value is None else str(value))
