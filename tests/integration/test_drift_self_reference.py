"""Drift service in-process against the real broker and Redis: versions without an
announced profile (the baseline v0, or a promotion without one) build a reference from
their first predictions and store it in Redis; a stored reference is used on restart
instead of re-basing on current (possibly drifted) traffic."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import redis.asyncio as aioredis

from services.drift.app import DriftService
from services.drift.settings import DriftSettings
from shared import codec, redis_keys
from shared.contracts import DriftAlert, ModelEvent, PredictionRecord
from shared.profile import build_profile
from tests.helpers import Stack, consume_all, produce
from tests.unit.test_drift_monitor import synth_rows, synth_score

SPEC_PATH = Path(__file__).with_name("drift_test_spec.toml")


def _records(rows: list[dict], version: int, start: int) -> list[tuple[bytes, bytes]]:
    """One key per version: its predictions share a partition, so the monitor reads them in
    the order made. Keyed by prediction id they spread over 4 partitions and arrive in an
    order that differs per run; then the self-reference check sometimes (~0.3% of random orders,
    measured) drops a first chunk as unsettled, v5 ends 100 short of a window, and the test
    times out (it did so once in CI)."""
    out = []
    for i, row in enumerate(rows):
        rec = PredictionRecord(prediction_id=f"v{version}-{start + i}", entity_id="c", model_version=version,
                               features=row, score=synth_score(row), label=False, threshold=0.5,
                               served_at=float(start + i))
        out.append((f"v{version}".encode(), codec.dumps(rec.model_dump())))
    return out


async def _until(predicate, timeout: float = 25.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.2)


async def test_self_references_are_built_stored_and_reused(stack: Stack) -> None:
    settings = DriftSettings(kafka_bootstrap=stack.broker.url, redis_url=stack.redis.url, spec=SPEC_PATH)
    spec = settings.use_case
    rng = np.random.default_rng(8)
    r = aioredis.from_url(stack.redis.url)
    # As if a previous run had built v0's reference while amounts were 3x larger.
    old = synth_rows(rng, 400, spec, amount_scale=3.0)
    await r.hset(redis_keys.drift_self_references(), "0", codec.dumps(build_profile(old, [0.1] * 400, spec)))
    # v5 is promoted without a profile: it must bootstrap one (after reading `models`).
    v5 = ModelEvent(event="promoted", version=5, created_at=1.0, metrics={"accuracy": 0.9})
    await produce(stack.broker.url, "models", [(b"5", codec.dumps(v5.model_dump()))])

    service = DriftService(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await produce(stack.broker.url, "predictions",
                      _records(synth_rows(rng, 200, spec), 0, 0) + _records(synth_rows(rng, 600, spec), 5, 0))
        alerts = await consume_all(stack.broker.url, "drift.alerts", until=lambda rs: len(rs) >= 1)
        await _until(lambda: r.hexists(redis_keys.drift_self_references(), "5"))

        async def both_windows_tested() -> bool:  # v5's window follows its reference: not stopped between
            return service.monitor.windows_tested >= 2

        await _until(both_windows_tested)
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
    assert alerts
    everything = await consume_all(stack.broker.url, "drift.alerts", until=lambda rs: False, timeout=1.5)
    parsed = [DriftAlert.model_validate(codec.loads(a.value)) for a in everything]
    # v0: the stored (3x) reference was used at once, no 400-prediction bootstrap.
    [opened] = [a for a in parsed if a.status == "opened"]
    assert opened.model_version == 0 and "amount" in {f.feature for f in opened.top_features}
    assert service.monitor.versions[5].accuracy == 0.9  # the promotion was read first
    stored = codec.loads(await r.hget(redis_keys.drift_self_references(), "5"))
    assert stored["count"] == spec.drift.reference_size and len(stored["score"]) == 400
    assert service.monitor.windows_tested == 2  # v0's window + v5's one window after its 400
    assert all(a.model_version == 0 for a in parsed)  # v5's stationary window is quiet
    await r.aclose()
