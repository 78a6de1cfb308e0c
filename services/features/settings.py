"""Settings of the features service (env prefix ``RIVULET_``, e.g. ``RIVULET_BATCH_SIZE``)."""

from __future__ import annotations

from shared.config import RivuletSettings


class FeaturesSettings(RivuletSettings):
    # Consumer group and faust app id: unique to this service.
    group_id: str = "rivulet-features"
    # A batch is up to batch_size events or whatever arrived within batch_within_s.
    batch_size: int = 500
    batch_within_s: float = 0.05
    # Longest time the broker may hold a fetch with no data (lower: fresher features).
    fetch_max_wait_ms: int = 20
    # How often faust commits acked offsets (Redis offsets make redelivery harmless).
    commit_interval_s: float = 1.0
    # A crashed member is evicted from the group after this long (faust's default is 60 s).
    session_timeout_s: float = 10.0
    # On shutdown, how long an in-flight Redis write may take to finish.
    shutdown_grace_s: float = 10.0
    # Back-off between retries of a batch whose Redis write failed.
    retry_backoff_s: float = 1.0
