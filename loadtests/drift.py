"""Drift benchmark: false alarms, detection delay, CPU and throughput (issue #5).

Statistics (in-process, the pure monitor + incident tracker the service runs):
* false alarms: incidents opened per 100,000 stationary predictions (ten N(0,1) inputs
  and a score), several seeds; the same-run baseline is the common naive setup:
  tumbling windows, each test at an uncorrected ~0.05 (counted per alarmed window);
* detection delay: predictions from the start of a shift until an incident opens, for
  abrupt mean shifts of 0.25, 0.5 and 1 sigma in one of the ten inputs, and for a gradual
  drift (linear ramp to 1 sigma over 5,000 predictions); median and p90 over seeds.
* autocorrelated stationary streams: one input AR(1) (phi 0.95, like a slowly moving
  per-entity count), the rest iid: incidents per 100,000 predictions, and what the
  iid-only KS (the service before the effective-size correction) would have flagged.
Service (real process, real broker): ``python -m services.drift`` on the shipped fraud spec
(14 inputs: 11 numeric, 3 categorical) consumes a backlog of predictions from
``predictions``; CPU seconds per 1,000 predictions and predictions/s, against a bare
aiokafka consumer + JSON decode loop on the same backlog (the baseline). Rounds repeat it.

    python -m loadtests.drift [--stationary-runs 10] [--seeds 30] [--service-n 150000] [--rounds 3] [--service-only]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from services.drift.incidents import Tracker, observe
from services.drift.monitor import DriftMonitor
from shared.contracts import ModelEvent, PredictionRecord
from shared.profile import build_profile
from shared.spec import UseCaseSpec

FEATURES = [f"f{i}" for i in range(10)]
SHIFTED = "f3"
REPORTS = Path(__file__).parent / "reports"


def bench_spec(**drift: Any) -> UseCaseSpec:
    """Ten numeric inputs, default [drift] options unless overridden."""
    return UseCaseSpec.model_validate({
        "name": "drift_bench", "event": {"fields": {f: {"type": "float"} for f in FEATURES}},
        "features": [], "model": {"numeric": FEATURES}, "drift": drift})


def score(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(0.5 * x[:, 0] + 0.3 * x[:, 1])))


def profile_event(rng: np.random.Generator, spec: UseCaseSpec, version: int = 1, phi: float = 0.0) -> ModelEvent:
    """A promoted event whose profile comes from 20,000 'training' rows (a stretch of the stream)."""
    train = stream(rng, 20_000, phi=phi)
    profile = build_profile([dict(zip(FEATURES, r.tolist())) for r in train], score(train).tolist(), spec)
    return ModelEvent(event="promoted", version=version, created_at=0.0, reference_profile=profile,
                      metrics={"accuracy": 0.9})


def stream(rng: np.random.Generator, n: int, shift_at: int | None = None, size: float = 0.0,
           ramp: int = 0, phi: float = 0.0) -> np.ndarray:
    """n rows of N(0,1) inputs; from ``shift_at`` the SHIFTED input moves by ``size`` sigma
    (abruptly, or linearly over ``ramp`` predictions). ``phi``: f9 is AR(1) (unit variance)."""
    x = rng.normal(0.0, 1.0, (n, len(FEATURES)))
    if phi:
        e = x[:, -1] * math.sqrt(1 - phi * phi)
        for t in range(1, n):
            e[t] += phi * e[t - 1]
        x[:, -1] = e
    if shift_at is not None:
        k = np.arange(n - shift_at, dtype=float)
        x[shift_at:, FEATURES.index(SHIFTED)] += size * (np.minimum(1.0, (k + 1) / ramp) if ramp else 1.0)
    return x


def record(i: int, row: np.ndarray, s: float, version: int = 1) -> PredictionRecord:
    """Unvalidated construction (the service validates; this measures the statistics)."""
    return PredictionRecord.model_construct(
        prediction_id=f"p{i}", entity_id="e", model_version=version, role="champion",
        features=dict(zip(FEATURES, row.tolist())), score=s, label=s >= 0.5, threshold=0.5,
        served_at=float(i), degraded=())


def run(spec: UseCaseSpec, seed: int, x: np.ndarray, stop_at_first: bool = False,
        on_window: Callable[[int, list], None] | None = None, phi: float = 0.0) -> list[tuple[int, str, str | None]]:
    """Feed a stream through monitor + tracker; (index, status, top feature) per alert."""
    rng = np.random.default_rng(seed)
    monitor, tracker = DriftMonitor(spec), Tracker()
    monitor.apply_model_event(profile_event(rng, spec, phi=phi))
    scores, alerts = score(x), []
    for i in range(len(x)):
        ev = monitor.add(record(i, x[i], float(scores[i])))
        if ev is None:
            continue
        if on_window is not None:
            on_window(i, ev.findings)
        for a in observe(tracker, ev, spec, float(i), lambda i=i: f"inc-{seed}-{i}"):
            alerts.append((i, a.status, a.feature))
            if stop_at_first and a.status == "opened":
                return alerts
    return alerts


def first_detection(spec: UseCaseSpec, seed: int, size: float, ramp: int = 0, before: int = 2_500,
                    after: int = 10_000) -> tuple[int | None, str | None]:
    """Delay (predictions after the shift starts) of the first incident, and its top feature."""
    x = stream(np.random.default_rng(10_000 + seed), before + after, before, size, ramp)
    for i, status, feature in run(spec, seed, x, stop_at_first=True):
        if status == "opened":
            return (i - before, feature) if i >= before else (-1, feature)
    return None, None


def _pct(values: list[int], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def statistics(stationary_runs: int, seeds: int, n_stationary: int = 100_000) -> dict[str, Any]:
    spec, naive = bench_spec(), bench_spec(step=500, alpha=1.0, false_alarms_per_100k=250.0)
    out: dict[str, Any] = {"spec": spec.drift.model_dump(), "stationary_predictions": stationary_runs * n_stationary}
    opened = naive_windows = 0
    started = time.process_time()
    for seed in range(stationary_runs):
        x = stream(np.random.default_rng(seed), n_stationary)
        opened += sum(1 for _, st, _ in run(spec, seed, x) if st == "opened")
        hits: list[int] = []
        run(naive, seed, x, on_window=lambda i, f, hits=hits: hits.append(1) if f else None)
        naive_windows += len(hits)
    cpu = time.process_time() - started
    per = 100_000 / (stationary_runs * n_stationary)
    out["false_alarms_per_100k"] = opened * per
    out["naive_baseline_false_alarms_per_100k"] = naive_windows * per
    out["naive_per_test_alpha"] = 1.0 / (2 * len(FEATURES) + 2)
    out["in_process_cpu_ms_per_1000"] = 1000 * cpu / (2 * stationary_runs * n_stationary) * 1000
    out["autocorrelated"] = autocorrelated(stationary_runs, n_stationary)
    cases = {"abrupt_0.25sigma": (0.25, 0), "abrupt_0.5sigma": (0.5, 0), "abrupt_1sigma": (1.0, 0),
             "gradual_to_1sigma_over_5000": (1.0, 5_000)}
    for name, (size, ramp) in cases.items():
        results = [first_detection(spec, s, size, ramp) for s in range(seeds)]
        delays = [d for d, _ in results if d is not None and d >= 0]
        out[name] = {"median_delay": _pct(delays, 50), "p90_delay": _pct(delays, 90),
                     "detected": len(delays), "runs": seeds,
                     "false_before_shift": sum(1 for d, _ in results if d == -1),
                     "top_feature_is_shifted": sum(1 for d, f in results if d is not None and d >= 0 and f == SHIFTED)}
    return out


def autocorrelated(runs: int, n: int, phi: float = 0.95) -> dict[str, Any]:
    """Stationary streams whose f9 is AR(1): incidents now, and windows where the plain
    iid KS p-value of f9 would have been below the per-test threshold (the old service)."""
    from services.drift import handlers
    from services.drift import stats as st
    spec = bench_spec()
    opened = iid_hits = windows = 0
    for seed in range(runs):
        x = stream(np.random.default_rng(500 + seed), n, phi=phi)
        opened += sum(1 for _, status, _ in run(spec, seed, x, phi=phi) if status == "opened")
        ref = np.sort(np.asarray(build_profile([{"f9": v} for v in stream(np.random.default_rng(seed), 20_000, phi=phi)[:, -1]],
                                               [0.5] * 20_000, spec)["numeric"]["f9"]))
        threshold = st.per_test_alpha(handlers.family_alpha(spec), 2 * len(FEATURES) + 2)
        for end in range(spec.drift.window, n + 1, spec.drift.step):
            windows += 1
            iid_hits += st.ks_test(x[end - spec.drift.window:end, -1], ref).p_value < threshold
    per = 100_000 / (runs * n)
    return {"phi": phi, "predictions": runs * n, "false_alarms_per_100k": opened * per,
            "iid_ks_windows_below_threshold_per_100k": iid_hits * per, "windows": windows}


# -- the real service ------------------------------------------------------------------------
def fraud_rows(rng: np.random.Generator, n: int, spec: UseCaseSpec) -> list[dict[str, Any]]:
    """Stationary model inputs of the fraud spec: counts Poisson, money lognormal, gaps
    exponential, categories with fixed shares (what the drift service sees in the demo)."""
    cols: dict[str, np.ndarray] = {}
    for name in spec.model.numeric:
        if "count" in name or "distinct" in name:
            cols[name] = rng.poisson(3.0, n).astype(float)
        elif name.startswith("secs"):
            cols[name] = rng.exponential(600.0, n)
        else:
            cols[name] = np.round(rng.lognormal(3.5, 1.0, n), 2)
    cats = {"merchant_category": (["grocery", "fuel", "restaurant", "travel", "pharmacy", "clothing"], None),
            "country": (["FR", "DE", "US", "GB", "ES", "IT", "NL", "BR"], None),
            "channel": (["online", "pos", "atm"], [0.3, 0.55, 0.15])}
    picked = {name: rng.choice(cats[name][0], n, p=cats[name][1]) for name in spec.model.categorical}
    return [{**{k: float(v[i]) for k, v in cols.items()}, **{k: str(v[i]) for k, v in picked.items()}}
            for i in range(n)]


def fraud_score(row: dict[str, Any]) -> float:
    """The fraud spec's baseline shape (sigmoid of log amount and 5-minute count)."""
    z = -6.0 + 0.9 * math.log1p(row["amount"]) + 0.6 * math.log1p(row["txn_count_5m"])
    return 1.0 / (1.0 + math.exp(-z))


