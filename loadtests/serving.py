"""Serving benchmark: Rivulet's /predict against a bare FastAPI baseline, same run, same machine.

Starts an embedded broker + Redis, writes online features for ``--entities`` cards, trains a
River model and promotes it to Rivulet (signed, on ``models``) and gives it to the baseline
(``loadtests/serving_baseline.py``: HGETALL + River predict + aiokafka send). Both run as real
uvicorn processes. A load generator in a separate process (raw keep-alive HTTP/1.1 on uvloop,
lighter than locust) measures, in order:

1. max throughput (closed loop, ``--connections``) of (a) the baseline and (b) Rivulet;
2. ``--p99-rounds`` interleaved rounds (baseline then Rivulet, then Rivulet then baseline, ...)
   of p50/p99 at a fixed open-loop rate of 50% of (a)'s max (latency from the scheduled send
   time, so queueing counts: no coordinated omission), each round followed by
3. /predict/batch of ``--batch`` entities: predictions per second vs single /predict calls.
The ratios are medians over rounds, with every round's numbers in the report: on a shared
machine one round's p99 is noise-dominated, and the spread shows how much.

Server CPU seconds come from /proc/<pid>/stat (utime + stime) around each phase, so every
throughput is also given per server CPU-second. Writes loadtests/reports/serving-<UTC>.json.

    python -m loadtests.serving [--duration 8] [--connections 32] [--rounds 1] [--p99-rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from shared import codec, modeling, redis_keys
from shared.contracts import ModelEvent
from shared.embedded import ServerProcess, free_port, start_broker, start_redis
from shared.kafka import ensure_topics
from shared.spec import load_spec
from shared.topics import Topic

ROOT = Path(__file__).resolve().parents[1]
SECRET = "bench-secret"
SPEC = load_spec()
CATEGORIES, COUNTRIES, CHANNELS = ("grocery", "travel", "electronics"), ("US", "FR", "BR"), ("online", "pos", "atm")


# ----------------------------------------------------------------------------- load generator
async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: bytes) -> int:
    writer.write(req)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return int(head[9:12])


async def _closed_loop(port: int, reqs: list[bytes], conns: int, duration: float) -> dict[str, Any]:
    lat: list[float] = []
    errors = 0
    end = time.perf_counter() + duration

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            errors += await _request(reader, writer, random.choice(reqs)) != 200
            lat.append(time.perf_counter() - t0)
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conns)))
    return _summary(lat, errors, time.perf_counter() - started)


async def _open_loop(port: int, reqs: list[bytes], conns: int, duration: float, rate: float) -> dict[str, Any]:
    start = time.perf_counter() + 0.2
    schedule = iter([start + i / rate for i in range(int(rate * duration))])
    lat: list[float] = []
    errors = 0

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for due in schedule:  # shared iterator: each scheduled send is taken once
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            errors += await _request(reader, writer, random.choice(reqs)) != 200
            lat.append(time.perf_counter() - due)  # from when it SHOULD have been sent
        writer.close()

    await asyncio.gather(*(worker() for _ in range(conns)))
    return _summary(lat, errors, time.perf_counter() - start) | {"target_rate": rate}


def _summary(lat: list[float], errors: int, elapsed: float) -> dict[str, Any]:
    lat.sort()
    pct = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 3) if lat else None  # noqa: E731
    return {"requests": len(lat), "errors": errors, "seconds": round(elapsed, 3),
            "rps": round(len(lat) / elapsed, 1), "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": pct(1.0)}


def loadgen_main(args: dict[str, Any]) -> None:
    """Entry of the generator process: reads its job as JSON, prints the result as JSON."""
    import uvloop

    reqs = [r.encode("latin-1") for r in args["requests"]]
    if args["mode"] == "closed":
        coro = _closed_loop(args["port"], reqs, args["conns"], args["duration"])
    else:
        coro = _open_loop(args["port"], reqs, args["conns"], args["duration"], args["rate"])
    print(json.dumps(uvloop.run(coro)))


# ----------------------------------------------------------------------------- orchestration
def _http_request(path: str, body: bytes) -> str:
    return (f"POST {path} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode().decode("latin-1") + body.decode("latin-1")


def _item(entities: int, rng: random.Random) -> dict[str, Any]:
    return {"entity_id": f"card-{rng.randrange(entities)}",
            "features": {"amount": round(rng.lognormvariate(3.5, 1.0), 2), "merchant_category": rng.choice(CATEGORIES),
                         "country": rng.choice(COUNTRIES), "channel": rng.choice(CHANNELS)}}


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _loop_counters(port: int) -> dict[str, float]:
    """Rivulet's own event-loop lag and GC pause counters (cumulative), from /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = {"rivulet_serving_event_loop_lag_seconds", "rivulet_serving_gc_pause_seconds",
              "rivulet_serving_feature_fetch_latency_seconds", "rivulet_serving_degraded"}
    out: dict[str, float] = {}
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        if family.name in wanted:
            for s in family.samples:
                if s.name.endswith(("_count", "_sum", "_total")) or s.labels.get("le") in ("0.01", "0.025", "0.05"):
                    out[s.name + str(sorted(s.labels.items()))] = s.value
    return out


