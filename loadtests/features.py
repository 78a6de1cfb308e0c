"""Ingestion + features benchmark against a raw aiokafka loop, same run, same machine.

Each phase starts its own embedded broker + Redis (``on_fresh_stack``) and measures, in order:

(a) baseline: a raw aiokafka consume -> orjson parse -> produce loop (its own process,
    ``--baseline-worker``) on the same kind of events (4x as many: see ``--baseline-events``),
    all produced up front; its progress is the
    input it committed (it commits only once its outputs are acked), polled every 20 ms;
(b) Rivulet: ingestion and features as real processes, the same way; progress is every
    ``events.valid`` offset applied in Redis (the applied-offsets hash), polled every 20 ms.
    Both report a sustained rate (between 20% and 80% of the run's progress: the target
    ratio) and a whole-run rate (first produce to last output: with pipeline fill and drain);
(c) freshness at 50% of (b)'s sustained rate: produce time -> ``_written_at`` of the
    entity's Redis hash, p50/p99 (and per 5 s of the run), over sampled events whose entity
    has no other event (so the hash was written for that event); and, at the same rate and
    duration, the broker's floor: the same paced records through a raw aiokafka two-hop relay
    (``loadtests/broker_floor.py``). Each on its own new broker, Redis and services
    (see ``on_fresh_stack``); the paced producer lingers 5 ms (Kafka's default). The same
    again at a light ``--light-rate`` (default 1,000 events/s);
(d) the features process' peak RSS (VmHWM, /proc) and its RSS sampled once a second;
    with ``--rss-minutes M``, then, on a fresh broker and Redis (see ``RSS_SERVICE_ENV``),
    M minutes of paced load at ``--rss-load`` x (b) (default: the (c) rate) over
    ``--rss-entities`` distinct entities (default 1M: most are new, so the window cache
    stays full and Redis grows), RSS sampled every 5 s: "flat" = the last minute's median
    within 10% of the second minute's.

Also reports the CPU time per event of each process (utime + stime from /proc), the broker
and Redis included: on a shared, loaded machine that is steadier than the rates, which
depend on who else runs, and it shows what bounds (b) on a 2-core machine.

Writes loadtests/reports/features-<UTC>.json and prints a summary.

    python -m loadtests.features [--events 50000] [--entities 2000] [--duration 20] [--rss-minutes 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
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

import orjson
import redis as redis_sync
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from loadtests.broker_floor import (
    RELAY_IN,
    RELAY_OUT,
    USER_LINGER_MS,
    floor_latency,
    latency_summary,
    paced,
    relay,
    relay_worker,
)
from loadtests.features_summary import print_summary
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


# ------------------------------------------------------------------ baseline worker (a)
async def baseline_worker(bootstrap: str) -> None:
    """The simplest at-least-once loop: getmany -> orjson.loads + dumps -> send -> await acks -> commit."""
    await relay(bootstrap, BENCH_IN.name, BENCH_OUT.name, "bench-baseline",
                transform=lambda value: orjson.dumps(orjson.loads(value)))


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


def sample_rss(pid: int, stop: threading.Event, out: list[tuple[float, int]], every: float = 1.0) -> None:
    t0 = time.time()
    while not stop.wait(every):
        try:
            out.append((round(time.time() - t0, 1), rss_kb(pid)))
        except (OSError, AttributeError):
            return


# The long RSS run measures the features process' memory, not latency: on a fresh broker and
# Redis, with fetches held up to 200 ms and a producer linger of 100 ms, so the broker stores
# ~40x fewer batches (Tansu's fetch cost grows with them: at the (c) settings a 10-minute run at
# ~1,300-1,500 events/s stalled the pipeline after ~100k events, broker at 0.9 core).
RSS_SERVICE_ENV = {"RIVULET_INGESTION_FETCH_MAX_WAIT_MS": 200, "RIVULET_FETCH_MAX_WAIT_MS": 200}
RSS_LINGER_MS = 100


def rss_run(args: argparse.Namespace, rate: float) -> dict[str, Any]:
    """``--rss-minutes`` of paced load over ``--rss-entities``; is the features RSS flat?"""
    def phase(bench: Bench) -> dict[str, Any]:
        features = warm_services(bench, **RSS_SERVICE_ENV)
        out = _sampled_rss_run(bench, features.pid, rate, args)
        out["peak_kb"] = rss_kb(features.pid, "VmHWM")
        out["applied_events"] = bench._applied_count() - 500
        out["service_env"] = RSS_SERVICE_ENV
        out["producer_linger_ms"] = RSS_LINGER_MS
        return out

    return on_fresh_stack(args, phase)


def _sampled_rss_run(bench: Bench, pid: int, rate: float, args: argparse.Namespace) -> dict[str, Any]:
    samples: list[tuple[float, int]] = []
    stop = threading.Event()
    threading.Thread(target=sample_rss, args=(pid, stop, samples, 5.0), daemon=True).start()
    fresh = bench.freshness(rate, args.rss_minutes * 60, args.rss_entities, tag="rss", linger_ms=RSS_LINGER_MS)
    stop.set()
    second = sorted(kb for t, kb in samples if 60 <= t < 120) or [samples[0][1]]
    last = sorted(kb for t, kb in samples if t >= samples[-1][0] - 60)
    median = lambda xs: xs[len(xs) // 2]
    growth = median(last) / median(second) - 1
    return {"minutes": args.rss_minutes, "entities": args.rss_entities, "rate_events_per_s": rate,
            "events": fresh["samples"] * 20, "freshness": fresh, "rss_kb_second_minute_median": median(second),
            "rss_kb_last_minute_median": median(last), "growth": growth, "flat": abs(growth) <= 0.10,
            "redis_keys": bench.r.dbsize(), "samples_s_kb": samples}


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


def fresh_run(bench: Bench, rate: float) -> dict[str, Any]:
    """(c) on new, warmed services, paced at ``rate``; with the features process' peak RSS."""
    features = warm_services(bench)
    out = bench.freshness(rate, bench.args.duration, bench.args.entities)
    out["features_peak_rss_kb"] = rss_kb(features.pid, "VmHWM")
    return out


