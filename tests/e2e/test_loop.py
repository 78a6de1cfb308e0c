"""The whole loop, through the public contract only.

Every service runs as its own process against a real Tansu broker and Redis. The simulator
produces events and delayed labels to Kafka and calls POST /predict; after 3,000
predictions it shifts amounts x2.5, adds a merchant category and moves the fraud pattern.
The test reads drift.alerts, models and predictions.labeled, and the Parquet offline store.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import httpx
import pyarrow.dataset as ds

from services.simulator.app import Simulator
from services.simulator.settings import SimulatorSettings
from shared import codec
from shared.embedded import free_port
from shared.supervisor import SERVICES
from tests.helpers import Stack, consume_all

SPEC = Path(__file__).parent / "spec_e2e.toml"
SHIFT_AFTER = 3000
SHIFTED = {"amount", "amount_sum_5m", "amount_max_5m", "amount_sum_1h", "amount_mean_24h",
           "amount_max_24h", "merchant_category", "merchant_distinct_24h"}


async def _topic(stack: Stack, topic: str, timeout: float = 3.0) -> list[dict]:
    records = await consume_all(stack.broker.url, topic, until=lambda r: False, timeout=timeout)
    return [codec.loads(r.value) for r in records]


async def _wait(predicate, timeout: float, what: str, interval: float = 1.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


async def test_loop_detects_shift_retrains_and_serves_new_version(stack: Stack) -> None:
    port = free_port()
    for service in SERVICES:
        stack.spawn(f"services.{service}", RIVULET_SPEC=SPEC, RIVULET_SERVING_PORT=port,
                    RIVULET_PERFORMANCE_PORT=0)
    sim = Simulator(SimulatorSettings(
        kafka_bootstrap=stack.broker.url, redis_url=stack.redis.url,
        serving_url=f"http://127.0.0.1:{port}", sim_cards=200, sim_rate=100.0,
        sim_shift_after=SHIFT_AFTER, sim_label_delay_s=2.0, sim_duration_s=400.0))
    stop = asyncio.Event()
    traffic = asyncio.create_task(sim.run(stop))
    try:
        await _wait(lambda: _shifted(sim), 200, "the shift")
        version_at_shift = sim.stats.model_version
        promoted = await _wait(lambda: _promoted_after(stack, version_at_shift), 150,
                               f"a promotion after v{version_at_shift}\n{stack.logs()}")
        new_version = max(e["version"] for e in promoted)
        await _wait(lambda: _serves(port, new_version), 30, f"/predict answering v{new_version}")
    finally:
        stop.set()
        await asyncio.wait_for(traffic, 60)

    alerts = await _topic(stack, "drift.alerts")
    assert sim.shifted_at is not None
    before = [a for a in alerts if a["window"]["end"] < sim.shifted_at]
    after = [a for a in alerts if a["window"]["end"] >= sim.shifted_at]
    assert before == [], f"false alarms before the shift: {before}"
    assert any(a["kind"] == "data_drift" and a["feature"] in SHIFTED for a in after), after
    assert new_version > (version_at_shift or 0)
    assert sim.stats.failed_requests == 0

    await _assert_offline_store_exactly_once(stack, set(sim.predictions))
    await _assert_labeled_exactly_once(stack, set(sim.labeled_ids))


async def _shifted(sim: Simulator) -> bool:
    return sim.shifted_at is not None


async def _promoted_after(stack: Stack, version: int | None) -> list[dict]:
    events = await _topic(stack, "models", timeout=1.0)
    return [e for e in events if e["event"] == "promoted" and e["version"] > (version or 0)]


async def _serves(port: int, version: int) -> bool:
    async with httpx.AsyncClient() as client:
        resp = await client.post(f"http://127.0.0.1:{port}/predict",
                                 json={"entity_id": "card-00001", "features": {"amount": 10.0}})
        return resp.status_code == 200 and resp.json()["model_version"] == version


async def _assert_offline_store_exactly_once(stack: Stack, served: set[str]) -> None:
    root = stack.tmp / "data" / "offline" / "predictions"

    async def complete() -> Counter[str] | None:
        if not root.exists():
            return None
        ids = ds.dataset(root, format="parquet", partitioning="hive").to_table(
            columns=["prediction_id"]).column("prediction_id").to_pylist()
        counts = Counter(ids)
        return counts if served <= set(counts) else None

    counts = await _wait(complete, 60, "every prediction in the offline store")
    duplicates = {k: v for k, v in counts.items() if v > 1}
    assert duplicates == {}


async def _assert_labeled_exactly_once(stack: Stack, labeled: set[str]) -> None:
    async def complete() -> Counter[str] | None:
        counts = Counter(r["prediction_id"] for r in await _topic(stack, "predictions.labeled"))
        return counts if labeled <= set(counts) else None

    counts = await _wait(complete, 60, "every labeled prediction joined")
    assert {k: v for k, v in counts.items() if v > 1} == {}
    assert set(counts) == labeled