def _loop_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    d = {k: after[k] - before.get(k, 0.0) for k in after}
    lag, fetch = "rivulet_serving_event_loop_lag_seconds", "rivulet_serving_feature_fetch_latency_seconds"
    ticks = d.get(lag + "_count[]", 0.0)
    gc_sum = {g: round(d.get(f"rivulet_serving_gc_pause_seconds_sum[('generation', '{g}')]", 0.0) * 1000, 1)
              for g in "012"}
    gc_n = {g: int(d.get(f"rivulet_serving_gc_pause_seconds_count[('generation', '{g}')]", 0.0)) for g in "012"}
    return {"ticks": int(ticks),
            "ticks_late_over_10ms": int(ticks - d.get(lag + "_bucket[('le', '0.01')]", 0.0)),
            "ticks_late_over_50ms": int(ticks - d.get(lag + "_bucket[('le', '0.05')]", 0.0)),
            "lag_sum_ms": round(d.get(lag + "_sum[]", 0.0) * 1000, 1),
            "gc_collections": gc_n, "gc_pause_sum_ms": gc_sum,
            "feature_fetches_over_25ms": int(d.get(f"{fetch}_count[]", 0.0) - d.get(f"{fetch}_bucket[('le', '0.025')]", 0.0)),
            "degraded_features_unavailable": int(d.get("rivulet_serving_degraded_total[('reason', 'features_unavailable')]", 0.0))}


def _phase(proc: subprocess.Popen[bytes], job: dict[str, Any], loop_port: int | None = None) -> dict[str, Any]:
    loop0 = _loop_counters(loop_port) if loop_port else None
    cpu0 = _cpu_seconds(proc.pid)
    out = subprocess.run([sys.executable, "-m", "loadtests.serving", "--loadgen"], input=json.dumps(job).encode(),
                         cwd=ROOT, capture_output=True, check=True, timeout=job["duration"] + 60)
    result = json.loads(out.stdout)
    cpu = _cpu_seconds(proc.pid) - cpu0
    result["server_cpu_s"] = round(cpu, 3)
    result["rps_per_cpu_s"] = round(result["requests"] / cpu, 1) if cpu > 0 else None
    if loop0 is not None and loop_port:
        result["event_loop"] = _loop_delta(loop0, _loop_counters(loop_port))
    return result


def _prepare(redis_url: str, bootstrap: str, entities: int, tmp: Path) -> Path:
    """Features for every entity, a trained model promoted to Rivulet, its pickle for the baseline."""
    import redis

    rng = random.Random(7)
    client = redis.Redis.from_url(redis_url)
    pipe = client.pipeline(transaction=False)
    now = time.time()
    for i in range(entities):
        values = {f.name: str(round(rng.uniform(0, 50), 2)) for f in SPEC.features}
        values |= {redis_keys.EVENT_TIME_FIELD: str(now - 30), redis_keys.WRITTEN_AT_FIELD: str(now)}
        pipe.hset(redis_keys.features(SPEC, f"card-{i}"), mapping=values)
    pipe.execute()
    client.close()
    rows = [(_item(entities, rng)["features"] | {"txn_count_5m": float(rng.randrange(10))}, rng.random() < 0.3)
            for _ in range(2000)]
    model = modeling.train(SPEC, rows)
    artifact = modeling.serialize(model)
    event = ModelEvent(event="promoted", version=1, created_at=now, threshold=0.5, artifact_b64=base64.b64encode(
        artifact).decode(), artifact_sha256=modeling.sha256(artifact), signature=modeling.sign(artifact, SECRET))

    async def publish() -> None:
        from aiokafka import AIOKafkaProducer

        await ensure_topics(bootstrap)
        await ensure_topics(bootstrap, [Topic("bench.baseline", None, "-", 4)])
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=8 << 20)
        await producer.start()
        await (await producer.send("models", codec.dumps(event.model_dump(mode="json")), key=b"1"))
        await producer.stop()

    asyncio.run(publish())
    path = tmp / "model.pkl"
    path.write_bytes(artifact)
    return path


