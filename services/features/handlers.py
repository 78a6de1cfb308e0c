"""Pure logic of the features service: decode, merge into window buffers, plan a write.

No Kafka or Redis here. ``compute_features`` (the batch engine, defined in
:mod:`services.features.windows`) is re-exported from this module: it is the import path
other code (tests, training backfills) uses.

The streaming engine keeps, per entity, a :class:`~services.features.state.Window`: the
events still inside the longest window plus the allowed lateness, in canonical order. A
batch is applied as: drop records whose offset was already applied (redelivery), decode
(events.valid was validated by ingestion: only the types the features read are checked),
merge each entity's new events into its window (dedupe by ``event_id``, refuse events
later than the allowed lateness), prune, and evaluate the entity's features with the batch
definition at its newest event time. The plan lists the events added and removed per
entity, so the Redis write is incremental.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.features.decode import Decoded, RawRecord, decode_batch, decode_event
from services.features.state import Window
from services.features.windows import Event, compute_features, dedupe
from shared import codec
from shared.contracts import DeadLetter
from shared.errors import Reason
from shared.redis_keys import EVENT_TIME_FIELD, WRITTEN_AT_FIELD
from shared.spec import UseCaseSpec

__all__ = [
    "BatchPlan", "Decoded", "LateRecord", "RawRecord", "apply_events", "batch_features_for_entity", "chunks",
    "compute_features", "decode_batch", "decode_event", "feature_fields", "feature_hash", "late_dead_letter",
    "merge_events", "plan_batch", "resume_positions", "slim_event",
]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LateRecord:
    """An event refused for being later than the allowed lateness: dead-lettered verbatim."""

    record: RawRecord
    event_time: float
    newest: float


@dataclass
class BatchPlan:
    """Everything one batch writes, in one transaction."""

    buffers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # window after the batch
    added: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # events new to the window
    removed: dict[str, list[str]] = field(default_factory=dict)  # event ids pruned from it
    features: dict[str, dict[str, float | None]] = field(default_factory=dict)
    at: dict[str, float] = field(default_factory=dict)
    offsets: dict[int, int] = field(default_factory=dict)
    applied: int = 0
    late: int = 0
    late_records: list[LateRecord] = field(default_factory=list)
    invalid: int = 0
    redelivered: int = 0
    gaps: int = 0


def chunks(records: Sequence[RawRecord], max_events: int, max_entities: int) -> Iterator[Sequence[RawRecord]]:
    """Consecutive slices of ``records`` with at most ``max_events`` records and at most
    ``max_entities`` distinct keys (entities) each: a write's cost in Redis is per entity."""
    start, keys = 0, set()
    for i, rec in enumerate(records):
        if i - start >= max_events or (rec.key not in keys and len(keys) >= max_entities):
            yield records[start:i]
            start, keys = i, set()
        keys.add(rec.key)
    if start < len(records):
        yield records[start:]


def batch_features_for_entity(events: Sequence[Event], at: float, spec: UseCaseSpec) -> dict[str, float | None]:
    """Alias of :func:`compute_features` (named for backfill code)."""
    return compute_features(events, at, spec)


def slim_event(event: Mapping[str, Any], spec: UseCaseSpec) -> dict[str, Any]:
    """Only what the features read: keeps the Redis buffers small."""
    keep = {"event_id", "event_time", *(f.field for f in spec.features if f.field)}
    return {k: event.get(k) for k in sorted(keep)}


def apply_events(
    buffer: Sequence[Event], new: Sequence[Event], spec: UseCaseSpec
) -> tuple[list[dict[str, Any]], int]:
    """Like :func:`merge_events`, with the late events counted instead of returned."""
    merged, late = merge_events(buffer, new, spec)
    return merged, len(late)


def merge_events(
    buffer: Sequence[Event], new: Sequence[Event], spec: UseCaseSpec
) -> tuple[list[dict[str, Any]], list[tuple[Event, float]]]:
    """Merge ``new`` (in arrival order) into ``buffer``; returns (pruned buffer, late events).

    An event older than the allowed lateness relative to the newest event seen before it
    is not applied (deterministic whatever the batch boundaries are); each late event is
    returned once, with that newest event time, so it can be dead-lettered.
    """
    lateness = spec.features_config.allowed_lateness
    merged = [dict(e) for e in buffer]
    seen = {e["event_id"] for e in merged}
    newest = max((float(e["event_time"]) for e in merged), default=float("-inf"))
    late: list[tuple[Event, float]] = []
    for event in new:
        t = float(event["event_time"])
        if event["event_id"] in seen:
            continue
        seen.add(event["event_id"])  # a late event's duplicate is not reported twice
        if t < newest - lateness:
            late.append((event, newest))
            continue
        merged.append(dict(event))
        newest = max(newest, t)
    return prune(merged, spec), late


def prune(buffer: Sequence[Event], spec: UseCaseSpec) -> list[dict[str, Any]]:
    """Drop events older than newest - longest window - allowed lateness."""
    if not buffer:
        return []
    newest = max(float(e["event_time"]) for e in buffer)
    cutoff = newest - spec.max_window_s - spec.features_config.allowed_lateness
    return [dict(e) for e in dedupe(buffer) if float(e["event_time"]) >= cutoff]


def plan_batch(decoded: Decoded, buffers: Mapping[str, Sequence[Event]], spec: UseCaseSpec) -> BatchPlan:
    """New buffers and features for every entity touched by the batch (buffers as lists)."""
    windows = {e: Window.of(decoded.partitions.get(e, 0), buffers.get(e, ())) for e in decoded.events}
    return plan_windows(decoded, windows, spec)


