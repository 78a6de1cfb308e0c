"""Ingestion settings (env: RIVULET_INGESTION_GROUP, RIVULET_INGESTION_BATCH)."""

from __future__ import annotations

from shared.config import RivuletSettings


class IngestionSettings(RivuletSettings):
    ingestion_group: str = "rivulet-ingestion"
    ingestion_batch: int = 2000
    # Longest time the broker may hold a fetch with no data (Tansu holds it the whole time
    # even when records arrive, so this bounds the latency ingestion adds).
    ingestion_fetch_max_wait_ms: int = 5
    # Offsets of acked batches are committed at most this often (0: after every batch): a
    # commit per batch was a broker round trip in the loop and a good share of the broker's
    # load at moderate rates. A crash redelivers at most this much more (deduped downstream).
    ingestion_commit_interval_s: float = 0.5
    # A crashed instance's partitions move to the others after this long (aiokafka default 10 s).
    ingestion_session_timeout_ms: int = 10000
