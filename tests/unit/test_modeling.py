"""Models: deterministic artifacts, verified loading, baseline behaviour."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest

from shared.modeling import (ArtifactRejected, BaselineModel, evaluate, load_verified, prepare,
                             score, serialize, sha256, sign, train)
from shared.spec import load_spec

SPEC = load_spec()
SCRIPT = """
import random
from shared.spec import load_spec
from shared.modeling import train, serialize, sha256
s = load_spec(); r = random.Random(1); rows = []
for i in range(400):
    amt = r.expovariate(1 / 50)
    rows.append(({"amount": amt, "txn_count_5m": r.randint(0, 3), "merchant_category": r.choice("abc"),
                  "country": "US", "channel": r.choice(["pos", "atm"])}, amt > 150))
print(sha256(serialize(train(s, rows))))
"""


def _rows(n: int, seed: int = 1) -> list[tuple[dict, bool]]:
    r = random.Random(seed)
    out = []
    for _ in range(n):
        amt = r.expovariate(1 / 50)
        out.append(({"amount": amt, "txn_count_5m": r.randint(0, 3), "merchant_category": "grocery",
                     "country": "US", "channel": r.choice(["pos", "atm"])}, amt > 150 and r.random() < 0.8))
    return out


def test_same_rows_give_identical_bytes_in_processes_with_different_hash_seeds() -> None:
    digests = set()
    for seed in ("1", "2", "3"):
        out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": seed})
        digests.add(out.stdout.strip())
    assert len(digests) == 1


def test_trained_model_beats_baseline_on_learnable_data() -> None:
    rows = _rows(3000)
    model = train(SPEC, rows[:2000])
    trained = evaluate(model, rows[2000:], SPEC, 0.5)
    baseline = evaluate(BaselineModel(SPEC.model.baseline), rows[2000:], SPEC, 0.5)
    assert trained["log_loss"] < baseline["log_loss"]
    assert trained["accuracy"] >= baseline["accuracy"]


def test_tampered_or_unsigned_artifact_is_refused() -> None:
    artifact = serialize(train(SPEC, _rows(200)))
    signature = sign(artifact, "secret")
    assert score(load_verified(artifact, signature, "secret"), _rows(1)[0][0], SPEC) >= 0.0
    with pytest.raises(ArtifactRejected):
        load_verified(artifact + b"x", signature, "secret")
    with pytest.raises(ArtifactRejected):
        load_verified(artifact, signature, "other-secret")
    with pytest.raises(ArtifactRejected):
        load_verified(artifact, None, "secret")
    assert len(sha256(artifact)) == 64


def test_prepare_flags_missing_and_non_finite_numbers() -> None:
    x = prepare({"amount": float("nan"), "channel": "atm"}, SPEC)
    assert x["amount"] == 0.0 and x["amount__missing"] == 1.0
    assert x["channel"] == "atm" and x["country"] == "__missing__"


def test_baseline_is_the_documented_rule() -> None:
    import math

    model = BaselineModel(SPEC.model.baseline)
    x = prepare({"amount": 100.0, "txn_count_5m": 2.0}, SPEC)
    z = -6.0 + 0.9 * math.log1p(100.0) + 0.6 * math.log1p(2.0)
    assert model.predict_proba_one(x)[True] == pytest.approx(1 / (1 + math.exp(-z)))
