"""Serving settings.

Environment variables (all ``RIVULET_``-prefixed, like every Rivulet setting):

- ``RIVULET_SERVING_HOST`` (default ``127.0.0.1``) and ``RIVULET_SERVING_PORT`` (``8000``):
  where uvicorn listens.
- ``RIVULET_SERVING_MAX_BODY_BYTES`` (``65536``): larger /predict bodies get 413 before parsing.
- ``RIVULET_SERVING_REDIS_TIMEOUT_S`` (``0.05``): budget for the feature read; past it the
  request is answered with request-time fields and defaults, ``degraded=["features_unavailable"]``.
- ``RIVULET_SERVING_LOG_QUEUE_SIZE`` (``10000``): bound of the prediction-log queue; when full,
  records are dropped and counted instead of slowing /predict down.
- ``RIVULET_SERVING_LOG_BATCH`` (``500``): prediction records sent per producer batch. While
  the broker is down the batch is retried (backing off up to 5 s) and kept; new records wait
  in the queue and are sent when the broker returns. Memory stays bounded by the queue size.
- ``RIVULET_SERVING_BATCH_MAX_ITEMS`` (``1000``): most entities in one /predict/batch.
- ``RIVULET_SERVING_MAX_BATCH_BODY_BYTES`` (``4194304``): body cap of /predict/batch (413 past it).
- ``RIVULET_SERVING_MAX_FEATURE_AGE_S`` (``0`` = off): online features whose last event is older
  than this are still used but flagged ``degraded: ["stale_features"]``. Off by default because
  the demo simulator replays a virtual clock days in the past; set it (e.g. ``3600``) in real
  deployments, where event time follows the wall clock.
- ``RIVULET_SERVING_API_KEYS`` (empty = auth off): comma-separated keys. When set, every route
  but ``/health``, ``/ready`` and the docs needs ``x-api-key: <key>`` (or
  ``Authorization: Bearer <key>``); 401 otherwise.

Plus the common ones (``RIVULET_KAFKA_BOOTSTRAP``, ``RIVULET_REDIS_URL``, ``RIVULET_SPEC``,
``RIVULET_MODEL_SECRET``, ``RIVULET_LOG_LEVEL``...). Service fields carry a ``serving_``
prefix so one shared environment can configure every service without collisions.
"""

from __future__ import annotations

from pydantic import Field, SecretStr

from shared.config import RivuletSettings


class ServingSettings(RivuletSettings):
    serving_host: str = "127.0.0.1"
    serving_port: int = Field(default=8000, ge=0, le=65535)
    serving_max_body_bytes: int = Field(default=64 * 1024, gt=0)
    serving_redis_timeout_s: float = Field(default=0.05, gt=0)
    serving_log_queue_size: int = Field(default=10_000, gt=0)
    serving_log_batch: int = Field(default=500, gt=0)
    serving_batch_max_items: int = Field(default=1000, gt=0)
    serving_max_batch_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    serving_max_feature_age_s: float = Field(default=0.0, ge=0)
    serving_api_keys: SecretStr = SecretStr("")

    def api_keys(self) -> tuple[str, ...]:
        return tuple(k.strip() for k in self.serving_api_keys.get_secret_value().split(",") if k.strip())