async def _produce_backlog(bootstrap: str, spec: UseCaseSpec, n: int) -> None:
    from aiokafka import AIOKafkaProducer

    from shared import codec
    from shared.kafka import ensure_topics
    await ensure_topics(bootstrap)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    try:
        rng = np.random.default_rng(99)
        train = fraud_rows(rng, 20_000, spec)
        profile = build_profile(train, [fraud_score(r) for r in train], spec)
        ev = ModelEvent(event="promoted", version=1, created_at=0.0, reference_profile=profile,
                        metrics={"accuracy": 0.9})
        await producer.send_and_wait("models", codec.dumps(ev.model_dump()), key=b"1")
        rows = fraud_rows(rng, n, spec)
        futures = []
        for i, row in enumerate(rows):
            s = fraud_score(row)
            rec = {"schema_version": 1, "prediction_id": f"p{i}", "entity_id": f"e{i % 1000}", "model_version": 1,
                   "role": "champion", "features": row, "score": s,
                   "label": bool(s >= 0.5), "threshold": 0.5, "served_at": 1_000.0 + i}
            futures.append(await producer.send("predictions", codec.dumps(rec), key=f"p{i}".encode()))
            if len(futures) >= 5000:
                await asyncio.gather(*futures)
                futures = []
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def _baseline_consume(bootstrap: str, n: int) -> float:
    """Bare aiokafka consumer + orjson decode of the same backlog: predictions/s."""
    from aiokafka import AIOKafkaConsumer

    from shared import codec
    consumer = AIOKafkaConsumer("predictions", bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        seen, started = 0, time.monotonic()
        while seen < n:
            batch = await consumer.getmany(timeout_ms=500, max_records=1000)
            for recs in batch.values():
                for r in recs:
                    codec.loads(r.value)
                seen += sum(len(v) for v in batch.values())
        return n / (time.monotonic() - started)
    finally:
        await consumer.stop()


async def _committed(bootstrap: str, group: str) -> int:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from shared.topics import PREDICTIONS
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return sum([await consumer.committed(TopicPartition("predictions", p)) or 0
                    for p in range(PREDICTIONS.partitions)])
    finally:
        await consumer.stop()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def service(n: int) -> dict[str, Any]:
    """One round on the shipped fraud spec (shared/specs/fraud.toml, 14 inputs)."""
    from shared.embedded import start_broker, start_redis
    tmp = Path(tempfile.mkdtemp(prefix="rivulet-drift-bench-"))
    from shared.spec import default_spec_path, load_spec
    spec_path = default_spec_path()
    broker, redis = start_broker(log_file=tmp / "tansu.log"), start_redis(workdir=tmp)
    proc = None
    try:
        spec = load_spec(spec_path)
        t0 = time.monotonic()
        asyncio.run(_produce_backlog(broker.url, spec, n))
        produce_s = time.monotonic() - t0
        baseline = asyncio.run(_baseline_consume(broker.url, n))
        env = {**os.environ, "RIVULET_KAFKA_BOOTSTRAP": broker.url, "RIVULET_REDIS_URL": redis.url,
               "RIVULET_SPEC": str(spec_path), "RIVULET_LOG_LEVEL": "WARNING"}
        proc = subprocess.Popen([sys.executable, "-m", "services.drift"], env=env,
                                stdout=open(tmp / "drift.log", "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
        done, cpu0, t_first, cpu_end, t_end = 0, 0.0, None, 0.0, None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            done = asyncio.run(_committed(broker.url, "rivulet-drift"))
            if done and t_first is None:
                t_first, cpu0, first_done = time.monotonic(), _cpu_seconds(proc.pid), done
            if done >= n:
                t_end, cpu_end = time.monotonic(), _cpu_seconds(proc.pid)
                break
            time.sleep(0.2)
        if t_first is None or t_end is None or t_end <= t_first:
            return {"error": f"service did not finish ({done}/{n})", "log": (tmp / "drift.log").read_text()[-2000:]}
        measured = n - first_done
        rate = measured / (t_end - t_first)
        return {"spec": spec.name, "inputs": len(spec.model_inputs), "predictions": n, "produce_s": produce_s, "service_predictions_per_s": rate,
                "service_cpu_s_per_1000": 1000 * (cpu_end - cpu0) / measured,
                "baseline_consume_decode_per_s": baseline, "service_vs_baseline": rate / baseline,
                "keeps_up_with_20000_per_s": rate >= 20_000}
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(10)
        broker.stop()
        redis.stop()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stationary-runs", type=int, default=3, help="100,000-prediction stationary streams")
    ap.add_argument("--seeds", type=int, default=15, help="runs per shift scenario")
    ap.add_argument("--service-n", type=int, default=40_000, help="predictions fed to the real service (0: skip)")
    ap.add_argument("--rounds", type=int, default=3, help="service rounds (median reported)")
    ap.add_argument("--service-only", action="store_true", help="skip the in-process statistics")
    args = ap.parse_args(argv)
    report: dict[str, Any] = {"benchmark": "drift", "started_at": datetime.now(UTC).isoformat(),
                              "machine_note": f"{os.cpu_count()} cores, shared with other sessions (noisy)"}
    if not args.service_only:
        report["statistics"] = statistics(args.stationary_runs, args.seeds)
    if args.service_n:
        rounds = [service(args.service_n) for _ in range(args.rounds)]
        ok = [r for r in rounds if "error" not in r]
        report["service_rounds"] = rounds
        if ok:
            med = {k: float(np.median([r[k] for r in ok])) for k in
                   ("service_predictions_per_s", "service_cpu_s_per_1000", "baseline_consume_decode_per_s",
                    "service_vs_baseline")}
            report["service"] = {"spec": ok[0]["spec"], "inputs": ok[0]["inputs"], "rounds": len(ok),
                                 "predictions_per_round": args.service_n, **{f"median_{k}": v for k, v in med.items()},
                                 "keeps_up_with_20000_per_s": med["service_predictions_per_s"] >= 20_000}
    REPORTS.mkdir(exist_ok=True)
    path = REPORTS / f"drift-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(report, indent=2, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v))
    print(json.dumps(report, indent=2))
    print(f"report: {path}")


if __name__ == "__main__":
    main()
