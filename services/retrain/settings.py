"""Retrain settings (env: RIVULET_RETRAIN_*)."""

from __future__ import annotations

from shared.config import RivuletSettings


class RetrainSettings(RivuletSettings):
    # labeled rows kept in memory = retrain_buffer_factor x spec.retrain.window
    retrain_buffer_factor: int = 4
    retrain_poll_ms: int = 200
    retrain_batch: int = 2000
    # the training child's PYTHONHASHSEED: fixed so the same rows give the same artifact bytes
    retrain_hash_seed: int = 0
    retrain_timeout_s: float = 600.0
    # back-off between attempts to publish a finished training's events
    retrain_publish_retry_s: float = 1.0
