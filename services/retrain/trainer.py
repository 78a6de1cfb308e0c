"""The training job: fit a fresh pipeline, score candidate and champion on the holdout,
build the reference profile, serialize and sign.

It runs in a child process (``python -m services.retrain.trainer SPEC``, job as JSON on
stdin, result as JSON on stdout) with ``PYTHONHASHSEED`` fixed. Why a child with a fixed
seed: River's ``compose.Select`` keeps its keys in a set, whose order follows the hash
seed; that order decides the feature order, hence the floating-point sums, hence the
artifact bytes. With the seed fixed, "same rows -> same artifact sha256" holds across
runs and machines. A child also keeps the controller's event loop free and its memory flat.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shared import codec, modeling
from shared.profile import build_profile
from shared.spec import UseCaseSpec, load_spec

Rows = list[tuple[Mapping[str, Any], bool]]


class TrainingFailed(Exception):
    """The child exited non-zero, timed out or answered garbage."""


def _champion(job: Mapping[str, Any], spec: UseCaseSpec) -> tuple[modeling.Scorer, str]:
    """The champion's verified artifact; the baseline for version 0 (or if it fails to verify)."""
    champ = job.get("champion")
    if not champ:
        return modeling.BaselineModel(spec.model.baseline), "baseline"
    try:
        artifact = base64.b64decode(champ["artifact_b64"])
        return modeling.load_verified(artifact, champ["signature"], job["secret"]), f"v{champ['version']}"
    except modeling.ArtifactRejected:
        return modeling.BaselineModel(spec.model.baseline), "baseline (champion artifact failed verification)"


def make_job(train: list[Any], holdout: list[Any], champion: Any, secret: str,
             threshold: float) -> dict[str, Any]:
    """The child's input: rows as [features, actual] pairs; ``champion`` is the promoted
    ModelEvent of the current champion, or None while the baseline serves."""
    job: dict[str, Any] = {
        "train": [[r.features, r.actual] for r in train],
        "holdout": [[r.features, r.actual] for r in holdout],
        "threshold": threshold,
        "secret": secret,
        "champion": None,
    }
    if champion is not None:
        job["champion"] = {"version": champion.version, "artifact_b64": champion.artifact_b64,
                           "signature": champion.signature}
    return job


def run_job(job: Mapping[str, Any], spec: UseCaseSpec) -> dict[str, Any]:
    """Pure and deterministic for a given hash seed: same job -> same result."""
    train_rows: Rows = [(x, bool(y)) for x, y in job["train"]]
    holdout: Rows = [(x, bool(y)) for x, y in job["holdout"]]
    threshold = float(job["threshold"])
    model = modeling.train(spec, train_rows)
    artifact = modeling.serialize(model)
    champion, champion_source = _champion(job, spec)
    metrics = modeling.evaluate(model, holdout, spec, threshold)
    metrics["train_count"] = float(len(train_rows))
    scores = [modeling.score(model, x, spec) for x, _ in train_rows]
    return {
        "artifact_b64": base64.b64encode(artifact).decode(),
        "sha256": modeling.sha256(artifact),
        "signature": modeling.sign(artifact, job["secret"]),
        "metrics": metrics,
        "champion_metrics": modeling.evaluate(champion, holdout, spec, threshold),
        "champion_source": champion_source,
        "profile": build_profile([x for x, _ in train_rows], scores, spec),
    }


async def run_in_child(job: Mapping[str, Any], spec_path: Path, hash_seed: int,
                       timeout: float) -> dict[str, Any]:
    """Run :func:`run_job` in a fresh interpreter; raises :class:`TrainingFailed`."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.retrain.trainer", str(spec_path),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONHASHSEED": str(hash_seed)},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(codec.dumps(job)), timeout)
    except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
        proc.kill()
        await proc.wait()
        if isinstance(exc, asyncio.TimeoutError):
            raise TrainingFailed(f"trainer did not finish within {timeout}s") from exc
        raise
    if proc.returncode != 0:
        raise TrainingFailed(f"trainer exited {proc.returncode}: {err.decode(errors='replace')[-800:]}")
    try:
        result = codec.loads(out)
    except codec.JSONDecodeError as exc:
        raise TrainingFailed(f"trainer answered invalid JSON: {exc}") from exc
    if not isinstance(result, dict):
        raise TrainingFailed("trainer answered a non-object")
    return result


def main() -> None:
    spec = load_spec(sys.argv[1] if len(sys.argv) > 1 else None)
    job = codec.loads(sys.stdin.buffer.read())
    sys.stdout.buffer.write(codec.dumps(run_job(job, spec)))
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    main()
