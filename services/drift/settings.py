"""Settings of the drift service (env prefix ``RIVULET_``)."""

from __future__ import annotations

from shared.config import RivuletSettings


class DriftSettings(RivuletSettings):
    """The statistical policy (window sizes, alpha, cool-down) lives in the spec's
    ``[drift]`` section; only process plumbing is configured here."""

    drift_group: str = "rivulet-drift"  # consumer group on predictions + predictions.labeled
    drift_max_records: int = 1000  # records per batch
    drift_catch_up_timeout_s: float = 30.0  # max wait reading `models` up to its end
