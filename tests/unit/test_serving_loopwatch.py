"""LoopWatch: a blocked event loop and a GC pass show up on the serving metrics."""

from __future__ import annotations

import asyncio
import gc
import time

from services.serving.loopwatch import LoopWatch
from services.serving.metrics import Metrics


def _count(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return value or 0.0


async def test_loop_lag_and_gc_pauses_are_recorded() -> None:
    metrics = Metrics()
    stop = asyncio.Event()
    watch = LoopWatch(metrics, interval_s=0.005)
    task = asyncio.create_task(watch.run(stop))
    await asyncio.sleep(0.05)  # some normal ticks first
    time.sleep(0.08)  # a callback that hogs the loop for 80 ms
    await asyncio.sleep(0.03)
    gc.collect()
    await asyncio.sleep(0.02)
    stop.set()
    await task

    ticks = _count(metrics, "rivulet_serving_event_loop_lag_seconds_count")
    late = ticks - _count(metrics, "rivulet_serving_event_loop_lag_seconds_bucket", le="0.05")
    assert ticks >= 5
    assert late >= 1  # the 80 ms hog is seen as (at least) one tick more than 50 ms late
    assert _count(metrics, "rivulet_serving_event_loop_lag_seconds_sum") >= 0.07
    assert _count(metrics, "rivulet_serving_gc_pause_seconds_count", generation="2") >= 1
    assert watch._on_gc not in gc.callbacks  # process-wide hook removed on stop
