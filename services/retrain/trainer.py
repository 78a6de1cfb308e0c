"""The training job: fit a fresh pipeline (stateless) or continue the verified parent
artifact (stateful), score candidate and champion on the holdout and on the replay of
recorded traffic (overall and per slice), run the sanity checks, build the reference
profile, serialize and sign.

It runs in a child process (``python -m services.retrain.trainer SPEC``, job as JSON on
stdin, result as JSON on stdout, one ``PROGRESS {...}`` line per epoch on stderr) with
``PYTHONHASHSEED`` fixed. Why a child with a fixed seed: River keeps some state in sets
whose order follows the hash seed; that order decides float sums, hence the artifact bytes.
With the seed fixed, "same rows (+ same parent artifact) -> same sha256" holds across runs
and machines. A child also keeps the controller's event loop free and its memory flat.
"""

from __future__ import annotations

import asyncio
import base64
import math
import os
import statistics
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from shared import codec, modeling
from shared.profile import build_profile
from shared.spec import UseCaseSpec, load_spec

Rows = list[tuple[Mapping[str, Any], bool]]
PROGRESS = b"PROGRESS "


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


def _pairs(rows: list[Any]) -> list[list[Any]]:
    return [[r.features, r.actual] for r in rows]


def make_job(train: list[Any], holdout: list[Any], champion: Any, secret: str, threshold: float,
             replay: list[Any] | None = None, parent: Any = None, slices: tuple[str, ...] = (),
             half_life: int | None = None) -> dict[str, Any]:
    """The child's input. ``champion``/``parent``: promoted ModelEvents (None: baseline /
    stateless). Replay rows also carry what production served (version, score).
    ``half_life``: weigh the training rows by recency (:func:`modeling.recency_weights`)."""
    job: dict[str, Any] = {
        "train": _pairs(train), "holdout": _pairs(holdout), "threshold": threshold, "secret": secret,
        "champion": None, "parent": None, "slices": list(slices), "half_life": half_life,
        "replay": [[r.features, r.actual, r.model_version, r.score] for r in (replay or [])],
    }
    for key, ev in (("champion", champion), ("parent", parent)):
        if ev is not None:
            job[key] = {"version": ev.version, "artifact_b64": ev.artifact_b64, "signature": ev.signature}
    return job


def _parent_model(job: Mapping[str, Any]) -> Any:
    """Stateful update: the parent's artifact, verified, or the job fails (never guess)."""
    parent = job.get("parent")
    if not parent:
        return None
    artifact = base64.b64decode(parent["artifact_b64"])
    return modeling.load_verified(artifact, parent["signature"], job["secret"])


