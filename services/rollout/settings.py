"""Rollout controller settings (env: RIVULET_ROLLOUT_*). The policy itself (stage sizes,
tolerance, timeout) is the spec's ``[rollout]`` section."""

from __future__ import annotations

from shared.config import RivuletSettings


class RolloutSettings(RivuletSettings):
    rollout_poll_ms: int = 200
    rollout_batch: int = 2000
    # a stage's inputs are re-read from this long before its start (prediction log queue,
    # record timestamps vs served_at); records served before the start are then filtered out
    rollout_seek_margin_s: float = 30.0
    rollout_publish_retry_s: float = 1.0
    rollout_progress_log_s: float = 10.0  # "waiting" progress is logged at most this often
