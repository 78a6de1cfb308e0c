"""Fixtures: a real Tansu broker and a real Redis server per test, on free ports.

Both start in milliseconds, so each test gets a clean pair and tests never see each
other's topics or keys. ``RIVULET_KAFKA_BOOTSTRAP``/``RIVULET_REDIS_URL`` are ignored
here on purpose: tests need servers they may wipe, stop and restart.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.config import RivuletSettings
from shared.embedded import ServerProcess, start_broker, start_redis
from tests.helpers import Stack

for _var in ("RIVULET_KAFKA_BOOTSTRAP", "RIVULET_REDIS_URL"):
    os.environ.pop(_var, None)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[ServerProcess]:
    server = start_broker(log_file=tmp_path / "tansu.log")
    yield server
    server.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[ServerProcess]:
    server = start_redis(workdir=tmp_path)
    yield server
    server.stop()


@pytest.fixture
def stack(broker: ServerProcess, redis_server: ServerProcess, tmp_path: Path) -> Iterator[Stack]:
    """Broker + Redis + settings pointing at them, with the catalog's topics created."""
    s = Stack(broker, redis_server, tmp_path)
    s.create_topics()
    yield s
    s.stop_services()


@pytest.fixture
def settings(stack: Stack) -> RivuletSettings:
    return stack.settings()
