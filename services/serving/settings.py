"""Serving settings.

Environment variables (all ``RIVULET_``-prefixed, like every Rivulet setting):

- ``RIVULET_SERVING_HOST`` (default ``127.0.0.1``) and ``RIVULET_SERVING_PORT`` (``8000``):
  where uvicorn listens.
- ``RIVULET_SERVING_MAX_BODY_BYTES`` (``65536``): larger /predict bodies get 413 before parsing.
- ``RIVULET_SERVING_REDIS_TIMEOUT_S`` (``0.05``): budget for the feature read; past it the
  request is answered with request-time fields and defaults, ``degraded=["features_unavailable"]``.
- ``RIVULET_SERVING_LOG_QUEUE_SIZE`` (``10000``): bound of the prediction-log queue; when full,
  records are dropped and counted instead of slowing /predict down.
- ``RIVULET_SERVING_LOG_BATCH`` (``500``): prediction records sent per producer batch.

Plus the common ones (``RIVULET_KAFKA_BOOTSTRAP``, ``RIVULET_REDIS_URL``, ``RIVULET_SPEC``,
``RIVULET_MODEL_SECRET``, ``RIVULET_LOG_LEVEL``...). Service fields carry a ``serving_``
prefix so one shared environment can configure every service without collisions.
"""

from __future__ import annotations

from pydantic import Field

from shared.config import RivuletSettings


class ServingSettings(RivuletSettings):
    serving_host: str = "127.0.0.1"
    serving_port: int = Field(default=8000, ge=0, le=65535)
    serving_max_body_bytes: int = Field(default=64 * 1024, gt=0)
    serving_redis_timeout_s: float = Field(default=0.05, gt=0)
    serving_log_queue_size: int = Field(default=10_000, gt=0)
    serving_log_batch: int = Field(default=500, gt=0)
