"""Scale-out and bounded memory of the features service (real processes, broker, Redis).

* Two workers in one consumer group share the partitions; a rebalance mid-stream (a second
  worker joins, then the first is SIGKILLed) keeps every entity's features exact.
* Memory is bounded: the process keeps at most ``state_cache_entities`` windows (LRU), so
  its RSS does not grow with the number of distinct entities; Redis holds the rest, and
  idle entities' keys (features and window) expire after ``entity_ttl``.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path
from typing import Any

import redis as redis_sync

from shared import redis_keys
from shared.spec import default_spec_path, load_spec
from tests.helpers import Stack, wait_for
from tests.integration.test_features import (
    FAST,
    SPEC,
    BackgroundFeed,
    all_applied,
    applied,
    assert_store_matches_batch_engine,
    make_events,
    produce,
)


def _assigned(log: str) -> list[set[int]]:
    return [{int(p) for p in m.split(",") if p != "-"}
            for m in re.findall(r"assigned events\.valid partitions (\S+)", log)]


def test_two_workers_share_partitions_and_a_rebalance_keeps_results_exact(stack: Stack) -> None:
    r = redis_sync.Redis.from_url(stack.redis.url)
    pool = make_events(seed=11, entities=30, per_entity=300, base=time.time() - 12 * 3600)
    first = stack.spawn("services.features", RIVULET_BATCH_SIZE=50, **FAST)
    feeder = BackgroundFeed(stack, pool)
    feeder.start()
    wait_for(lambda: sum(applied(r).values()) > 0, timeout=30, what="first worker progressing")
    second = stack.spawn("services.features", RIVULET_BATCH_SIZE=50, **FAST)
    log2 = stack.tmp / "services_features-1.log"
    wait_for(lambda: any(0 < len(a) < 4 for a in _assigned(log2.read_text())), timeout=30,
             what="the second worker owning a share of the partitions")
    done = sum(applied(r).values())
    wait_for(lambda: sum(applied(r).values()) > done, timeout=20, what="progress with two workers")
    first.send_signal(signal.SIGKILL)  # second rebalance, mid-stream, with work in flight
    first.wait(10)
    wait_for(lambda: any(len(a) == 4 for a in _assigned(log2.read_text())), timeout=30,
             what="the survivor taking over every partition")
    assert feeder.is_alive(), "the stream ended before the rebalances"
    produced = feeder.finish()
    wait_for(lambda: all_applied(r, feeder.end), timeout=45, what="everything applied by the survivor")
    assert second.poll() is None
    assert_store_matches_batch_engine(r, produced)


def _rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]


def _one_event_each(prefix: str, n: int) -> list[dict[str, Any]]:
    now = time.time()
    return [{"schema_version": 1, "event_id": f"{prefix}-{i}", "entity_id": f"{prefix}-{i}", "event_time": now,
             "amount": 1.0 + i % 50, "merchant_category": "grocery", "country": "DE", "channel": "pos",
             "ingested_at": now} for i in range(n)]


def test_memory_does_not_grow_with_entities_and_idle_entities_expire(stack: Stack) -> None:
    spec_file = stack.tmp / "short_ttl.toml"
    spec_file.write_text(default_spec_path().read_text().replace('entity_ttl = "7d"', 'entity_ttl = "4s"'))
    spec = load_spec(spec_file)
    assert spec.features_config.entity_ttl == 4.0 and spec.feature_set_version == SPEC.feature_set_version
    r = redis_sync.Redis.from_url(stack.redis.url)
    proc = stack.spawn("services.features", RIVULET_SPEC=spec_file, RIVULET_BATCH_SIZE=1000,
                       RIVULET_STATE_CACHE_ENTITIES=2000, **FAST)
    for rnd in range(2):  # two warm-up rounds: allocator pools and client buffers reach steady state
        last = produce(stack, _one_event_each(f"warm{rnd}", 3000))
        wait_for(lambda: all_applied(r, last), timeout=45, what="warm-up applied")
    warm = _rss_kb(proc.pid)
    # 24k new entities, 4x those seen so far, in waves the size of the warm-up's: one 12k burst
    # made larger fetches, whose transient peak alone grew RSS by 4-8 MB (seen: 8.2 MB once).
    for rnd in range(8):
        last = produce(stack, _one_event_each(f"many{rnd}", 3000))
        wait_for(lambda: all_applied(r, last), timeout=45, what="a wave of new entities applied")
    after = _rss_kb(proc.pid)
    # The cache was full (2000 windows) after the warm-up and stays so: measured +1.5 MB. With
    # the cache unbounded (RIVULET_STATE_CACHE_ENTITIES=1000000) it grew by 47 MB.
    assert after - warm < 8 * 1024, f"RSS grew from {warm} kB to {after} kB"
    last = produce(stack, _one_event_each("probe", 1))
    wait_for(lambda: all_applied(r, last), timeout=20, what="probe applied")
    ttls = r.ttl(redis_keys.features(spec, "probe-0")), r.ttl(redis_keys.window_events(spec, "probe-0"))
    assert all(0 < t <= 4 for t in ttls), ttls
    pattern = f"{redis_keys.PREFIX}:{redis_keys.feature_set(spec)}:[fw]*:*"
    wait_for(lambda: not r.keys(pattern), timeout=20, what="idle entities' keys expired")
    assert r.hgetall(redis_keys.applied_offsets(spec, "rivulet-features"))  # progress is kept
    assert proc.poll() is None
