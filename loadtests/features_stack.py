"""The features benchmark's stack: an embedded broker and Redis per phase, the services as
real processes, the producers and the measurements (see ``loadtests.features``)."""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis as redis_sync
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from loadtests.broker_floor import (
    RELAY_IN,
    RELAY_OUT,
    USER_LINGER_MS,
    floor_latency,
    latency_summary,
    paced,
)
from shared import codec, redis_keys
from shared.embedded import start_broker, start_redis
from shared.kafka import ensure_topics
from shared.spec import load_spec
from shared.topics import Topic

ROOT = Path(__file__).resolve().parents[1]
SPEC = load_spec()
GROUP = "rivulet-features"
BENCH_IN, BENCH_OUT = Topic("bench.in", None, "entity_id", 4), Topic("bench.out", None, "entity_id", 4)


def make_event(i: int, entity: str, now: float, rng: random.Random) -> bytes:
    return codec.dumps({
        "event_id": f"b{i}", "entity_id": entity, "event_time": now - rng.uniform(0, 300),
        "amount": round(rng.uniform(1, 500), 2), "merchant_category": rng.choice(["grocery", "fuel", "travel"]),
        "country": rng.choice(["US", "FR", "DE"]), "channel": rng.choice(["online", "pos", "atm"]),
    })


# ------------------------------------------------------------------ helpers
async def produce_all(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> float:
    """Produce as fast as possible; returns the time the first record was sent."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=256 * 1024)
    await producer.start()
    try:
        started = time.time()
        futures = [await producer.send(topic, v, key=k) for k, v in records]
        await asyncio.gather(*futures)
        return started
    finally:
        await producer.stop()


def applied(r: redis_sync.Redis) -> dict[int, int]:
    return {int(k): int(v) for k, v in r.hgetall(redis_keys.applied_offsets(SPEC, GROUP)).items()}


def wait(predicate: Any, timeout: float, interval: float = 0.005) -> float:
    """Poll until true; returns the wall time it became true (raises on timeout)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return time.time()
        time.sleep(interval)
    raise TimeoutError("benchmark condition not reached")


def cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]


