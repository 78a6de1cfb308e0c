"""Test helpers that talk to the real broker and Redis (no mocks)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord

from shared import codec
from shared.config import RivuletSettings
from shared.embedded import ServerProcess
from shared.kafka import ensure_topics

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Stack:
    broker: ServerProcess
    redis: ServerProcess
    tmp: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def env(self, **extra: Any) -> dict[str, str]:
        env = {
            **os.environ,
            "RIVULET_KAFKA_BOOTSTRAP": self.broker.url,
            "RIVULET_REDIS_URL": self.redis.url,
            "RIVULET_DATA_DIR": str(self.tmp / "data"),
            "PYTHONUNBUFFERED": "1",
        }
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def settings(self, **overrides: Any) -> RivuletSettings:
        return RivuletSettings(
            kafka_bootstrap=self.broker.url,
            redis_url=self.redis.url,
            data_dir=self.tmp / "data",
            **overrides,
        )

    def create_topics(self) -> None:
        asyncio.run(ensure_topics(self.broker.url))

    def spawn(self, module: str, *args: str, **env: Any) -> subprocess.Popen[bytes]:
        """Start ``python -m module`` as its own process (a real service process)."""
        log = open(self.tmp / f"{module.replace('.', '_')}-{len(self.procs)}.log", "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            env=self.env(**env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        return proc

    def stop_services(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-4000:] for p in sorted(self.tmp.glob("*.log")))


async def produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=8 << 20)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def produce_json(bootstrap: str, topic: str, items: list[tuple[str | None, Any]]) -> None:
    """Synchronous convenience: produce JSON values (key as str)."""
    recs = [(k.encode() if k else None, v if isinstance(v, bytes) else codec.dumps(v)) for k, v in items]
    asyncio.run(produce(bootstrap, topic, recs))


async def consume_all(
    bootstrap: str,
    topic: str,
    *,
    until: Callable[[list[ConsumerRecord]], bool],
    timeout: float = 30.0,
) -> list[ConsumerRecord]:
    """Read ``topic`` from the beginning (no group) until ``until(records)`` or timeout."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
        max_partition_fetch_bytes=16 << 20, fetch_max_bytes=64 << 20,
    )
    await consumer.start()
    records: list[ConsumerRecord] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not until(records):
            batch = await consumer.getmany(timeout_ms=200)
            for recs in batch.values():
                records.extend(recs)
    finally:
        await consumer.stop()
    return records


def read_topic(bootstrap: str, topic: str, *, count: int | None = None, timeout: float = 30.0,
               until: Callable[[list[ConsumerRecord]], bool] | None = None) -> list[ConsumerRecord]:
    """Synchronous: read until ``count`` records (or ``until``) or timeout."""
    cond = until or (lambda recs: count is not None and len(recs) >= count)
    return asyncio.run(consume_all(bootstrap, topic, until=cond, timeout=timeout))


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1,
             what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
