"""Settings of the features service (env prefix ``RIVULET_``, e.g. ``RIVULET_BATCH_SIZE``)."""

from __future__ import annotations

from pydantic import Field

from shared.config import RivuletSettings


class FeaturesSettings(RivuletSettings):
    # Consumer group and faust app id: unique to this service.
    group_id: str = "rivulet-features"
    # A batch is one fetch (whatever arrived while the previous batch was written), applied
    # in chunks of at most batch_size distinct entities: a Lua script's time in Redis (which
    # blocks /predict reads) is per entity written, ~10 us each. An entity seen several times
    # in a chunk is evaluated and written once, so hot entities are cheaper in larger chunks.
    batch_size: int = 500
    # ... and of at most batch_max_events events (bounds the events one write adds).
    batch_max_events: int = 1000
    # Chunk writes (Lua scripts) in flight at once while the next chunk is planned: more
    # absorb the swings of Redis' share of the CPU; each is at most ~10 ms of Redis time.
    write_depth: int = Field(default=2, ge=1)
    # Longest time the broker may hold a fetch with no data (lower: fresher features).
    fetch_max_wait_ms: int = 5
    # How often faust commits acked offsets (Redis offsets make redelivery harmless).
    commit_interval_s: float = 1.0
    # A crashed member is evicted from the group after this long (faust's default is 60 s).
    session_timeout_s: float = 10.0
    # On shutdown, how long an in-flight Redis write may take to finish.
    shutdown_grace_s: float = 10.0
    # Back-off between retries of a batch whose Redis write failed.
    retry_backoff_s: float = 1.0
    # Windows of at most this many recently seen entities are kept in memory (LRU): RSS is
    # bounded by it, whatever the number of entities; misses are read from Redis.
    state_cache_entities: int = 50_000
    # ... and at most this many events in those windows: the memory bound, ~0.6 KB each with
    # its columns (measured), ~45 MB. Why both: windows grow as their entities come back (a
    # 24 h window keeps every event), so 50,000 cached entities hold more events every minute
    # (seen: +3 MB/min at 2,000 events/s over 1M entities); this bound is reached within
    # minutes, then RSS stays flat. Keep it above the working set (the events in the windows
    # of the entities active at once): below it, batches reread windows from Redis (measured,
    # 100k events over 2,000 entities with a 50,000 bound: 46 instead of 28 us/event).
    state_cache_events: int = 75_000