def plan_windows(decoded: Decoded, windows: Mapping[str, Window], spec: UseCaseSpec) -> BatchPlan:
    """Merge the batch into ``windows`` (mutated in place: the caller drops them if the
    write fails) and plan the write of every entity touched by the batch."""
    plan = BatchPlan(offsets=dict(decoded.offsets), invalid=decoded.invalid,
                     redelivered=decoded.redelivered, gaps=decoded.gaps)
    lateness = spec.features_config.allowed_lateness
    horizon = spec.max_window_s + lateness
    for entity, new in decoded.events.items():
        window = windows[entity]
        added, late = merge_into(window, new, lateness)
        plan.late += len(late)
        plan.applied += len(new) - len(late)
        plan.late_records += [
            LateRecord(decoded.sources[e["event_id"]], float(e["event_time"]), newest)
            for e, newest in late if e["event_id"] in decoded.sources
        ]
        if not window.events:
            continue
        removed = window.prune(window.newest - horizon)
        if not added and not removed:
            continue  # only duplicates or late events: nothing to rewrite
        fresh = {e["event_id"] for e in added}
        plan.added[entity] = [e for e in added if e["event_id"] in window.ids]  # not pruned at once
        plan.removed[entity] = [i for i in removed if i not in fresh]
        plan.buffers[entity] = window.events
        plan.features[entity] = window.features(spec)
        plan.at[entity] = window.newest
    return plan


def merge_into(window: Window, new: Sequence[Event], lateness: float) -> tuple[list[dict[str, Any]], list[tuple[Event, float]]]:
    """Add ``new`` (in arrival order) to ``window``: (events added, (late event, newest)).
    The events are added as they are, not copied: events are never mutated once decoded."""
    added: list[dict[str, Any]] = []
    late: list[tuple[Event, float]] = []
    late_ids: set[str] = set()
    for event in new:
        if event["event_id"] in window.ids or event["event_id"] in late_ids:
            continue
        newest = window.newest
        if float(event["event_time"]) < newest - lateness:
            late_ids.add(event["event_id"])  # a late event's duplicate is not reported twice
            late.append((event, newest))
            continue
        window.add(event)  # type: ignore[arg-type]
        added.append(event)  # type: ignore[arg-type]
    return added, late


def feature_hash(values: Mapping[str, float | None], at: float, now: float) -> dict[str, str]:
    """The Redis hash of one entity: each present feature as a JSON number (None fields
    omitted), plus the event time it is at and the write's wall time."""
    flat = feature_fields(values, at, now)
    return dict(zip(flat[::2], flat[1::2]))


def feature_fields(values: Mapping[str, float | None], at: float, now: float) -> list[str]:
    """:func:`feature_hash` flat (field, value, field, value, ...): the script's HSET arguments.
    The last pair is the write time (the write script replaces ``now`` with Redis' clock).

    Why orjson: formatting 15 floats with ``str`` was a twentieth of the service's CPU;
    orjson writes the same shortest round-trip numbers (``float(text) == value``) ~8x faster.
    It writes null for a non-finite number: those fall back to ``str`` ("inf")."""
    names = [name for name, v in values.items() if v is not None]
    numbers = [float(values[name]) for name in names]  # type: ignore[arg-type]
    names += (EVENT_TIME_FIELD, WRITTEN_AT_FIELD)
    numbers += (float(at), float(now))
    texts = codec.dumps(numbers).decode()[1:-1].split(",")
    if "null" in texts:
        texts = [str(x) if text == "null" else text for x, text in zip(numbers, texts)]
    flat = names + texts
    flat[::2], flat[1::2] = names, texts
    return flat


def parse_buffer(raw: bytes | str | None) -> list[dict[str, Any]]:
    """A stored buffer; an unreadable one is treated as empty (it is rebuilt going forward)."""
    if not raw:
        return []
    try:
        data = codec.loads(raw)
    except codec.JSONDecodeError:
        log.warning("unreadable window buffer; starting a new one")
        return []
    if not isinstance(data, list):
        return []
    return [e for e in data if isinstance(e, dict) and "event_id" in e and "event_time" in e]


def late_dead_letter(late: LateRecord, spec: UseCaseSpec, now: float) -> DeadLetter:
    """The headers of a late event's record on ``events.late`` (value = the original bytes)."""
    lateness = spec.features_config.allowed_lateness
    rec = late.record
    return DeadLetter(
        reason=Reason.LATE_EVENT.value,
        field="event_time",
        message=(f"event_time {late.event_time:.3f} is {late.newest - late.event_time:.3f}s behind the entity's "
                 f"newest event {late.newest:.3f}; allowed lateness is {lateness:g}s"),
        source_topic=rec.topic, source_partition=rec.partition, source_offset=rec.offset, failed_at=now,
    )


def resume_positions(committed: Mapping[int, int | None], applied: Mapping[int, int]) -> dict[int, int]:
    """Where each assigned partition resumes: right after the last offset applied to Redis.

    Redis, not the Kafka commit, is the truth: a commit that lags only costs skipped
    redeliveries, but one ahead of Redis (a batch acked without being applied, e.g. a
    shutdown that timed out mid-write) would lose events. Partitions Redis has never
    seen keep their committed position (None: the reset policy, earliest).
    """
    out: dict[int, int] = {}
    for partition, position in committed.items():
        if partition in applied:
            out[partition] = applied[partition] + 1
        elif position is not None and position >= 0:
            out[partition] = position
    return out
