"""Concept-drift benchmark (issue #6): River's synthetic concept-drift streams through the
REAL services, with delayed labels, against a static model and River online learners.

Per stream (``loadtests/concept_streams.py``: SEA abrupt, Agrawal abrupt, SEA gradual), a
fresh embedded broker + Redis and every service of the loop (``shared.supervisor``; not the
features service: these specs have no online features) with the stream's spec
(``shared/specs/sea.toml``, ``agrawal.toml``). Each event is a POST /predict at a fixed rate
with its inputs as request-time fields; its label goes to ``labels.raw`` ``--label-delay``
events later, like a user's ground truth. Compared, event by event (prequential accuracy):
(a) static: the first model Rivulet promotes, never retrained (scored in-process afterwards);
(b) River online learners (Hoeffding Adaptive Tree, ARF) updated on every label, with the
    same label delay (in-process, event-indexed, so the machine's load does not matter);
(c) Rivulet's closed loop: the answers /predict actually returned.
Measured: accuracy before/after each change, recovery (events and labels until (c) is back
within 2 points of its pre-change level, and stays there), drift incident -> new champion
serving delay, and failed requests (all, and near every model swap). Recovery is counted
from the change; for the gradual stream from the START of the transition (strict), and also
from its centre (River's ``position``, the change point it names) and from its end, next to
the majority oracle's own recovery under each reading
(``recovery_gradual``, see ``concept_report.gradual_recovery``). Writes loadtests/reports/concept-<UTC>.json
and a PNG next to it.

    python -m loadtests.concept [--quick] [--streams sea_abrupt,agrawal_abrupt,sea_gradual]
                                [--before 6000] [--after 6000] [--rate 100] [--label-delay 200]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from loadtests import concept_metrics as cm
from loadtests.concept_plot import plot
from loadtests.concept_report import analyse, summary_lines
from loadtests.concept_streams import CASES, Case, rows
from shared import codec
from shared.embedded import free_port, start_broker, start_redis
from shared.kafka import ensure_topics
from shared.supervisor import SERVICES, Environment, Supervisor

REPORTS = Path(__file__).parent / "reports"
SECRET = "concept-bench-secret"
QUICK = {"before": 3000, "after": 3000}


async def read_topic(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Every record of ``topic`` up to its current end (no group), decoded."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(await _partitions(consumer, topic))]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        out: list[dict[str, Any]] = []
        while any([await consumer.position(tp) < end[tp] for tp in tps]):
            for recs in (await consumer.getmany(timeout_ms=500)).values():
                out.extend(codec.loads(r.value) for r in recs if r.value)
        return out
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    for _ in range(50):
        await consumer.topics()
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return parts
        await asyncio.sleep(0.2)
    return {0}


async def wait_ready(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=url, timeout=2.0) as http:
        while time.monotonic() < deadline:
            try:
                if (await http.get("/ready")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)
    raise RuntimeError(f"serving at {url} not ready within {timeout:.0f}s")


class Driver:
    """Paced /predict calls, one per event, and each label ``delay`` events later."""

    def __init__(self, url: str, bootstrap: str, data: list[tuple[dict[str, float], bool]],
                 rate: float, delay: int, concurrency: int) -> None:
        self.url, self.bootstrap, self.data = url, bootstrap, data
        self.rate, self.delay, self.concurrency = rate, delay, concurrency
        self.served: list[cm.Served | None] = [None] * len(data)
        self.ids: list[str | None] = [None] * len(data)
        self.errors: list[str] = []
        self.sent_at: list[float] = [0.0] * len(data)
        self.labels_sent = 0

    async def run(self, progress: int = 2000) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5)
        await producer.start()
        sem = asyncio.Semaphore(self.concurrency)
        # Idle connections are dropped after 2 s, before the server's keep-alive timeout
        # (uvicorn: 5 s, httpx's own default): with equal timeouts, a request sent on a
        # connection the server is closing at that instant fails (ReadError) -- a client race,
        # not a failed request of the service.
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency,
                              keepalive_expiry=2.0)
        tasks: set[asyncio.Task[None]] = set()
        try:
            async with httpx.AsyncClient(base_url=self.url, timeout=10.0, limits=limits) as http:
                t0, next_label, pending = time.monotonic(), 0, []
                for i in range(len(self.data)):
                    wait = t0 + i / self.rate - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    await sem.acquire()
                    task = asyncio.create_task(self._one(http, i, sem))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    while next_label <= i - self.delay and self.served[next_label] is not None:
                        pending += await self._label(producer, next_label)
                        next_label += 1
                    if len(pending) >= 500:
                        await asyncio.gather(*pending)
                        pending = []
                    if progress and i and i % progress == 0:
                        self._progress(i, t0)
                await asyncio.gather(*tasks)
                for j in range(next_label, len(self.data)):
                    pending += await self._label(producer, j)
                await asyncio.gather(*pending)
        finally:
            await producer.stop()

    async def _one(self, http: httpx.AsyncClient, i: int, sem: asyncio.Semaphore) -> None:
        x, _ = self.data[i]
        body = codec.dumps({"entity_id": f"e{i % 1000}", "features": x})
        sent = self.sent_at[i] = time.time()
        try:
            resp = await http.post("/predict", content=body, headers={"content-type": "application/json"})
            if resp.status_code == 200:
                ans = resp.json()
                self.ids[i] = ans["prediction_id"]
                self.served[i] = cm.Served(i, sent, time.time(), int(ans["model_version"]), bool(ans["label"]))
                return
            self.errors.append(f"#{i} HTTP {resp.status_code}: {resp.text[:200]}")
        except httpx.HTTPError as exc:
            self.errors.append(f"#{i} {exc!r}")
        finally:
            sem.release()
        self.served[i] = cm.Served(i, sent, time.time(), None, None)

    async def _label(self, producer: AIOKafkaProducer, i: int) -> list[Any]:
        pid = self.ids[i]
        if pid is None:
            return []
        self.labels_sent += 1
        label = {"prediction_id": pid, "label": self.data[i][1], "event_time": time.time()}
        return [await producer.send("labels.raw", codec.dumps(label), key=pid.encode())]

    def _progress(self, i: int, t0: float) -> None:
        done = [s for s in self.served[max(0, i - 500):i] if s is not None and s.ok]
        hits = sum(s.label == self.data[s.index][1] for s in done)
        versions = sorted({s.version for s in done})
        print(f"    event {i}: {i / (time.monotonic() - t0):.0f}/s, last-500 accuracy "
              f"{hits / max(1, len(done)):.3f}, versions {versions}, failed {len(self.errors)}", flush=True)


async def run_stream(case: Case, args: argparse.Namespace) -> dict[str, Any]:
    """One stream through a fresh broker + Redis + services; returns its report section."""
    tmp = Path(tempfile.mkdtemp(prefix=f"rivulet-concept-{case.name}-"))
    broker, redis = start_broker(log_file=tmp / "tansu.log"), start_redis(workdir=tmp)
    env = Environment(broker.url, redis.url, tmp, free_port(), [broker, redis])
    services = tuple(s for s in SERVICES if s != "features")  # no online features in these specs
    child_env = {**env.env(case.spec), "RIVULET_MODEL_SECRET": SECRET,
                 "RIVULET_PERFORMANCE_PORT": str(free_port()), "RIVULET_LOG_LEVEL": "INFO"}
    data = rows(case, args.before, args.after, args.seed)
    started, load_start = time.time(), os.getloadavg()
    try:
        await ensure_topics(broker.url)
        (tmp / "logs").mkdir()
        sup = Supervisor(child_env, services, echo=None, log_dir=tmp / "logs")
        await sup.start()
        try:
            await wait_ready(env.serving_url, 180)
            driver = Driver(env.serving_url, broker.url, data, args.rate, args.label_delay, args.concurrency)
            t_run = time.time()
            await driver.run()
            run_s = time.time() - t_run
            await asyncio.sleep(args.settle)
            alerts, models = await read_topic(broker.url, "drift.alerts"), await read_topic(broker.url, "models")
        finally:
            await sup.stop()
            restarts = {c.name: c.restarts for c in sup.children if c.restarts}
    finally:
        env.stop()
    served = [s for s in driver.served if s is not None]
    section = analyse(case, data, served, alerts, models, args, artifact_loader(SECRET))
    section.update(run_s=round(run_s, 1), achieved_rate=round(len(data) / run_s, 1), startup_s=round(t_run - started, 1),
                   labels_sent=driver.labels_sent, errors_sample=driver.errors[:5], service_restarts=restarts,
                   logs=str(tmp / "logs"),
                   load_avg_1_5_15={"start": [round(x, 2) for x in load_start],
                                    "end": [round(x, 2) for x in os.getloadavg()]})
    return section


def artifact_loader(secret: str) -> Any:
    from shared.modeling import load_verified

    def load(event: dict[str, Any]) -> Any:
        return load_verified(base64.b64decode(event["artifact_b64"]), event.get("signature"), secret)
    return load


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    ap.add_argument("--quick", action="store_true", help=f"short run: {QUICK['before']} + {QUICK['after']} events per stream")
    ap.add_argument("--before", type=int, default=6000, help="events before the change (gradual: its centre)")
    ap.add_argument("--after", type=int, default=6000, help="events after the change")
    ap.add_argument("--rate", type=float, default=100.0, help="events (POST /predict) per second")
    ap.add_argument("--label-delay", type=int, default=200, help="a label is sent this many events after its event")
    ap.add_argument("--concurrency", type=int, default=16, help="/predict calls in flight at most")
    ap.add_argument("--window", type=int, default=500, help="rolling accuracy window (events)")
    ap.add_argument("--tolerance", type=float, default=0.02, help="recovered = within this of the pre-change accuracy")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--settle", type=float, default=3.0, help="seconds to wait after the last event before reading topics")
    ap.add_argument("--no-arf", action="store_true", help="skip the ARF baseline (HAT only)")
    args = ap.parse_args(argv)
    if args.quick:
        args.before, args.after = QUICK["before"], QUICK["after"]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    names = [n.strip() for n in args.streams.split(",") if n.strip()]
    report: dict[str, Any] = {
        "benchmark": "concept", "started_at": datetime.now(UTC).isoformat(),
        "machine_note": f"{os.cpu_count()} cores, shared with other sessions (noisy); services and "
                        "load generator on the same machine; load average (1/5/15 min) at start "
                        f"{' / '.join(f'{x:.1f}' for x in os.getloadavg())}",
        "config": {k: v for k, v in vars(args).items()}, "streams": {}}
    for name in names:
        print(f"== {name}: {CASES[name].description} ({args.before} + {args.after} events at {args.rate:g}/s)", flush=True)
        report["streams"][name] = asyncio.run(run_stream(CASES[name], args))
    REPORTS.mkdir(exist_ok=True)
    stem = REPORTS / f"concept-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    png = plot(report, stem.with_suffix(".png"))
    report["plot"] = str(png) if png else None
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    print("\n".join(summary_lines(report)))
    print(f"report: {stem.with_suffix('.json')}\nplot: {png}")


if __name__ == "__main__":
    main()
