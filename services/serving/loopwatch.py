"""What a request waits for besides its own work, measured inside the process.

A p99 spike at a moderate rate is rarely the request's own code: it is the event loop
busy with something else (a cyclic-GC pass, a long callback) or the process starved of
CPU. Two cheap probes make that visible on ``/metrics``:

- event-loop lag: a ticker sleeps ``interval_s`` and records how late it woke up;
- GC pauses: ``gc.callbacks`` time every collection, by generation.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

from services.serving.metrics import Metrics


class LoopWatch:
    def __init__(self, metrics: Metrics, interval_s: float = 0.01) -> None:
        self.metrics = metrics
        self.interval_s = interval_s
        self._gc_started = 0.0

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started:
            self.metrics.gc_pause.labels(str(info["generation"])).observe(time.perf_counter() - self._gc_started)
            self._gc_started = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until ``stop``; GC pauses are timed meanwhile (the callback is process-wide, so
        it is installed only while this runs)."""
        gc.callbacks.append(self._on_gc)
        observe = self.metrics.loop_lag.observe
        try:
            while not stop.is_set():
                started = time.perf_counter()
                await asyncio.sleep(self.interval_s)
                observe(max(0.0, time.perf_counter() - started - self.interval_s))
        finally:
            gc.callbacks.remove(self._on_gc)
