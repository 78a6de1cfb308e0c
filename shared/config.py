"""Settings base (pydantic-settings). Every variable carries the ``RIVULET_`` prefix.

Why the prefix: faust reads unprefixed variables (``BROKER_URL``, ``APP_VERSION``...),
so ours must never collide with them.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.spec import UseCaseSpec, default_spec_path, load_spec


class RivuletSettings(BaseSettings):
    """Connection and common settings; each service subclasses this with its own fields."""

    model_config = SettingsConfigDict(env_prefix="RIVULET_", extra="ignore", frozen=True)

    kafka_bootstrap: str = "127.0.0.1:9092"
    # Idempotent producers need broker support (Apache Kafka has it, Tansu does not).
    kafka_idempotence: bool = False
    redis_url: str = "redis://127.0.0.1:6379/0"
    spec: Path = default_spec_path()
    data_dir: Path = Path(".rivulet")
    # HMAC key for model artifacts; change it in any real deployment.
    model_secret: SecretStr = SecretStr("rivulet-dev-secret-change-me")
    log_level: str = "INFO"

    @cached_property
    def use_case(self) -> UseCaseSpec:
        return load_spec(self.spec)
