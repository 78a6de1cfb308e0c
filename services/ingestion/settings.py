"""Ingestion settings (env: RIVULET_INGESTION_GROUP, RIVULET_INGESTION_BATCH)."""

from __future__ import annotations

from shared.config import RivuletSettings


class IngestionSettings(RivuletSettings):
    ingestion_group: str = "rivulet-ingestion"
    ingestion_batch: int = 2000
