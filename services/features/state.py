"""In-process window state of the streaming engine: sorted buffers and a bounded LRU cache.

Why: re-reading and re-parsing every entity's buffer from Redis, and re-sorting it, on
every batch dominated the service's CPU. A worker keeps the buffers of recently seen
entities here, already in canonical order, and Redis stays the truth:

* an entry is valid only while Redis' applied offset of its partition is the one this
  worker last read or wrote (``Cache.applied``); every write is a compare-and-set on
  those offsets (see :mod:`services.features.store`), and any failed or interrupted write,
  or any (re)assignment, drops the cache, so a stale entry is never used;
* ``events.valid`` is keyed by entity id, so an entity lives in one partition; an entity
  arriving through another partition than its entry's is reloaded from Redis;
* an entry idle for half the entity TTL is reloaded (Redis may have expired the entity);
* the cache holds at most ``max_entities`` entries (least recently used evicted), so the
  process' memory is bounded whatever the number of entities; Redis' TTL frees idle ones.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from services.features.running import Running
from services.features.windows import (
    Event,
    evaluate_columns,
    field_aggregates,
    numeric,
    numeric_fields,
    raw_fields,
    sort_key,
    window_plans,
)
from shared.spec import UseCaseSpec


@dataclass
class Window:
    """One entity's events still needed by a future window, in (event_time, event_id) order,
    with the columns the features read (built on first use, then kept up to date)."""

    partition: int
    touched: float = float("-inf")  # monotonic time of this worker's last write of the entity
    keys: list[tuple[float, str]] = field(default_factory=list)  # sort keys, for bisect
    events: list[dict[str, Any]] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    times: list[float] = field(default_factory=list)
    raw: dict[str, list[Any]] = field(default_factory=dict)  # field -> values, in key order
    num: dict[str, list[float | None]] = field(default_factory=dict)  # field -> numeric(values)
    running: list[Running] = field(default_factory=list)  # per window definition of the spec
    large: bool = False  # evaluated with Running.FILL_FROM events or more

    @classmethod
    def of(cls, partition: int, events: Iterable[Event]) -> Window:
        """Built in bulk (a cache miss, e.g. an entity read back from Redis): one sort, no
        per-event insert; as :meth:`add` would, the first of an ``event_id`` in order wins."""
        window = cls(partition)
        for key, event in sorted(((sort_key(e), e) for e in events), key=_first):
            if key[1] not in window.ids:
                window.ids.add(key[1])
                window.keys.append(key)
                window.events.append(dict(event))
        window.times = [key[0] for key in window.keys]
        return window

    @property
    def newest(self) -> float:
        return self.times[-1] if self.times else float("-inf")

    def add(self, event: dict[str, Any]) -> bool:
        """Insert in canonical order; False if this event_id is already here."""
        if event["event_id"] in self.ids:
            return False
        key = sort_key(event)
        if self.keys and key < self.keys[-1]:
            pos = bisect_left(self.keys, key)
            self.keys.insert(pos, key)
            self.events.insert(pos, event)
            self.times.insert(pos, key[0])
            for name, col in self.raw.items():
                col.insert(pos, event.get(name))
            for name, ncol in self.num.items():
                ncol.insert(pos, numeric(event.get(name)))
        else:
            pos = len(self.keys)
            self.keys.append(key)
            self.events.append(event)
            self.times.append(key[0])
            for name, col in self.raw.items():
                col.append(event.get(name))
            for name, ncol in self.num.items():
                ncol.append(numeric(event.get(name)))
        for running in self.running:
            running.inserted(pos, key[0], self.raw, self.num)
        self.ids.add(key[1])
        return True

    def prune(self, cutoff: float) -> list[str]:
        """Drop events older than ``cutoff``; returns their ids (to delete in Redis)."""
        n = bisect_left(self.times, cutoff)
        if not n:
            return []
        gone = [k[1] for k in self.keys[:n]]
        for running in self.running:
            running.pruning(n, self.times[n - 1], self.raw, self.num)
        del self.keys[:n], self.events[:n], self.times[:n]
        for col in (*self.raw.values(), *self.num.values()):
            del col[:n]
        self.ids.difference_update(gone)
        return gone

    def features(self, spec: UseCaseSpec) -> dict[str, float | None]:
        """Every feature at the newest event time (the batch definition, no re-sort): a
        window of ``Running.FILL_FROM`` events or more from its running aggregates, without a
        pass over it (see :mod:`services.features.running`); a smaller one from its slices."""
        for name in raw_fields(spec) - self.raw.keys():
            self.raw[name] = [e.get(name) for e in self.events]
        for name in numeric_fields(spec) - self.num.keys():
            self.num[name] = [numeric(v) for v in self.raw[name]]
        n = len(self.times)
        if n < Running.FILL_FROM or not (self.running or self.large):
            # Small: the slices are cheaper (a window kept running may lag: safe). The first
            # large evaluation too: filling costs more than a pass, and a window read back
            # from Redis (a cache miss) may be evicted before its next evaluation.
            self.large = n >= Running.FILL_FROM
            return evaluate_columns(self.times, self.raw, self.num, self.newest, spec)
        if not self.running:
            self.running = [Running(fields, inclusive) for inclusive, fields in window_plans(spec)]
        raw, num, running = self.raw, self.num, self.running
        kept: dict[int, bool] = {}  # window definition -> answered from running aggregates

        def aggregate(group: int, name: str, lo: int, start: float) -> dict[str, float | None]:
            window, use = running[group], kept.get(group)
            if use is None:  # once per evaluation; a small window's slice is cheaper
                use = kept[group] = window.filled or n - lo >= Running.FILL_FROM
                if use:
                    window.advance(lo, start, raw, num)
            if use:
                return window.aggregates(name, num)
            return field_aggregates(raw[name], num.get(name), lo, window.fields[name].aggs)

        return evaluate_columns(self.times, raw, num, self.newest, spec, aggregate)


def _first(pair: tuple[tuple[float, str], Event]) -> tuple[float, str]:
    return pair[0]


class Cache:
    """entity -> :class:`Window` (LRU) plus the applied offsets it is valid for.

    Bounded twice: by entities, and by the events their windows hold. Why both: with long
    windows (24 h) a window keeps every event of its entity, so the same number of cached
    entities holds more and more events as a run goes on (seen: +3 MB/min at 2,000 events/s
    over 1M entities); the event bound is what keeps the process' memory flat."""

    def __init__(self, max_entities: int, max_idle_s: float = float("inf"),
                 max_events: int | None = None) -> None:
        self.max_entities = max(1, max_entities)
        self.max_events = max(1, max_events) if max_events is not None else None
        self.max_idle_s = max_idle_s  # older entries may have expired in Redis: reload them
        self.windows: OrderedDict[str, Window] = OrderedDict()
        self.sizes: dict[str, int] = {}  # entity -> its window's events when last put
        self.events = 0  # sum of sizes
        self.applied: dict[int, int] = {}  # partition -> applied offset in Redis, as last seen
        self.known = False  # applied was read from Redis since the last clear
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self.windows)

    def clear(self) -> None:
        """Forget everything (after a failed write, a conflict or a reassignment)."""
        self.windows.clear()
        self.sizes.clear()
        self.events = 0
        self.applied.clear()
        self.known = False

    def set_applied(self, applied: Mapping[int, int]) -> None:
        self.applied = dict(applied)
        self.known = True

    def get(self, entity: str, partition: int) -> Window | None:
        window = self.windows.get(entity)
        if window is not None and time.monotonic() - window.touched > self.max_idle_s:
            self._drop(entity)
            window = None
        if window is None or window.partition != partition:
            self.misses += 1
            return None
        self.hits += 1
        self.windows.move_to_end(entity)
        return window

    def put(self, entity: str, window: Window) -> None:
        """Windows change only inside a batch, which puts every window it touched."""
        self.windows[entity] = window
        self.windows.move_to_end(entity)
        size = len(window.events)
        self.events += size - self.sizes.get(entity, 0)
        self.sizes[entity] = size

    def _drop(self, entity: str) -> None:
        del self.windows[entity]
        self.events -= self.sizes.pop(entity, 0)

    def trim(self) -> int:
        """Evict least recently used entries over either bound (only between batches); the
        most recently used window stays even if it alone is over the event bound."""
        evicted = 0
        while len(self.windows) > self.max_entities or (
                self.max_events is not None and self.events > self.max_events and len(self.windows) > 1):
            self._drop(next(iter(self.windows)))
            evicted += 1
        return evicted
