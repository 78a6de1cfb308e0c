"""The training job: determinism, gate inputs, verifiable artifacts; and the disk registry."""

from __future__ import annotations

import asyncio
import base64
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from services.retrain import handlers as h
from services.retrain import registry, trainer
from services.retrain.rows import Row, split_window
from shared import codec, modeling
from shared.contracts import ModelEvent
from shared.spec import default_spec_path, load_spec

SPEC = load_spec()
SECRET = "unit-secret"
ROOT = Path(__file__).resolve().parents[2]


def rows(n: int, seed: int = 7) -> list[Row]:
    """Fraud iff amount > 500: learnable, and something the baseline only half knows."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        amount = rng.uniform(0, 1000)
        feats: dict = {name: rng.uniform(0, 5) for name in SPEC.model.numeric}
        feats.update(amount=amount, merchant_category=rng.choice(["fuel", "travel"]),
                     country=rng.choice(["US", "FR"]), channel=rng.choice(["pos", "online", "atm"]))
        out.append(Row(f"p{i}", float(i), feats, amount > 500))
    return out


def job(n: int = 240) -> dict:
    train, hold = split_window(rows(n), 10_000, 0.25)
    return trainer.make_job(train, hold, None, SECRET, 0.5)


def test_same_rows_same_artifact_in_process() -> None:
    a, b = trainer.run_job(job(), SPEC), trainer.run_job(job(), SPEC)
    assert a["sha256"] == b["sha256"] and a["artifact_b64"] == b["artifact_b64"]
    artifact = base64.b64decode(a["artifact_b64"])
    assert modeling.sha256(artifact) == a["sha256"]
    model = modeling.load_verified(artifact, a["signature"], SECRET)
    assert modeling.score(model, {"amount": 990.0}, SPEC) > modeling.score(model, {"amount": 5.0}, SPEC)


def test_candidate_beats_baseline_and_profile_is_built() -> None:
    result = trainer.run_job(job(), SPEC)
    assert result["champion_source"] == "baseline"
    assert result["metrics"]["log_loss"] < result["champion_metrics"]["log_loss"]
    assert result["metrics"]["count"] == 60 and result["metrics"]["train_count"] == 180
    assert result["profile"]["count"] == 180 and len(result["profile"]["score"]) == 180
    assert h.gate(result["metrics"], result["champion_metrics"], "log_loss", 0.0)[0]


def test_champion_artifact_is_verified_before_use() -> None:
    first = trainer.run_job(job(), SPEC)
    champ = ModelEvent(event="promoted", version=1, created_at=1.0, artifact_b64=first["artifact_b64"],
                       signature=first["signature"])
    train, hold = split_window(rows(240), 10_000, 0.25)
    ok = trainer.run_job(trainer.make_job(train, hold, champ, SECRET, 0.5), SPEC)
    assert ok["champion_source"] == "v1"
    # same model, same holdout (up to float summation order: River's Select keeps a set)
    assert ok["champion_metrics"]["log_loss"] == pytest.approx(first["metrics"]["log_loss"], rel=1e-9)
    forged = champ.model_copy(update={"signature": "0" * 64})
    bad = trainer.run_job(trainer.make_job(train, hold, forged, SECRET, 0.5), SPEC)
    assert bad["champion_source"].startswith("baseline")


def train_in_child(payload: bytes, hash_seed: str) -> list[str]:
    """Run one training job through ``trainer.run_in_child`` from a fresh interpreter with the
    given PYTHONHASHSEED; its output lines: ``P <epoch> <epochs>`` per epoch, then the sha256."""
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    code = ("import asyncio,sys; from shared import codec; from services.retrain import trainer;"
            f"r=asyncio.run(trainer.run_in_child(codec.loads(sys.stdin.buffer.read()), {str(default_spec_path())!r},"
            " 0, 60, on_progress=lambda e, n: print('P', e, n)));print(r['sha256'])")
    out = subprocess.run([sys.executable, "-c", code], input=payload, env=env, cwd=ROOT,
                         capture_output=True, check=True, timeout=120)
    return out.stdout.decode().strip().split("\n")


def test_same_rows_same_artifact_across_processes() -> None:
    """Children get a fixed PYTHONHASHSEED, whatever the parent's; without it River's
    set-ordered Select makes the bytes differ from run to run."""
    payload = codec.dumps(job(120))
    shas = {train_in_child(payload, parent_seed)[-1].strip() for parent_seed in ("1", "2")}
    assert len(shas) == 1 and len(shas.pop()) == 64


def test_child_failure_is_reported() -> None:
    bad = {"train": "not rows"}
    with pytest.raises(trainer.TrainingFailed, match="exited"):  # a crashing child is reported
        asyncio.run(trainer.run_in_child(bad, default_spec_path(), 0, 60))


# -- registry -----------------------------------------------------------------------------
def test_registry_records_idempotently(tmp_path: Path) -> None:
    result = trainer.run_job(job(), SPEC)
    window = h.TrainingWindow(start=0.0, end=179.0, count=180)
    events = h.model_events(result, h.Trigger(["bootstrap"], None, 0), 1, 0, True, "passed", window, 0.5, 5.0)
    for ev in events + events:  # replaying models twice changes nothing
        registry.record(tmp_path, ev)
    registry.record(tmp_path, ModelEvent(event="rejected", version=2, parent=1, created_at=6.0,
                                         trigger="request:r1", reason="rejected: worse"))
    listed = registry.list_versions(tmp_path)
    assert [(v["version"], v["status"], v["champion"]) for v in listed] == [(1, "promoted", True),
                                                                            (2, "rejected", False)]
    shown = registry.show_version(tmp_path, 1)
    assert shown is not None and len(shown["history"]) == 2 and "artifact_b64" not in shown
    assert shown["artifact_sha256"] == result["sha256"] and shown["trained_on"]["count"] == 180
    art = registry.artifact_path(tmp_path, result["sha256"]).read_bytes()
    assert modeling.sha256(art) == result["sha256"]
    registry.record(tmp_path, ModelEvent(event="rolled_back", version=0, created_at=7.0))
    assert registry.champion(tmp_path) == 0 and registry.show_version(tmp_path, 99) is None
    assert not list((tmp_path / "registry").glob(".*"))  # no temp files left behind
