"""Ingestion settings (env: RIVULET_INGESTION_GROUP, RIVULET_INGESTION_BATCH)."""

from __future__ import annotations

from shared.config import RivuletSettings


class IngestionSettings(RivuletSettings):
    ingestion_group: str = "rivulet-ingestion"
    ingestion_batch: int = 2000
    # Longest time the broker may hold a fetch with no data (Tansu holds it the whole time
    # even when records arrive, so this bounds the latency ingestion adds).
    ingestion_fetch_max_wait_ms: int = 20
    # A crashed instance's partitions move to the others after this long (aiokafka default 10 s).
    ingestion_session_timeout_ms: int = 10000