def steady_rate(progress: list[tuple[float, int]], n: int) -> float:
    """Events/s between 20% and 80% of the run's progress (no pipeline fill or drain)."""
    lo = next(p for p in progress if p[1] >= 0.2 * n)
    hi = next(p for p in progress if p[1] >= 0.8 * n)
    return (hi[1] - lo[1]) / max(1e-6, hi[0] - lo[0])


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="rivulet-bench-features-"))
        self.broker = start_broker(log_file=self.tmp / "tansu.log")
        self.redis = start_redis(workdir=self.tmp)
        self.bootstrap = self.broker.url
        self.r = redis_sync.Redis.from_url(self.redis.url)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.rng = random.Random(42)
        self.counter = 0
        self.total = 0  # valid events produced to events.raw so far
        self.pids: dict[str, int] = {}  # process name -> pid, for CPU accounting

    def spawn(self, *argv: str, **env: Any) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{argv[-1].replace('.', '_')}-{len(self.procs)}.log", "ab")
        full_env = {**os.environ, "RIVULET_KAFKA_BOOTSTRAP": self.bootstrap, "RIVULET_REDIS_URL": self.redis.url,
                    "RIVULET_DATA_DIR": str(self.tmp / "data"), "PYTHONUNBUFFERED": "1",
                    "RIVULET_LOG_LEVEL": "WARNING", **{k: str(v) for k, v in env.items()}}
        proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def start_services(self, **env: Any) -> subprocess.Popen[bytes]:
        """Ingestion and features as real processes (CPU accounted in ``pids``); returns features."""
        ingestion = self.spawn("-m", "services.ingestion", **env)
        features = self.spawn("-m", "services.features", RIVULET_SESSION_TIMEOUT_S=6, **env)
        self.pids = {"ingestion": ingestion.pid, "features": features.pid,
                     "broker": self.broker.proc.pid, "redis": self.redis.proc.pid}
        return features

    def events(self, n: int, entities: int) -> list[tuple[bytes, bytes]]:
        now, out = time.time(), []
        for _ in range(n):
            entity = f"card-{self.rng.randrange(entities)}"
            out.append((entity.encode(), make_event(self.counter, entity, now, self.rng)))
            self.counter += 1
        return out

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        self.redis.stop()
        self.broker.stop()

    # -------------------------------------------------------------- phases
    def baseline(self) -> dict[str, Any]:
        asyncio.run(ensure_topics(self.bootstrap, (BENCH_IN, BENCH_OUT)))
        worker = self.spawn("-m", "loadtests.features", "--baseline-worker", self.bootstrap, "baseline")
        warm = self.events(500, self.args.entities)
        asyncio.run(self._baseline_run(warm, before=0))
        records = self.events(self.args.baseline_events or 4 * self.args.events, self.args.entities)
        cpu0, broker0 = cpu_s(worker.pid), cpu_s(self.broker.proc.pid)
        started, progress = asyncio.run(self._baseline_run(records, before=len(warm)))
        done = progress[-1][0]
        return {"events": len(records), "seconds": done - started, "events_per_s": len(records) / (done - started),
                "steady_events_per_s": steady_rate(progress, len(records)),
                "cpu_us_per_event": (cpu_s(worker.pid) - cpu0) / len(records) * 1e6,
                "broker_cpu_us_per_event": (cpu_s(self.broker.proc.pid) - broker0) / len(records) * 1e6}

    async def _baseline_run(self, records: list[tuple[bytes, bytes]], before: int,
                            timeout: float = 300) -> tuple[float, list[tuple[float, int]]]:
        """Produce, and poll the input records the baseline committed (it commits only after
        its outputs are acked; ``before`` were committed already) every 20 ms, as (b) polls
        Redis' applied offsets."""
        # Not the admin client: its OffsetFetch response from Tansu fails to parse.
        watcher = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id="bench-baseline",
                                   enable_auto_commit=False)
        await watcher.start()
        partitions = [TopicPartition(BENCH_IN.name, p) for p in range(BENCH_IN.partitions)]
        progress: list[tuple[float, int]] = []
        deadline = time.time() + timeout
        try:
            producing = asyncio.create_task(produce_all(self.bootstrap, BENCH_IN.name, records))
            while not progress or progress[-1][1] < len(records):
                if time.time() > deadline:
                    raise TimeoutError("the baseline did not commit every record")
                done = sum([await watcher.committed(tp) or 0 for tp in partitions])
                progress.append((time.time(), done - before))
                await asyncio.sleep(0.02)
            return await producing, progress
        finally:
            await watcher.stop()

    def _applied_count(self) -> int:
        """events.valid records applied to Redis (offsets are contiguous from 0 per partition).
        Why not ListOffsets: Tansu answers it per record batch, not per record."""
        return sum(o + 1 for o in applied(self.r).values())

    def system(self, pids: dict[str, int]) -> dict[str, Any]:
        """All events produced up front: the services run flat out until the backlog is gone.
        ``steady_events_per_s``: applied between 20% and 80% of the run (no start/end effects)."""
        warm = self.events(500, self.args.entities)
        asyncio.run(produce_all(self.bootstrap, "events.raw", warm))
        wait(lambda: self._applied_count() >= 500, 120, 0.05)
        records = self.events(self.args.events, self.args.entities)
        cpu0 = {name: cpu_s(pid) for name, pid in pids.items()}
        progress: list[tuple[float, int]] = []
        started = asyncio.run(produce_all(self.bootstrap, "events.raw", records))
        self.total = 500 + len(records)

        def applied_all() -> bool:
            progress.append((time.time(), self._applied_count() - 500))
            return progress[-1][1] >= len(records)

        done = wait(applied_all, 600, 0.02)
        return {"events": len(records), "seconds": done - started, "events_per_s": len(records) / (done - started),
                "steady_events_per_s": steady_rate(progress, len(records)),
                "cpu_us_per_event": {n: (cpu_s(pid) - cpu0[n]) / len(records) * 1e6 for n, pid in pids.items()},
                "features_rss_kb_after": rss_kb(pids["features"])}

    def record(self, entities: int, tag: str) -> Callable[[int], tuple[bytes, bytes, bool]]:
        """Every 20th event is the only event of a fresh entity (sampled); the rest hit ``entities``."""
        def make(i: int) -> tuple[bytes, bytes, bool]:
            entity = f"{tag}-{i}" if i % 20 == 0 else f"card-{self.rng.randrange(entities)}"
            self.counter += 1
            return entity.encode(), make_event(self.counter, entity, time.time(), self.rng), i % 20 == 0
        return make

    def floor(self, rate: float, duration: float, entities: int) -> dict[str, Any]:
        """The same paced load through a raw two-hop relay: the broker's latency floor."""
        worker = self.spawn("-m", "loadtests.features", "--relay-worker", self.bootstrap)
        try:
            asyncio.run(ensure_topics(self.bootstrap, (RELAY_IN, RELAY_OUT)))
            asyncio.run(floor_latency(self.bootstrap, 100, 2, self.record(entities, "warm")))  # group joined
            broker0, t0 = cpu_s(self.broker.proc.pid), time.time()
            out = asyncio.run(floor_latency(self.bootstrap, rate, duration, self.record(entities, "floor")))
            out["broker_cores"] = round((cpu_s(self.broker.proc.pid) - broker0) / (time.time() - t0), 3)
            return out
        finally:
            worker.terminate()
            worker.wait(10)

    def freshness(self, rate: float, duration: float, entities: int, tag: str = "fresh",
                  linger_ms: int = USER_LINGER_MS) -> dict[str, Any]:
        """Paced produce at ``rate``; every 20th event is the only event of a fresh entity.
        ``backlog_at_end``: events not yet applied when the producer stopped (a pipeline
        with slack has ~0: the latencies are then not queueing behind a backlog)."""
        pids = {**self.pids, "bench_producer": os.getpid()}
        cpu0, t0 = {n: cpu_s(pid) for n, pid in pids.items()}, time.time()
        sent, n = asyncio.run(paced(self.bootstrap, "events.raw", rate, duration, self.record(entities, tag),
                                    linger_ms))
        sampled = {k.decode(): t for k, t in sent.items()}
        self.total += n
        backlog = self.total - self._applied_count()
        ended = time.time()
        cores = {n: round((cpu_s(pid) - cpu0[n]) / (ended - t0), 3) for n, pid in pids.items()}
        try:
            wait(lambda: self._applied_count() >= self.total, 900, 0.05)
        except TimeoutError:
            pass  # reported as drain_s = None; the latencies of what was applied still count
        pairs = []
        for entity, sent in sampled.items():
            written = self.r.hget(redis_keys.features(SPEC, entity), redis_keys.WRITTEN_AT_FIELD)
            if written is not None:
                pairs.append((sent, (float(written) - sent) * 1000))
        return {"rate_events_per_s": rate, "missing": len(sampled) - len(pairs),
                "backlog_at_end": backlog, "cpu_cores_while_producing": cores,
                "drain_s": time.time() - ended if self._applied_count() >= self.total else None,
                "producer_linger_ms": linger_ms, **latency_summary(pairs)}


