"""Settings of the performance service (env prefix ``RIVULET_``)."""

from __future__ import annotations

from pydantic import Field

from shared.config import RivuletSettings


class PerformanceSettings(RivuletSettings):
    # Prometheus /metrics (0: no HTTP server).
    performance_port: int = Field(default=9464, ge=0)
    # A metrics snapshot is computed and published this often.
    publish_interval_s: float = Field(default=5.0, gt=0)
    # On start, each input partition is replayed from this many records before its end,
    # which rebuilds the rolling windows (the service keeps no state of its own).
    replay_records: int = Field(default=5000, ge=0)
    max_records: int = Field(default=2000, ge=1)
