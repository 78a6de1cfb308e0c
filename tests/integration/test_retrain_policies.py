"""The retrain controller's triggers, guards, policies, gate and lineage as a real process
against a real broker: every decision is read back from retrain.decisions, every version
from models; the CLI asks for a retrain and shows a version's lineage."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared import codec, modeling
from shared.contracts import (
    AlertWindow,
    DriftAlert,
    MetricsRecord,
    ModelEvent,
    RetrainDecision,
)
from shared.spec import default_spec_path, load_spec
from tests.helpers import ROOT, Stack, produce_json, read_topic
from tests.integration.test_retrain_service import SECRET, labeled, models, promoted


def write_spec(tmp: Path, **retrain: Any) -> Path:
    """fraud.toml with [retrain] keys replaced or added (TOML literals given as strings)."""
    head, rest = default_spec_path().read_text().split("\n[retrain]\n")
    for key, value in retrain.items():
        line = f"{key} = {value}"
        rest, n = re.subn(rf"(?m)^{key} = .*$", line, rest, count=1)
        if not n:
            rest = line + "\n" + rest
    rest = rest.replace("\nenabled = true", "\nenabled = false")  # these tests promote directly, no rollout
    path = tmp / "spec.toml"
    path.write_text(head + "\n[retrain]\n" + rest)
    load_spec(path)
    return path


def decisions(stack: Stack, until: Callable[[list[RetrainDecision]], bool], timeout: float = 30) -> list[RetrainDecision]:
    def parse(recs: list[Any]) -> list[RetrainDecision]:
        return [RetrainDecision.model_validate(codec.loads(r.value)) for r in recs]

    found = parse(read_topic(stack.broker.url, "retrain.decisions", until=lambda rs: until(parse(rs)),
                             timeout=timeout))
    assert until(found), [(d.action, d.code, d.trigger) for d in found]
    return found


def has(action: str, code: str | None = None, trigger: str = "") -> Callable[[list[RetrainDecision]], bool]:
    return lambda ds: any(d.action == action and (code is None or d.code == code) and trigger in d.trigger
                          for d in ds)


def drift(incident: str, kind: str, version: int, t: float, severity: str = "medium", status: str = "opened",
          cp: float | None = None) -> tuple[str, Any]:
    a = DriftAlert(alert_id=f"{incident}-{status}-{kind}", kind=kind, model_version=version, feature="amount",
                   test="ks", statistic=0.4, threshold=0.1, window=AlertWindow(start=t, end=t + 300, count=300),
                   detected_at=t + 301, severity=severity, incident_id=incident, status=status, change_point_at=cp)
    return str(version), a.model_dump(mode="json")


def cli(stack: Stack, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "shared.cli", *args], cwd=ROOT, env=stack.env(COLUMNS=250), capture_output=True, check=False,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_drift_policy_skips_change_point_window_budget_and_cli(stack: Stack) -> None:
    spec = write_spec(stack.tmp, min_labels=100, window=400, budget_per_hour=2)
    stack.spawn("services.retrain", RIVULET_SPEC=spec, RIVULET_MODEL_SECRET=SECRET)
    base = time.time() - 100_000
    produce_json(stack.broker.url, "predictions.labeled", labeled(150, base, lambda f: f["amount"] > 500, 1, "a"))
    models(stack, promoted(1))

    t = base + 10_000  # concept change at t: old concept rows before it, new after it
    produce_json(stack.broker.url, "predictions.labeled", labeled(60, t - 100, lambda f: f["amount"] > 500, 2, "b"))
    produce_json(stack.broker.url, "drift.alerts", [
        drift("q1", "data_quality", 1, t), drift("old", "data_drift", 0, t), drift("r1", "data_drift", 1, t,
                                                                                    status="resolved"),
        drift("c1", "concept_drift", 1, t - 500, cp=t)])
    ds = decisions(stack, has("deferred", "too_few_labels", "drift:c1"))
    skips = {d.trigger: d.code for d in ds if d.action == "skipped"}
    assert skips == {"drift:q1": "policy", "drift:old": "stale_model", "drift:r1": "resolved"}
    produce_json(stack.broker.url, "predictions.labeled", labeled(150, t, lambda f: f["channel"] == "atm", 3, "c"))
    produce_json(stack.broker.url, "drift.alerts", [drift("c1", "concept_drift", 1, t, status="updated", cp=t)])
    v2 = next(e for e in models(stack, promoted(2)) if e.event == "promoted" and e.version == 2)
    w = v2.trained_on
    assert v2.trigger == "drift:c1" and v2.policy == "stateless" and w is not None
    assert w.basis == "change_point" and w.since == t and w.start >= t and w.count == 112  # 150 - 25% holdout
    assert w.topic == "predictions.labeled" and w.offsets and all(lo <= hi for lo, hi in w.offsets.values())
    assert v2.spec_name == "card_fraud" and v2.feature_set_version == 1 and len(v2.spec_hash or "") == 64
    assert v2.seed == 42 and v2.code_version and v2.params and v2.params["learner"]["epochs"] == 10
    assert set(v2.validation or {}) >= {"holdout", "replay", "slices", "sanity", "replay_window"}
    assert v2.reasons == () and v2.strategy is None  # rollout disabled: a full promotion

    out = cli(stack, "retrain", "--reason", "budget test", "--since", str(t))
    request = re.search(r"request:(cli-[0-9a-f]+)", out).group(1)  # type: ignore[union-attr]
    ds = decisions(stack, has("deferred", "budget", request))
    actions = [(d.action, d.code) for d in ds if "drift:c1" in d.trigger]
    assert ("skipped", "duplicate_incident") in actions  # the incident's update: one retrain per incident
    assert [a for a, _ in actions if a in ("train", "started", "finished", "passed")] == [
        "train", "started", "finished", "passed"]
    assert sum(1 for d in ds if d.action == "progress" and d.trigger == "drift:c1") == 10
    train = next(d for d in ds if d.action == "train" and d.trigger == "drift:c1")
    assert train.policy == "stateless" and train.window and train.window.since == t and train.version == 2
    shown = json.loads(cli(stack, "models", "show", "2"))
    assert shown["trained_on"]["offsets"] and shown["policy"] == "stateless" and shown["champion"]
    assert shown["artifact_sha256"] == v2.artifact_sha256 and shown["code_version"] == v2.code_version
    table = cli(stack, "retrain", "decisions")
    assert "budget" in table and request in table


def test_new_labels_trigger_stateful_update_of_the_champion(stack: Stack) -> None:
    spec = write_spec(stack.tmp, min_labels=100, window=400, new_labels=120, budget_per_hour=0)
    stack.spawn("services.retrain", RIVULET_SPEC=spec, RIVULET_MODEL_SECRET=SECRET)
    base = time.time() - 100_000
    concept = lambda f: f["amount"] > 500  # noqa: E731
    produce_json(stack.broker.url, "predictions.labeled", labeled(150, base, concept, 1, "a"))
    v1 = next(e for e in models(stack, promoted(1)) if e.event == "promoted" and e.version == 1)
    produce_json(stack.broker.url, "predictions.labeled", labeled(160, base + 1000, concept, 2, "b"))
    evs = models(stack, lambda es: any(e.version == 2 and e.event in ("promoted", "rejected") for e in es))
    v2 = [e for e in evs if e.version == 2][-1]
    assert v2.trigger.startswith("new_labels:v1:") and v2.policy == "stateful" and v2.parent == 1
    assert v2.params and v2.params["parent_artifact_sha256"] == v1.artifact_sha256
    assert v2.trained_on and v2.trained_on.basis == "stateful" and v1.trained_on
    assert v2.trained_on.start > v1.trained_on.end  # only labels the champion never saw
    # the candidate continues v1's learner: its artifact is signed and loads
    model = modeling.load_verified(base64.b64decode(v2.artifact_b64 or ""), v2.signature, SECRET)
    assert modeling.score(model, {"amount": 990.0}, load_spec()) > modeling.score(model, {"amount": 5.0}, load_spec())
    ds = decisions(stack, has("train", trigger="new_labels"))
    assert next(d for d in ds if d.action == "train" and "new_labels" in d.trigger).policy == "stateful"


def test_performance_floor_schedule_gate_rejection_and_budget(stack: Stack) -> None:
    # replay_min_rows 20: whichever trigger trains first (the 3 s schedule may, with only the
    # first >= 100 labels read), its holdout (>= 25 rows) is enough to gate on the replay too
    spec = write_spec(stack.tmp, min_labels=100, window=400, margin=5.0, budget_per_hour=1, schedule='"3s"',
                      performance_floor=0.3, performance_min_labels=100, replay_min_rows=20)
    base = time.time() - 100_000
    # a champion v1 trained elsewhere, announced on models like any promotion
    rows = [(r[1]["features"], r[1]["actual"]) for r in labeled(100, base, lambda f: f["amount"] > 500, 1, "z")]
    artifact = modeling.serialize(modeling.train(load_spec(), rows))
    v1 = ModelEvent(event="promoted", version=1, parent=0, created_at=time.time(), trigger="external",
                    artifact_b64=base64.b64encode(artifact).decode(), artifact_sha256=modeling.sha256(artifact),
                    signature=modeling.sign(artifact, SECRET), trained_on={"start": base, "end": base + 99, "count": 100})
    produce_json(stack.broker.url, "models", [("1", v1.model_dump(mode="json"))])
    stack.spawn("services.retrain", RIVULET_SPEC=spec, RIVULET_MODEL_SECRET=SECRET)
    decisions(stack, has("skipped", "too_few_labels", "schedule:v1"))  # due, but no labels yet

    produce_json(stack.broker.url, "predictions.labeled", labeled(200, base + 1000, lambda f: f["amount"] > 500, 2, "a"))
    perf = MetricsRecord(kind="performance", model_version=1, window=500, metrics={"log_loss": 0.9}, computed_at=1.0)
    produce_json(stack.broker.url, "metrics", [("1", perf.model_dump(mode="json"))])
    evs = models(stack, lambda es: any(e.version == 2 for e in es))
    v2 = next(e for e in evs if e.version == 2)
    assert v2.event == "rejected" and ("performance:v1:0" in v2.trigger.split(",") or "schedule:v1" in v2.trigger)
    # the 3 s schedule may win the race with the metrics record; the floor is decided either way
    decisions(stack, lambda ds: any("performance:v1" in d.trigger and d.action != "pending" for d in ds))
    assert any(r.startswith("holdout:") for r in v2.reasons) and any(r.startswith("replay:") for r in v2.reasons)
    assert v2.metrics and v2.validation and v2.artifact_sha256 and v2.reason.startswith("rejected")
    ds = decisions(stack, has("skipped", "budget", "schedule:v1"))  # the next schedule: budget used up
    rejected = next(d for d in ds if d.action == "rejected")
    assert rejected.version == 2 and len(rejected.reasons) == len(v2.reasons) >= 2
    assert len([e for e in models(stack, lambda es: False, timeout=2) if e.version >= 2]) == 1


def test_rollout_enabled_announces_shadow_and_waits_for_the_rollout(stack: Stack) -> None:
    spec = write_spec(stack.tmp, min_labels=100, window=400)
    spec.write_text(spec.read_text().replace("[rollout]\nenabled = false", "[rollout]\nenabled = true"))
    assert load_spec(spec).rollout.enabled
    stack.spawn("services.retrain", RIVULET_SPEC=spec, RIVULET_MODEL_SECRET=SECRET)
    base = time.time() - 100_000
    produce_json(stack.broker.url, "predictions.labeled", labeled(150, base, lambda f: f["amount"] > 500, 1, "a"))
    v1 = next(e for e in models(stack, promoted(1)) if e.event == "promoted")
    assert v1.strategy == "shadow" and v1.artifact_b64 and v1.reference_profile and v1.threshold == 0.5
    assert v1.metrics["log_loss"] < v1.champion_metrics["log_loss"]
    # the baseline still serves, but v1 is in rollout: no second bootstrap, a request waits
    produce_json(stack.broker.url, "retrain.requests",
                 [("r1", {"request_id": "r1", "requested_at": time.time(), "reason": "test"})])
    decisions(stack, has("deferred", "rollout_in_progress", "request:r1"))
    assert [e.version for e in models(stack, lambda es: False, timeout=2)] == [1, 1]
    # the rollout controller promotes it fully: the request is retrained against v1
    produce_json(stack.broker.url, "models", [("1", v1.model_copy(update={"strategy": "full"}).model_dump(mode="json"))])
    evs = models(stack, lambda es: any(e.version == 2 for e in es))
    assert next(e for e in evs if e.version == 2).parent == 1
