"""The /predict/batch fast path: vectorised scoring equals River's, the one-enqueue log, and
the lineage /models shows (every ModelEvent field but the artifact and the profile)."""

from __future__ import annotations

import base64
import math
import random
import time
from typing import Any

import pytest

from services.serving.background import PredictionLog
from services.serving.registry import LINEAGE_EXCLUDED, VECTORISE_FROM, ModelRegistry
from shared import batch_scoring, modeling
from shared.contracts import ModelEvent, TrainingWindow
from shared.spec import UseCaseSpec, load_spec

SPEC = load_spec()
CATEGORIES = {"merchant_category": ["grocery", "travel", "electronics"], "country": ["US", "FR", "BR"],
              "channel": ["online", "pos", "atm"]}


def _spec(**learner: Any) -> UseCaseSpec:
    model = SPEC.model.model_copy(update={"learner": SPEC.model.learner.model_copy(update=learner)})
    return SPEC.model_copy(update={"model": model})


def _raw(rng: random.Random, spec: UseCaseSpec) -> dict[str, Any]:
    """Served values as they come: floats, ints, missing, negative, huge, and junk."""
    junk: list[Any] = [None, 0, -3.5, 7, 1e300, math.nan, math.inf, True, "12", 10**30]
    row: dict[str, Any] = {}
    for name in spec.model.numeric:
        row[name] = rng.choice(junk) if rng.random() < 0.3 else rng.lognormvariate(2.0, 2.0)
    for name in spec.model.categorical:
        row[name] = rng.choice([*CATEGORIES.get(name, ["a"]), "never_seen", None, 3])
    return row


def _rows(rng: random.Random, spec: UseCaseSpec, n: int) -> list[tuple[dict[str, Any], bool]]:
    rows = []
    for _ in range(n):
        x = {n: rng.lognormvariate(2.0, 1.5) for n in spec.model.numeric if rng.random() < 0.8}
        x |= {k: rng.choice(v) for k, v in CATEGORIES.items()}
        rows.append((x, x.get("amount", 0.0) > 30 and rng.random() < 0.8))
    return rows


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("log_numeric", [True, False])
def test_vectorised_scores_equal_river_to_1e9(seed: int, log_numeric: bool) -> None:
    spec = _spec(log_numeric=log_numeric, learning_rate=0.05 * seed)
    rng = random.Random(seed)
    model = modeling.train(spec, _rows(rng, spec, 400))
    scorer = batch_scoring.batch_scorer(model, spec)
    assert getattr(scorer, "__self__", None) is not None, "the linear pipeline must be vectorised"
    raws = [_raw(rng, spec) for _ in range(300)]
    fast = scorer(raws)
    slow = [modeling.score(model, raw, spec) for raw in raws]
    assert len(fast) == len(slow) and all(isinstance(p, float) for p in fast)
    assert max(abs(a - b) for a, b in zip(fast, slow)) <= 1e-9
    assert batch_scoring.score_many(model, raws, spec) == fast and scorer([]) == []
    assert len({round(p, 6) for p in fast}) > 10  # the model is not constant: the check means something


def test_vectorised_without_categorical_features() -> None:
    model_spec = SPEC.model.model_copy(update={"categorical": ()})
    spec = SPEC.model_copy(update={"model": model_spec})
    rng = random.Random(5)
    model = modeling.train(spec, _rows(rng, spec, 300))
    raws = [_raw(rng, spec) for _ in range(200)]
    fast = batch_scoring.batch_scorer(model, spec)(raws)
    assert max(abs(a - modeling.score(model, r, spec)) for a, r in zip(fast, raws)) <= 1e-9


@pytest.mark.parametrize("kind", ["hoeffding_tree", "hoeffding_adaptive_tree"])
def test_other_learners_fall_back_to_river_row_by_row(kind: str) -> None:
    spec = _spec(kind=kind)
    rng = random.Random(9)
    model = modeling.train(spec, _rows(rng, spec, 300))
    raws = [_raw(rng, spec) for _ in range(50)]
    assert batch_scoring.score_many(model, raws, spec) == [modeling.score(model, r, spec) for r in raws]
    baseline = modeling.BaselineModel(SPEC.model.baseline)
    assert batch_scoring.score_many(baseline, raws, SPEC) == [modeling.score(baseline, r, SPEC) for r in raws]


def test_registry_compiles_the_batch_scorer_and_uses_it_only_for_many_rows() -> None:
    rng = random.Random(4)
    model = modeling.train(SPEC, _rows(rng, SPEC, 300))
    registry = ModelRegistry(SPEC, "s")
    registry.apply(_promoted(1, model))
    champion = registry.current
    few = [_raw(rng, SPEC) for _ in range(VECTORISE_FROM - 1)]
    many = [_raw(rng, SPEC) for _ in range(VECTORISE_FROM * 4)]
    assert champion.score_rows(few, SPEC) == [modeling.score(model, r, SPEC) for r in few]  # exact: River
    assert champion.score_rows(many, SPEC) == pytest.approx([modeling.score(model, r, SPEC) for r in many],
                                                            abs=1e-9, rel=0)


def test_offer_many_enqueues_what_fits_and_counts_the_rest() -> None:
    drops: list[tuple[str, int]] = []
    plog = PredictionLog(size=5, batch=10, on_drop=lambda reason, n: drops.append((reason, n)))
    assert plog.offer_many([(b"a", b"1"), (b"b", b"2"), (b"c", b"3")]) == 3
    assert plog.offer_many([(str(i).encode(), b"x") for i in range(4)]) == 2
    assert plog.offer_many([(b"z", b"z")]) == 0
    assert [k for k, _ in plog.queue] == [b"a", b"b", b"c", b"0", b"1"] and plog.depth() == 5
    assert plog.dropped["queue_full"] == 3 and drops == [("queue_full", 2), ("queue_full", 1)]


def _promoted(version: int, model: Any, **extra: Any) -> ModelEvent:
    artifact = modeling.serialize(model)
    return ModelEvent(event="promoted", version=version, created_at=time.time(), threshold=0.4,
                      artifact_b64=base64.b64encode(artifact).decode(), artifact_sha256=modeling.sha256(artifact),
                      signature=modeling.sign(artifact, "s"), **extra)


def test_lineage_is_every_announced_field_but_the_artifact_and_profile() -> None:
    model = modeling.train(SPEC, _rows(random.Random(2), SPEC, 100))
    event = _promoted(3, model, parent=2, trigger="drift", reason="psi 0.4 on amount", who="retrain",
                      trained_on=TrainingWindow(start=1.0, end=2.0, count=100), metrics={"accuracy": 0.9},
                      reference_profile={"features": {}}, strategy="canary", share=0.2)
    registry = ModelRegistry(SPEC, "s")
    registry.apply(ModelEvent(event="registered", version=3, created_at=1.0, parent=2, trigger="drift"))
    assert registry.lineage[3]["event"] == "registered"
    registry.apply(event)
    lineage = registry.lineage[3]
    dumped = event.model_dump(mode="json")
    assert set(lineage) == set(dumped) - LINEAGE_EXCLUDED  # generic: a new ModelEvent field shows up too
    assert {k: lineage[k] for k in lineage} == {k: v for k, v in dumped.items() if k not in LINEAGE_EXCLUDED}
    assert registry.routing.challenger is not None and registry.routing.challenger.describe()["lineage"] == lineage
    assert registry.lineage[0]["event"] == "baseline"
    registry.apply(ModelEvent(event="rolled_back", version=0, created_at=5.0, reason="bad canary"))
    assert registry.lineage[3] == lineage  # a rollback is history, not lineage
