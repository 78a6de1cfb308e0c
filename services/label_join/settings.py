"""Settings of the label join (env prefix ``RIVULET_``)."""

from __future__ import annotations

from pydantic import Field

from shared.config import RivuletSettings


class LabelJoinSettings(RivuletSettings):
    group_id: str = "rivulet-label-join"
    # Join state lives for max(maturity, unmatched grace) plus this margin, then Redis drops
    # it; within the margin a label for an expired prediction is recognised as "expired".
    ttl_margin_s: float = Field(default=600.0, ge=0)
    max_records: int = Field(default=500, ge=1)
    # How fast the group notices a dead member (a restarted instance waits for this).
    session_timeout_ms: int = Field(default=10000, ge=1000)
    stats_interval_s: float = Field(default=30.0, gt=0)
    # Expiry scan of the deadline set: how often, how many per round, and how long a claim
    # is held before another scan may take it over (a crash between claim and publish).
    expiry_interval_s: float = Field(default=1.0, gt=0)
    expiry_batch: int = Field(default=1000, ge=1)
    expiry_lease_s: float = Field(default=30.0, gt=0)