def system_run(bench: Bench) -> dict[str, Any]:
    """(b) on new services, the features process' RSS sampled once a second."""
    features = bench.start_services()
    rss: list[tuple[float, int]] = []
    stop = threading.Event()
    threading.Thread(target=sample_rss, args=(features.pid, stop, rss), daemon=True).start()
    system = bench.system(bench.pids)
    stop.set()
    return {**system, "features_peak_rss_kb": rss_kb(features.pid, "VmHWM"), "features_rss_s_kb": rss}


def run(args: argparse.Namespace) -> dict[str, Any]:
    baseline = on_fresh_stack(args, Bench.baseline)
    system = on_fresh_stack(args, system_run)
    peak, rss = system.pop("features_peak_rss_kb"), system.pop("features_rss_s_kb")
    rate = system["steady_events_per_s"] * args.load
    floor = on_fresh_stack(args, lambda b: b.floor(rate, args.duration, args.entities))
    fresh = on_fresh_stack(args, lambda b: fresh_run(b, rate))
    light = None
    if args.light_rate:
        light = {"freshness": on_fresh_stack(args, lambda b: fresh_run(b, args.light_rate)),
                 "broker_floor": on_fresh_stack(args, lambda b: b.floor(args.light_rate, args.duration, args.entities))}
    rss_rate = system["steady_events_per_s"] * (args.rss_load or args.load)
    long_run = rss_run(args, rss_rate) if args.rss_minutes else None
    whole = system["events_per_s"] / baseline["events_per_s"]
    sustained = system["steady_events_per_s"] / baseline["steady_events_per_s"]
    cpu = system["cpu_us_per_event"]
    return {
        "benchmark": "features", "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0], "note": "shared machine, noisy"},
        "params": vars(args), "a_baseline": baseline, "b_system": system, "c_freshness": fresh, "c_broker_floor": floor,
        "c_light_load": light,
        "d_features_rss": {"peak_kb": max(peak, fresh["features_peak_rss_kb"]), "peak_kb_b": peak,
                           "peak_kb_c": fresh["features_peak_rss_kb"], "samples_s_kb_b": rss, "long_run": long_run},
        # The target ratio is on sustained rates (both between 20% and 80% of their run's
        # progress, the same way); whole-run rates include each pipeline's fill and drain.
        "targets": {"b_over_a_sustained": sustained, "b_over_a_whole_run": whole, "b_over_a_target": 0.5,
                    "b_over_a_met": sustained >= 0.5,
                    "cpu_per_event_system_over_baseline": (cpu["ingestion"] + cpu["features"])
                    / baseline["cpu_us_per_event"],
                    "freshness_p99_ms": fresh["p99_ms"], "freshness_p99_target_ms": 50,
                    "freshness_met": fresh["p99_ms"] <= 50,
                    "broker_floor_p99_ms": floor["p99_ms"], "broker_floor_within_target": floor["p99_ms"] <= 50,
                    "rss_flat": None if long_run is None else long_run["flat"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50000, help="events for the throughput phases (a), (b)")
    parser.add_argument("--baseline-events", type=int, default=0,
                        help="events for (a) (default 4x --events: the baseline keeps no state, so its rate does"
                             " not depend on the run's length, and a ~1 s run is too short to time its 20-80%% span)")
    parser.add_argument("--entities", type=int, default=2000)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of paced load for (c)")
    parser.add_argument("--rss-minutes", type=float, default=0.0, help="(d) minutes of paced load for RSS over time")
    parser.add_argument("--rss-entities", type=int, default=1_000_000, help="distinct entities of the RSS run")
    parser.add_argument("--rss-load", type=float, default=0.0, help="RSS run rate as a fraction of (b) (default: --load)")
    parser.add_argument("--load", type=float, default=0.5, help="(c) rate as a fraction of (b)")
    parser.add_argument("--light-rate", type=float, default=1000.0,
                        help="(c) also at this many events/s, Rivulet and the broker floor (0: skip)")
    parser.add_argument("--baseline-worker", metavar="BOOTSTRAP", help=argparse.SUPPRESS)
    parser.add_argument("--relay-worker", metavar="BOOTSTRAP", help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()
    if args.baseline_worker:
        asyncio.run(baseline_worker(args.baseline_worker))
        return
    if args.relay_worker:
        asyncio.run(relay_worker(args.relay_worker))
        return
    report = run(args)
    out = ROOT / "loadtests" / "reports" / f"features-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print_summary(report, out)


if __name__ == "__main__":
    main()