def _wait(url: str, ok: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            resp = httpx.get(url, timeout=2)
            if ok(resp):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready")


def _start_servers(broker: ServerProcess, redis: ServerProcess, model: Path, tmp: Path) -> dict[str, Any]:
    base_port, riv_port = free_port(), free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    baseline = subprocess.Popen([sys.executable, "-m", "loadtests.serving_baseline"], cwd=ROOT, env=env | {
        "BASELINE_PORT": str(base_port), "BASELINE_REDIS_URL": redis.url, "BASELINE_KAFKA": broker.url,
        "BASELINE_MODEL": str(model), "BASELINE_KEY_PREFIX": redis_keys.features(SPEC, "")},
        stdout=open(tmp / "baseline.log", "wb"), stderr=subprocess.STDOUT)
    rivulet = subprocess.Popen([sys.executable, "-m", "services.serving"], cwd=ROOT, env=env | {
        "RIVULET_SERVING_PORT": str(riv_port), "RIVULET_REDIS_URL": redis.url, "RIVULET_KAFKA_BOOTSTRAP": broker.url,
        "RIVULET_MODEL_SECRET": SECRET, "RIVULET_DATA_DIR": str(tmp), "RIVULET_LOG_LEVEL": "WARNING"},
        stdout=open(tmp / "rivulet.log", "wb"), stderr=subprocess.STDOUT)
    _wait(f"http://127.0.0.1:{riv_port}/models", lambda r: r.json()["champion"]["version"] == 1, "rivulet v1")
    _wait(f"http://127.0.0.1:{base_port}/docs", lambda r: r.status_code == 200, "baseline")
    return {"baseline": (baseline, base_port), "rivulet": (rivulet, riv_port)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="rivulet-bench-serving-"))
    broker, redis = start_broker(log_file=tmp / "tansu.log"), start_redis(workdir=tmp)
    servers: dict[str, Any] = {}
    try:
        model = _prepare(redis.url, broker.url, args.entities, tmp)
        servers = _start_servers(broker, redis, model, tmp)
        rng = random.Random(11)
        single = [_http_request("/predict", codec.dumps(_item(args.entities, rng))) for _ in range(500)]
        batch = [_http_request("/predict/batch", codec.dumps({"items": [_item(args.entities, rng)
                                                                       for _ in range(args.batch)]}))
                 for _ in range(50)]
        job = {"duration": args.duration, "conns": args.connections, "requests": single, "mode": "closed"}
        for name in ("baseline", "rivulet"):  # warm-up (imports, JIT-less caches, connections)
            proc, port = servers[name]
            _phase(proc, job | {"port": port, "duration": 2})
        report: dict[str, Any] = {"max": {"baseline": [], "rivulet": []}, "half_load": [], "batch": []}
        for _ in range(args.rounds):
            for name in ("baseline", "rivulet"):
                proc, port = servers[name]
                report["max"][name].append(_phase(proc, job | {"port": port},
                                                  loop_port=port if name == "rivulet" else None))
        base_max = max(r["rps"] for r in report["max"]["baseline"])
        rate = round(0.5 * base_max, 1)
        half = job | {"mode": "open", "rate": rate, "conns": max(64, args.connections)}
        batch_job = job | {"requests": batch, "conns": 4}
        for i in range(args.p99_rounds):  # interleaved, order alternating: drift and noise hit both
            order = ("baseline", "rivulet") if i % 2 == 0 else ("rivulet", "baseline")
            pair = {name: _phase(servers[name][0], half | {"port": servers[name][1]},
                                 loop_port=servers[name][1] if name == "rivulet" else None) for name in order}
            report["half_load"].append({"order": list(order), **pair, "p99_ratio": round(
                pair["rivulet"]["p99_ms"] / pair["baseline"]["p99_ms"], 3)})
            proc, port = servers["rivulet"]
            result = _phase(proc, batch_job | {"port": port})
            report["batch"].append(result | {"predictions_per_s": round(result["rps"] * args.batch, 1)})
        return _conclude(report, args)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(15)
        broker.stop()
        redis.stop()


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def _conclude(report: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    best = {name: max(rounds, key=lambda r: r["rps"]) for name, rounds in report["max"].items()}
    batch = report["batch"]
    ratios = {
        "throughput_rivulet_over_baseline": round(best["rivulet"]["rps"] / best["baseline"]["rps"], 3),
        "throughput_per_cpu_rivulet_over_baseline": round(
            best["rivulet"]["rps_per_cpu_s"] / best["baseline"]["rps_per_cpu_s"], 3),
        "p99_at_half_load_rivulet_over_baseline_median": _median([r["p99_ratio"] for r in report["half_load"]]),
        "p99_at_half_load_per_round": [r["p99_ratio"] for r in report["half_load"]],
        "batch_predictions_over_single_median": _median(
            [b["predictions_per_s"] / best["rivulet"]["rps"] for b in batch]),
        "batch_predictions_over_single_per_round": [round(b["predictions_per_s"] / best["rivulet"]["rps"], 2)
                                                    for b in batch],
        "batch_predictions_per_cpu_over_single_median": _median(
            [b["rps_per_cpu_s"] * args.batch / best["rivulet"]["rps_per_cpu_s"] for b in batch]),
    }
    targets = {"throughput >= 0.85x": ratios["throughput_rivulet_over_baseline"] >= 0.85,
               "p99 <= 1.3x at 50% load (median of rounds)":
                   ratios["p99_at_half_load_rivulet_over_baseline_median"] <= 1.3,
               "batch >= 10x per prediction (median of rounds)": ratios["batch_predictions_over_single_median"] >= 10}
    return {"benchmark": "serving", "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "params": vars(args), "cpus": os.cpu_count(), "load_average": os.getloadavg(),
            "note": "2-core machine shared with other jobs: compare ratios, not absolute numbers",
            **report, "ratios": ratios, "targets_met": targets}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loadgen", action="store_true", help=argparse.SUPPRESS)  # job as JSON on stdin
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measured phase")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections (closed loop)")
    parser.add_argument("--rounds", type=int, default=1, help="max-throughput rounds (best kept)")
    parser.add_argument("--p99-rounds", type=int, default=3,
                        help="interleaved rounds of p99 at 50%% load (baseline/rivulet) + batch; median reported")
    parser.add_argument("--entities", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=100, help="entities per /predict/batch call")
    args = parser.parse_args()
    if args.loadgen:
        loadgen_main(json.loads(sys.stdin.read()))
        return
    result = run(args)
    out = ROOT / "loadtests" / "reports" / f"serving-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    for name in ("baseline", "rivulet"):
        m = max(result["max"][name], key=lambda r: r["rps"])
        print(f"{name:9s} max {m['rps']:8.1f} req/s ({m['rps_per_cpu_s']} per server CPU-s, p99 {m['p99_ms']} ms)")
    for i, r in enumerate(result["half_load"]):
        b, v = r["baseline"], r["rivulet"]
        print(f"round {i + 1} at {b['target_rate']} req/s ({' then '.join(r['order'])}): p99 baseline {b['p99_ms']} ms, "
              f"rivulet {v['p99_ms']} ms -> {r['p99_ratio']}x (p50 {b['p50_ms']} / {v['p50_ms']} ms, "
              f"errors {b['errors']} / {v['errors']})")
        if "event_loop" in v:
            print(f"         rivulet event loop: {v['event_loop']}")
        bt = result["batch"][i]
        print(f"         batch {bt['predictions_per_s']:8.1f} predictions/s ({bt['rps']} calls/s of {args.batch}, "
              f"{round(bt['rps_per_cpu_s'] * args.batch, 1)} per server CPU-s, p99 {bt['p99_ms']} ms)")
    print("ratios:", result["ratios"])
    print("targets met:", result["targets_met"])
    print(f"report: {out}")


if __name__ == "__main__":
    main()