def on_fresh_stack(args: argparse.Namespace, phase: Callable[[Bench], dict[str, Any]]) -> dict[str, Any]:
    """Run a phase on its own new broker and Redis. Why: Tansu (in memory) lists a
    partition's stored batches on every fetch, so its costs grow with what earlier phases
    stored (seen: the raw relay's p99 at 0.5 s after (b); (b)'s features at 37-41 us/event
    after (a), 24-26 on a new broker)."""
    bench = Bench(args)
    try:
        asyncio.run(ensure_topics(bench.bootstrap))
        return phase(bench)
    finally:
        bench.stop()


def warm_services(bench: Bench, **env: Any) -> subprocess.Popen[bytes]:
    """Start ingestion and features and wait until 500 warm-up events are applied."""
    features = bench.start_services(**env)
    asyncio.run(produce_all(bench.bootstrap, "events.raw", bench.events(500, bench.args.entities)))
    bench.total = 500
    wait(lambda: bench._applied_count() >= 500, 120, 0.05)
    return features


def sample_rss(pid: int, stop: threading.Event, out: list[tuple[float, int]], every: float = 1.0) -> None:
    t0 = time.time()
    while not stop.wait(every):
        try:
            out.append((round(time.time() - t0, 1), rss_kb(pid)))
        except (OSError, AttributeError):
            return


