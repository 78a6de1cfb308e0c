"""The retrain controller as a real process against a real broker: bootstrap, drift-driven
retrain on the new concept only, a request that waits for labels, and a restart that
neither forgets the waiting request nor answers anything twice."""

from __future__ import annotations

import re

import base64
import json
import random
import time
from pathlib import Path
from typing import Any, Callable

from services.retrain import registry
from shared import codec, modeling
from shared.contracts import AlertWindow, DriftAlert, LabeledPrediction, ModelEvent, RetrainRequest
from shared.spec import default_spec_path, load_spec
from tests.helpers import Stack, produce_json, read_topic, wait_for

SECRET = "integration-secret"


def write_spec(tmp: Path) -> Path:
    text = default_spec_path().read_text()
    text = re.sub(r"(?m)^min_labels = \d+", "min_labels = 200", text)
    text = re.sub(r"(?m)^window = 4000", "window = 800", text)
    text = text.replace("\nenabled = true", "\nenabled = false")  # these tests promote directly, no rollout
    path = tmp / "retrain_spec.toml"
    path.write_text(text)
    assert load_spec(path).retrain.min_labels == 200
    return path


def labeled(n: int, start: float, concept: Callable[[dict[str, Any]], bool], seed: int,
            prefix: str) -> list[tuple[str, Any]]:
    rng = random.Random(seed)
    spec = load_spec()
    out = []
    for i in range(n):
        feats: dict[str, Any] = {name: round(rng.uniform(0, 5), 3) for name in spec.model.numeric}
        feats.update(amount=round(rng.uniform(0, 1000), 2), merchant_category=rng.choice(["fuel", "travel"]),
                     country=rng.choice(["US", "FR"]), channel=rng.choice(["pos", "online", "atm"]))
        served = start + i
        rec = LabeledPrediction(prediction_id=f"{prefix}{i}", entity_id=f"c{i % 17}", model_version=0,
                                features=feats, score=0.1, label=False, threshold=0.5, served_at=served,
                                actual=concept(feats), label_event_time=served + 1, labeled_at=served + 2)
        out.append((rec.prediction_id, rec.model_dump(mode="json")))
    return out


def models(stack: Stack, until: Callable[[list[ModelEvent]], bool], timeout: float = 30) -> list[ModelEvent]:
    def parse(recs: list[Any]) -> list[ModelEvent]:
        return [ModelEvent.model_validate(codec.loads(r.value)) for r in recs]

    recs = read_topic(stack.broker.url, "models", until=lambda rs: until(parse(rs)), timeout=timeout)
    return parse(recs)


def promoted(version: int) -> Callable[[list[ModelEvent]], bool]:
    return lambda evs: any(e.event == "promoted" and e.version == version for e in evs)


def service_log(stack: Stack) -> str:
    return "\n".join(p.read_text(errors="replace") for p in stack.tmp.glob("services_retrain-*.log"))


def test_bootstrap_drift_retrain_request_and_restart(stack: Stack) -> None:
    env = {"RIVULET_SPEC": str(write_spec(stack.tmp)), "RIVULET_MODEL_SECRET": SECRET}
    stack.spawn("services.retrain", **env)
    base = time.time() - 100_000

    # 1. bootstrap: 300 labels of "fraud iff amount > 500" -> v1 beats the baseline
    produce_json(stack.broker.url, "predictions.labeled",
                 labeled(300, base, lambda f: f["amount"] > 500, seed=1, prefix="a"))
    v1 = next(e for e in models(stack, promoted(1)) if e.event == "promoted")
    artifact = base64.b64decode(v1.artifact_b64 or "")
    assert modeling.sha256(artifact) == v1.artifact_sha256
    model1 = modeling.load_verified(artifact, v1.signature, SECRET)
    assert v1.parent == 0 and v1.trigger == "bootstrap" and v1.reference_profile is not None
    assert v1.metrics["log_loss"] < v1.champion_metrics["log_loss"]
    assert v1.metrics["accuracy"] > 0.8 and v1.trained_on is not None and v1.trained_on.count == 225

    # 2. drift alert at T, then a different concept (fraud iff channel == atm) after T -> v2
    t = base + 10_000
    alert = DriftAlert(alert_id="d1", kind="data_drift", model_version=1, feature="amount", test="ks",
                       statistic=0.4, threshold=0.1, window=AlertWindow(start=t, end=t + 300, count=300),
                       detected_at=t + 301)
    produce_json(stack.broker.url, "drift.alerts", [("1", alert.model_dump(mode="json"))])
    wait_for(lambda: "drift:d1 waiting" in service_log(stack), what="drift trigger waiting for labels")
    produce_json(stack.broker.url, "predictions.labeled",
                 labeled(300, t, lambda f: f["channel"] == "atm", seed=2, prefix="b"))
    events = models(stack, promoted(2))
    v2 = next(e for e in events if e.event == "promoted" and e.version == 2)
    assert v2.parent == 1 and v2.trigger == "drift:d1"
    assert v2.trained_on is not None and v2.trained_on.start >= t
    assert v2.metrics["log_loss"] < v2.champion_metrics["log_loss"]
    model2 = modeling.load_verified(base64.b64decode(v2.artifact_b64 or ""), v2.signature, SECRET)
    atm = {"amount": 10.0, "channel": "atm"}
    assert modeling.score(model2, atm, load_spec()) > modeling.score(model1, atm, load_spec())

    # 3. a request for labels that do not exist yet waits (no model event)
    since = t + 50_000
    req = RetrainRequest(request_id="r1", requested_at=time.time(), since=since)
    produce_json(stack.broker.url, "retrain.requests", [("r1", req.model_dump(mode="json"))])
    wait_for(lambda: "request:r1 waiting: 0/200" in service_log(stack), what="request waiting")
    status = json.loads((stack.tmp / "data" / "registry" / "status.json").read_text())
    assert "request:r1 waiting" in status["status"]
    assert len(models(stack, lambda evs: False, timeout=3)) == len(events) == 4

    # 4. restart: state is rebuilt from the topics; nothing is answered twice
    stack.stop_services()
    stack.spawn("services.retrain", **env)
    wait_for(lambda: "caught up: champion v2, max version 2" in service_log(stack), what="restart caught up")
    wait_for(lambda: service_log(stack).count("status: request:r1 waiting: 0/200") >= 2, what="request waiting again")
    assert len(models(stack, lambda evs: False, timeout=2)) == 4

    # 5. enough labels after `since` -> the request is answered once, as version 3
    produce_json(stack.broker.url, "predictions.labeled",
                 labeled(220, since, lambda f: f["channel"] == "atm", seed=3, prefix="c"))
    final = models(stack, lambda evs: any(e.version == 3 and e.event in ("promoted", "rejected") for e in evs))
    v3 = [e for e in final if e.version == 3]
    assert {e.trigger for e in v3} == {"request:r1"} and v3[0].parent == 2
    assert v3[0].trained_on is not None and v3[0].trained_on.start >= since

    # the disk registry mirrors the topic
    data = stack.tmp / "data"
    wait_for(lambda: 3 in {v["version"] for v in registry.list_versions(data)}, what="v3 on disk")
    listed = {v["version"]: v for v in registry.list_versions(data)}
    assert listed[1]["status"] == "promoted" and listed[2]["parent"] == 1 and listed[2]["champion"]
    assert listed[3]["status"] == v3[-1].event and listed[3]["trigger"] == "request:r1"
    assert registry.artifact_path(data, v2.artifact_sha256 or "").exists()
