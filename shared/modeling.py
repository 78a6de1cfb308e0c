"""Models: the baseline (version 0), the River learner, signed artifacts.

One input-preparation function (:func:`prepare`) is used for training, validation and
serving, so there is no training/serving skew in how raw values become model inputs.
Artifacts are pickles, so they are HMAC-signed and never unpickled unverified.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import pickle
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from river import base, forest, linear_model, optim, preprocessing, tree

from shared.spec import BaselineSpec, UseCaseSpec


class Scorer(Protocol):
    def predict_proba_one(self, x: dict[str, Any]) -> dict[Any, float]: ...


class ArtifactRejected(Exception):
    """The artifact's signature does not match its bytes: refuse to load it."""


def prepare(raw: Mapping[str, Any], spec: UseCaseSpec) -> dict[str, Any]:
    """Raw served values -> model inputs: numeric as finite floats (missing -> 0.0 and a
    ``<name>__missing`` flag), categorical as strings (missing -> '__missing__')."""
    x: dict[str, Any] = {}
    for name in spec.model.numeric:
        value = raw.get(name)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        x[name] = float(value) if ok else 0.0
        if not ok:
            x[f"{name}__missing"] = 1.0
    for name in spec.model.categorical:
        value = raw.get(name)
        x[name] = str(value) if value is not None else "__missing__"
    return x


@dataclass(frozen=True)
class BaselineModel:
    """Version 0: score = sigmoid(bias + sum(w * log1p(max(x, 0)))). Documented in the spec."""

    spec: BaselineSpec

    def predict_proba_one(self, x: dict[str, Any]) -> dict[bool, float]:
        z = self.spec.bias
        for name, weight in self.spec.weights.items():
            value = x.get(name, 0.0)
            z += weight * math.log1p(max(float(value), 0.0)) if isinstance(value, (int, float)) else 0.0
        p = 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))
        return {True: p, False: 1.0 - p}


class Columns(base.Transformer):
    """Keep these keys, in this order. River's ``compose.Select`` keeps a set, whose order
    depends on the process's hash seed: the same training data then gives different float
    sums and different artifact bytes in another process. A tuple keeps training reproducible."""

    def __init__(self, *keys: str) -> None:
        self.keys = tuple(keys)

    def transform_one(self, x: dict[str, Any]) -> dict[str, Any]:
        return {k: x[k] for k in self.keys if k in x}


class Log1p(base.Transformer):
    """log1p(max(x, 0)) of every value: amounts and counts are heavy-tailed, and a linear
    model on their logs separates "unusually small" as well as "unusually large"."""

    def transform_one(self, x: dict[str, Any]) -> dict[str, Any]:
        return {k: math.log1p(max(float(v), 0.0)) for k, v in x.items()}


class OneHot(base.Transformer):
    """Stateless one-hot of these categorical keys: ``{"channel=atm": 1.0}``. River's
    OneHotEncoder remembers values in sets, which pickle in hash-seed order (see Columns)."""

    def __init__(self, *keys: str) -> None:
        self.keys = tuple(keys)

    def transform_one(self, x: dict[str, Any]) -> dict[str, Any]:
        return {f"{k}={x[k]}": 1.0 for k in self.keys if k in x}


def build_learner(spec: UseCaseSpec) -> Any:
    """A fresh River pipeline: scaled numeric + one-hot categorical -> learner."""
    ls = spec.model.learner
    numeric: Any = Columns(*spec.model.numeric)
    if ls.log_numeric:
        numeric |= Log1p()
    numeric |= preprocessing.StandardScaler()
    parts: Any = numeric
    if spec.model.categorical:
        parts = numeric + OneHot(*spec.model.categorical)
    return parts | _learner(spec)


def _learner(spec: UseCaseSpec) -> Any:
    """The spec's River estimator; tree options are passed only when the spec sets them, so
    a spec without them builds exactly what it always built (same artifact bytes)."""
    ls = spec.model.learner
    opts: dict[str, Any] = {}
    if ls.grace_period is not None:
        opts["grace_period"] = ls.grace_period
    if ls.split_delta is not None:
        opts["delta"] = ls.split_delta
    if ls.splitter == "histogram":
        opts["splitter"] = tree.splitter.HistogramSplitter()
    if ls.leaf_prediction is not None:
        opts["leaf_prediction"] = ls.leaf_prediction
    if ls.kind == "hoeffding_adaptive_tree":
        return tree.HoeffdingAdaptiveTreeClassifier(seed=ls.seed, **opts)
    if ls.kind == "hoeffding_tree":
        return tree.HoeffdingTreeClassifier(**opts)
    if ls.kind == "adaptive_random_forest":
        return forest.ARFClassifier(n_models=ls.n_models, seed=ls.seed, **opts)
    return linear_model.LogisticRegression(optimizer=optim.SGD(ls.learning_rate), l2=ls.l2)