def run_job(job: Mapping[str, Any], spec: UseCaseSpec,
            progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Pure and deterministic for a given hash seed: same job -> same result."""
    train_rows: Rows = [(x, bool(y)) for x, y in job["train"]]
    holdout: Rows = [(x, bool(y)) for x, y in job["holdout"]]
    threshold = float(job["threshold"])
    model = None
    half_life = job.get("half_life")
    weights = modeling.recency_weights(len(train_rows), int(half_life)) if half_life else None
    for epoch, epochs, model in modeling.train_epochs(spec, train_rows, _parent_model(job), weights):
        if progress is not None and _tenth(epoch, epochs) != _tenth(epoch - 1, epochs):
            progress(epoch, epochs)
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
        "validation": validate(model, champion, job, spec, metrics),
    }


def _tenth(epoch: int, epochs: int) -> int:
    """Progress is reported at most ten times a training: a short window trained with many
    passes (``min_updates``) must not flood ``retrain.decisions`` with one record per pass."""
    return epoch * 10 // max(1, epochs)


def validate(model: Any, champion: Any, job: Mapping[str, Any], spec: UseCaseSpec,
             holdout_metrics: dict[str, float]) -> dict[str, Any]:
    """Holdout, replay (overall, as served, per slice) and sanity, for the gate."""
    threshold = float(job["threshold"])
    holdout: Rows = [(x, bool(y)) for x, y in job["holdout"]]
    replay: Rows = [(x, bool(y)) for x, y, _, _ in job["replay"]]
    served = [(s, bool(y)) for _, y, v, s in job["replay"]
              if s is not None and job.get("champion") and v == job["champion"]["version"]]
    slices: dict[str, Any] = {}
    for col in job.get("slices", ()):
        for value in sorted({str(x.get(col)) for x, _ in replay}):
            part = [(x, y) for x, y in replay if str(x.get(col)) == value]
            slices[f"{col}={value}"] = {"count": len(part),
                                        "candidate": modeling.evaluate(model, part, spec, threshold),
                                        "champion": modeling.evaluate(champion, part, spec, threshold)}
    return {
        "holdout": {"candidate": {k: v for k, v in holdout_metrics.items() if k != "train_count"},
                    "champion": modeling.evaluate(champion, holdout, spec, threshold)},
        "replay": {"candidate": modeling.evaluate(model, replay, spec, threshold),
                   "champion": modeling.evaluate(champion, replay, spec, threshold),
                   "champion_as_served": _served_metrics(served, threshold)},
        "slices": slices,
        "sanity": sanity(model, holdout + replay, spec, threshold),
    }


def _served_metrics(served: list[tuple[float, bool]], threshold: float) -> dict[str, float]:
    """What the champion actually answered in production on the replayed rows it served."""
    if not served:
        return {"count": 0.0}
    hits = sum((s >= threshold) == y for s, y in served)
    loss = -sum(math.log(min(max(s, 1e-15), 1 - 1e-15) if y else 1 - min(max(s, 1e-15), 1 - 1e-15))
                for s, y in served)
    return {"accuracy": hits / len(served), "log_loss": loss / len(served), "count": float(len(served))}


def sanity(model: Any, rows: Rows, spec: UseCaseSpec, threshold: float) -> dict[str, Any]:
    """Raw scores (before serving's NaN guard): NaN/inf count, spread, predicted labels."""
    raw = [modeling.raw_score(model, x, spec) for x, _ in rows]
    finite = [s for s in raw if math.isfinite(s)]
    actual = {y for _, y in rows}
    return {"rows": len(raw), "non_finite": len(raw) - len(finite),
            "score_std": statistics.pstdev(finite) if len(finite) > 1 else 0.0,
            "positive_share": sum(s >= threshold for s in finite) / len(finite) if finite else 0.0,
            "both_classes": len(actual) == 2}


async def spawn(spec_path: Path, hash_seed: int) -> asyncio.subprocess.Process:
    """A fresh trainer interpreter. It imports River and loads the spec, then blocks reading
    its job from stdin, so it can be started ahead of time (a warm spare): a trigger then
    skips the interpreter start and imports (seconds on a loaded machine). Each child runs
    exactly one job, so jobs stay isolated; EOF on stdin (the controller died) ends it."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.retrain.trainer", str(spec_path),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONHASHSEED": str(hash_seed)},
    )


async def discard(proc: asyncio.subprocess.Process | None) -> None:
    """Stop an unused spare child (no-op if it already exited)."""
    if proc is not None and proc.returncode is None:
        proc.kill()
        await proc.wait()


async def run_in_child(job: Mapping[str, Any], spec_path: Path, hash_seed: int, timeout: float,
                       on_progress: Callable[[int, int], Any] | None = None,
                       proc: asyncio.subprocess.Process | None = None) -> dict[str, Any]:
    """Run :func:`run_job` in a child interpreter (``proc``: a spare from :func:`spawn`,
    used if still alive); raises :class:`TrainingFailed`."""
    if proc is None or proc.returncode is not None:
        proc = await spawn(spec_path, hash_seed)
    errors: list[bytes] = []

    async def read_stderr() -> None:
        assert proc.stderr is not None
        async for line in proc.stderr:
            if line.startswith(PROGRESS) and on_progress is not None:
                try:
                    info = codec.loads(line[len(PROGRESS):])
                    await _maybe_await(on_progress(int(info["epoch"]), int(info["epochs"])))
                except (codec.JSONDecodeError, KeyError, TypeError, ValueError):
                    pass
            elif not line.startswith(PROGRESS):
                errors.append(line)

    async def talk() -> bytes:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(codec.dumps(job))
        await proc.stdin.drain()
        proc.stdin.close()
        out, _ = await asyncio.gather(proc.stdout.read(), read_stderr())
        await proc.wait()
        return out

    try:
        out = await asyncio.wait_for(talk(), timeout)
    except (TimeoutError, asyncio.CancelledError) as exc:
        proc.kill()
        await proc.wait()
        if isinstance(exc, asyncio.TimeoutError):
            raise TrainingFailed(f"trainer did not finish within {timeout}s") from exc
        raise
    except (BrokenPipeError, ConnectionResetError):
        await proc.wait()
        out = b""
    if proc.returncode != 0:
        raise TrainingFailed(f"trainer exited {proc.returncode}: {b''.join(errors).decode(errors='replace')[-800:]}")
    try:
        result = codec.loads(out)
    except codec.JSONDecodeError as exc:
        raise TrainingFailed(f"trainer answered invalid JSON: {exc}") from exc
    if not isinstance(result, dict):
        raise TrainingFailed("trainer answered a non-object")
    return result


async def _maybe_await(value: Any) -> None:
    if asyncio.iscoroutine(value):
        await value


def _report(epoch: int, epochs: int) -> None:
    sys.stderr.buffer.write(PROGRESS + codec.dumps({"epoch": epoch, "epochs": epochs}) + b"\n")
    sys.stderr.buffer.flush()


def main() -> None:
    spec = load_spec(sys.argv[1] if len(sys.argv) > 1 else None)
    raw = sys.stdin.buffer.read()
    if not raw:  # a spare child whose controller stopped (or discarded it): nothing to do
        return
    job = codec.loads(raw)
    sys.stdout.buffer.write(codec.dumps(run_job(job, spec, _report)))
    sys.stdout.buffer.flush()
    sys.stderr.flush()
    # The answer is complete: skip interpreter teardown (freeing River/numpy/scipy takes
    # seconds on a loaded machine, and the controller waits for the exit).
    os._exit(0)


if __name__ == "__main__":
    main()
