"""Demo traffic driver. Uses only Rivulet's public contract.

Produces card transactions to ``events.raw`` (a virtual-clock history first, then live),
calls ``POST /predict`` for each live transaction, produces the ground truth to
``labels.raw`` after a delay, and reads ``drift.alerts``. At ``sim_shift_after``
predictions it applies a covariate shift and a concept change. Stores nothing.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from services.simulator.handlers import Stats
from services.simulator.settings import SimulatorSettings
from services.simulator.world import Txn, World
from shared import codec
from shared.runtime import run_service, setup_logging

log = logging.getLogger(__name__)
PROBES = 24


class Simulator:
    def __init__(self, settings: SimulatorSettings, on_tick: Callable[[Stats], None] | None = None) -> None:
        self.s = settings
        self.stats = Stats()
        self.world = World(n_cards=settings.sim_cards, seed=settings.sim_seed,
                           start_time=time.time() - settings.sim_start_days_ago * 86400)
        self.on_tick = on_tick
        self._labels: list[tuple[float, int, dict[str, Any], bool, bool, int, str]] = []
        self._seq = 0
        self._order = itertools.count()  # unique heap tie-break
        self.predictions: dict[str, dict[str, Any]] = {}  # prediction_id -> response
        self.labeled_ids: list[str] = []  # prediction ids whose label was produced
        self.shifted_at: float | None = None  # wall time the shift was applied
        self._last_warmup: dict[str, float] = {}  # entity -> event time of its last history event

    async def run(self, stop: asyncio.Event) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.s.kafka_bootstrap, acks="all", linger_ms=5)
        await producer.start()
        async with httpx.AsyncClient(base_url=self.s.serving_url, timeout=10.0) as http:
            tasks = [asyncio.create_task(self._watch_alerts(stop))]
            try:
                await self._wait_ready(http, stop)
                await self._warmup(producer)
                await self._wait_features(http, stop)
                tasks.append(asyncio.create_task(self._label_pump(producer, stop)))
                await self._live(producer, http, stop)
                await self._drain_labels(producer)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await producer.stop()

    async def _wait_ready(self, http: httpx.AsyncClient, stop: asyncio.Event) -> None:
        self.stats.phase = "waiting for serving"
        while not stop.is_set():
            try:
                if (await http.get("/health")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.3)

    async def _warmup(self, producer: AIOKafkaProducer) -> None:
        """Virtual history so that every window is in its steady state before predictions."""
        self.stats.phase = "warm-up history"
        until = self.world.now + self.s.sim_warmup_hours * 3600
        futures = []
        while self.world.now < until:
            txn = self.world.next()
            self._last_warmup[txn.event["entity_id"]] = txn.event["event_time"]
            futures.append(await self._send_event(producer, txn))
            if len(futures) >= 2000:
                await asyncio.gather(*futures)
                futures = []
        await asyncio.gather(*futures)

    async def _send_event(self, producer: AIOKafkaProducer, txn: Txn) -> asyncio.Future[Any]:
        self.stats.events += 1
        return await producer.send("events.raw", codec.dumps(txn.event), key=txn.event["entity_id"].encode())

    async def _wait_features(self, http: httpx.AsyncClient, stop: asyncio.Event) -> None:
        """Wait until the cards written last in the history have their last event applied.

        Partitions are processed in order, so once these (covering every partition with
        near certainty) are current, the backlog is in. Real cards are polled, a few times
        each, so the readiness checks look like ordinary traffic to drift detection."""
        self.stats.phase = "waiting for features"
        last = sorted(self._last_warmup.items(), key=lambda kv: kv[1])[-PROBES:]
        pending = dict(last)
        while pending and not stop.is_set():
            for entity, event_time in list(pending.items()):
                resp = await http.post("/predict", content=codec.dumps({"entity_id": entity, "features": {}}))
                age = resp.json().get("feature_age_s") if resp.status_code == 200 else None
                if age is not None and time.time() - age >= event_time - 1.0:
                    del pending[entity]
            await asyncio.sleep(1.0)

    async def _live(self, producer: AIOKafkaProducer, http: httpx.AsyncClient, stop: asyncio.Event) -> None:
        self.stats.phase = "live"
        sem = asyncio.Semaphore(self.s.sim_concurrency)
        started = time.monotonic()
        inflight: set[asyncio.Task[None]] = set()
        while not stop.is_set() and not self._done(started):
            due = int((time.monotonic() - started) * self.s.sim_rate) - self._seq
            for _ in range(max(0, due)):
                self._maybe_shift()
                await sem.acquire()
                task = asyncio.create_task(self._transact(producer, http, self.world.next(), sem))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
                self._seq += 1
            if self.on_tick:
                self.on_tick(self.stats)
            await asyncio.sleep(0.02)
        await asyncio.gather(*inflight, return_exceptions=True)

    def _done(self, started: float) -> bool:
        s = self.s
        return (s.sim_duration_s > 0 and time.monotonic() - started >= s.sim_duration_s) or (
            s.sim_max_predictions > 0 and self._seq >= s.sim_max_predictions)

    def _maybe_shift(self) -> None:
        if self.s.sim_shift_after and self._seq == self.s.sim_shift_after:
            self.world.shift()
            self.shifted_at = time.time()
            self.stats.phase = "live (shifted)"
            log.info("applied covariate shift and concept change after %d predictions", self._seq)

    async def _transact(self, producer: AIOKafkaProducer, http: httpx.AsyncClient, txn: Txn,
                        sem: asyncio.Semaphore) -> None:
        try:
            body = {"entity_id": txn.event["entity_id"], "features": txn.request_fields}
            t0 = time.perf_counter()
            resp = await http.post("/predict", content=codec.dumps(body),
                                   headers={"content-type": "application/json"})
            latency = (time.perf_counter() - t0) * 1000
            if resp.status_code != 200:
                self.stats.failed_requests += 1
            else:
                answer = resp.json()
                self.stats.record_prediction(answer, latency)
                self.predictions[answer["prediction_id"]] = answer
                label = {"prediction_id": answer["prediction_id"], "label": txn.is_fraud,
                         "event_time": txn.event["event_time"]}
                phase = "after shift" if self.shifted_at is not None else "before shift"
                heapq.heappush(self._labels, (time.monotonic() + self.s.sim_label_delay_s, next(self._order),
                                              label, bool(answer["label"]), txn.is_fraud,
                                              int(answer["model_version"]), phase))
            await self._send_event(producer, txn)
        except httpx.HTTPError:
            self.stats.failed_requests += 1
        finally:
            sem.release()

    async def _label_pump(self, producer: AIOKafkaProducer, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._send_due_labels(producer, time.monotonic())
            await asyncio.sleep(0.05)

    async def _send_due_labels(self, producer: AIOKafkaProducer, now: float) -> None:
        futures = []
        while self._labels and self._labels[0][0] <= now:
            _, _, label, predicted, actual, version, phase = heapq.heappop(self._labels)
            futures.append(await producer.send("labels.raw", codec.dumps(label),
                                               key=label["prediction_id"].encode()))
            self.stats.record_label(predicted, actual, version, phase)
            self.labeled_ids.append(label["prediction_id"])
        await asyncio.gather(*futures)

    async def _drain_labels(self, producer: AIOKafkaProducer) -> None:
        await self._send_due_labels(producer, float("inf"))

    async def _watch_alerts(self, stop: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer("drift.alerts", bootstrap_servers=self.s.kafka_bootstrap,
                                    group_id=None, auto_offset_reset="earliest")
        await consumer.start()
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        self.stats.alerts += 1
                        self.stats.last_alert = codec.loads(record.value)
        finally:
            await consumer.stop()


def create_app(settings: SimulatorSettings, on_tick: Callable[[Stats], None] | None = None) -> Simulator:
    return Simulator(settings, on_tick)


def main() -> None:
    settings = SimulatorSettings()
    setup_logging("simulator", settings.log_level)
    run_service(create_app(settings).run)
