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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from river import base, linear_model, optim, preprocessing, tree

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
    if ls.kind == "hoeffding_adaptive_tree":
        learner: Any = tree.HoeffdingAdaptiveTreeClassifier(seed=ls.seed)
    else:
        learner = linear_model.LogisticRegression(optimizer=optim.SGD(ls.learning_rate), l2=ls.l2)
    return parts | learner


def train(spec: UseCaseSpec, rows: Sequence[tuple[Mapping[str, Any], bool]], model: Any = None) -> Any:
    """Train on (raw features, label) rows; ``epochs`` shuffled passes with the spec's seed.

    ``model`` given: continue training it (stateful update); otherwise start fresh.
    Deterministic: same rows + spec + seed -> identical model.
    """
    model = model if model is not None else build_learner(spec)
    prepared = [(prepare(x, spec), bool(y)) for x, y in rows]
    rng = random.Random(spec.model.learner.seed)
    for _ in range(max(1, spec.model.learner.epochs)):
        order = list(range(len(prepared)))
        rng.shuffle(order)
        for i in order:
            model.learn_one(*prepared[i])
    return model


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
