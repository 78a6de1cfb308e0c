"""(d) over time: the features process' RSS under minutes of paced load over ~1M entities."""

from __future__ import annotations

import argparse
import threading
from typing import Any

from loadtests.features_stack import Bench, on_fresh_stack, rss_kb, sample_rss, warm_services


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