def train(spec: UseCaseSpec, rows: Sequence[tuple[Mapping[str, Any], bool]], model: Any = None,
          weights: Sequence[float] | None = None) -> Any:
    """Train on (raw features, label) rows; ``epochs`` shuffled passes with the spec's seed.

    ``model`` given: continue training it (stateful update); otherwise start fresh.
    ``weights``: one sample weight per row (see :func:`recency_weights`).
    Deterministic: same rows + weights + spec + seed -> identical model.
    """
    trained = model
    for _, _, trained in train_epochs(spec, rows, model, weights):
        pass
    return trained


def recency_weights(rows: int, half_life: int) -> list[float]:
    """2^(-age / half_life) per row, oldest first (the newest row weighs 1)."""
    return [0.5 ** ((rows - 1 - i) / half_life) for i in range(rows)]


def epochs_for(spec: UseCaseSpec, rows: int) -> int:
    """Passes over ``rows`` training rows: ``epochs``, raised to reach ``min_updates``
    learning steps when the spec sets it (a short post-change window still converges)."""
    epochs = max(1, spec.model.learner.epochs)
    need = spec.model.learner.min_updates
    if need is not None and rows > 0:
        epochs = max(epochs, math.ceil(need / rows))
    return epochs


def score(model: Scorer, raw: Mapping[str, Any], spec: UseCaseSpec) -> float:
    """P(label is true) for raw served values."""
    proba = model.predict_proba_one(prepare(raw, spec))
    p = float(proba.get(True, 0.0))
    return p if math.isfinite(p) else 0.0


def evaluate(model: Scorer, rows: Iterable[tuple[Mapping[str, Any], bool]], spec: UseCaseSpec,
             threshold: float) -> dict[str, float]:
    """Accuracy, log loss, precision, recall, F1 and count on labeled rows."""
    tp = fp = tn = fn = 0
    logloss = 0.0
    for x, y in rows:
        p = min(max(score(model, x, spec), 1e-15), 1 - 1e-15)
        logloss -= math.log(p if y else 1 - p)
        pred = p >= threshold
        tp += pred and y
        fp += pred and not y
        tn += (not pred) and (not y)
        fn += (not pred) and y
    n = tp + fp + tn + fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / n if n else 0.0,
        "log_loss": logloss / n if n else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "count": float(n),
    }


def serialize(model: Any) -> bytes:
    return pickle.dumps(model, protocol=5)


def sign(artifact: bytes, secret: str) -> str:
    return hmac.new(secret.encode(), artifact, hashlib.sha256).hexdigest()


def sha256(artifact: bytes) -> str:
    return hashlib.sha256(artifact).hexdigest()


def load_verified(artifact: bytes, signature: str | None, secret: str) -> Any:
    """Unpickle only if the HMAC matches; otherwise raise :class:`ArtifactRejected`."""
    if not signature or not hmac.compare_digest(sign(artifact, secret), signature):
        raise ArtifactRejected("artifact signature does not match: refusing to load")
    return pickle.loads(artifact)  # noqa: S301 - verified above


# ----------------------------------------------------------------------------- batch scoring
# ----------------------------------------------------------------------------- retraining
def train_epochs(spec: UseCaseSpec, rows: Sequence[tuple[Mapping[str, Any], bool]],
                 model: Any = None, weights: Sequence[float] | None = None) -> Iterator[tuple[int, int, Any]]:
    """:func:`train`, one epoch at a time: yields ``(epoch, epochs, model)`` after each pass
    so a worker can report progress. The same passes in the same order, so the final model
    is byte-identical to ``train(spec, rows, model, weights)``."""
    model = model if model is not None else build_learner(spec)
    prepared = [(prepare(x, spec), bool(y)) for x, y in rows]
    if weights is not None and len(weights) != len(prepared):
        raise ValueError(f"{len(weights)} weights for {len(prepared)} rows")
    rng = random.Random(spec.model.learner.seed)
    epochs = epochs_for(spec, len(prepared))
    for epoch in range(1, epochs + 1):
        order = list(range(len(prepared)))
        rng.shuffle(order)
        for i in order:
            if weights is None:
                model.learn_one(*prepared[i])
            else:
                model.learn_one(*prepared[i], w=weights[i])
        yield epoch, epochs, model


def raw_score(model: Scorer, raw: Mapping[str, Any], spec: UseCaseSpec) -> float:
    """P(label is true) WITHOUT :func:`score`'s non-finite -> 0.0 guard: what a validation
    gate checks for NaN/inf before such a model could ever serve."""
    return float(model.predict_proba_one(prepare(raw, spec)).get(True, 0.0))
