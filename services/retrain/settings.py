"""Retrain settings (env: RIVULET_RETRAIN_*)."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

from shared.config import RivuletSettings

ROOT = Path(__file__).resolve().parents[2]


class RetrainSettings(RivuletSettings):
    # labeled rows kept in memory = retrain_buffer_factor x spec.retrain.window
    retrain_buffer_factor: int = 4
    retrain_poll_ms: int = 200
    retrain_batch: int = 2000
    # the training child's PYTHONHASHSEED: fixed so the same rows give the same artifact bytes
    retrain_hash_seed: int = 0
    retrain_timeout_s: float = 600.0
    # trainer children started ahead of time (imports done), so a trigger does not wait for
    # an interpreter start; 0: start the child when training begins
    retrain_warm_workers: int = 2
    # back-off between attempts to publish a finished training's events
    retrain_publish_retry_s: float = 1.0
    # recorded in each version's lineage; None: ``git rev-parse`` of the checkout, else "unknown"
    retrain_git_sha: str | None = None


def code_version(settings: RetrainSettings) -> str:
    """``<package version>+<git sha>`` for the lineage (called once at start, never at import)."""
    try:
        version = metadata.version("rivulet")
    except metadata.PackageNotFoundError:
        version = "unknown"
    sha = settings.retrain_git_sha
    if not sha:
        try:
            out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True,
                                 text=True, timeout=5, check=False)
            sha = out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
        except (OSError, subprocess.SubprocessError):
            sha = "unknown"
    return f"{version}+{sha}"
