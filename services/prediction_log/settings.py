"""Settings of the prediction log (env prefix ``RIVULET_``)."""

from __future__ import annotations

from pydantic import Field

from shared.config import RivuletSettings


class PredictionLogSettings(RivuletSettings):
    group_id: str = "rivulet-prediction-log"
    # The labels sink (``predictions.labeled`` -> offline/labels) has its own group.
    store_labels: bool = True
    labels_group_id: str = "rivulet-prediction-log-labels"
    # A flush writes one Parquet file per (date, model_version, Kafka partition); bigger
    # flushes mean fewer, larger files, at the cost of a longer redelivery after a crash.
    flush_records: int = Field(default=5000, ge=1)
    flush_interval_s: float = Field(default=2.0, gt=0)
    # How fast the group notices a dead member (a restarted instance waits for this).
    session_timeout_ms: int = Field(default=10000, ge=1000)
    retry_backoff_s: float = Field(default=1.0, gt=0)
