"""Pure logic of the features service: decode, merge into window buffers, plan a write.

No Kafka or Redis here. ``compute_features`` (the batch engine, defined in
:mod:`services.features.windows`) is re-exported from this module: it is the import path
other code (tests, training backfills) uses.

The streaming engine keeps, per entity, a buffer of the events still inside the longest
window plus the allowed lateness. A batch is applied as: drop records whose offset was
already applied (redelivery), decode + validate, merge each entity's new events into its
buffer (dedupe by ``event_id``, refuse events later than the allowed lateness), prune,
and recompute the entity's features with ``compute_features`` at its newest event time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from services.features.windows import Event, compute_features, dedupe
from shared import codec
from shared.contracts import DeadLetter, event_model
from shared.errors import Reason
from shared.redis_keys import EVENT_TIME_FIELD, WRITTEN_AT_FIELD
from shared.spec import UseCaseSpec

__all__ = [
    "BatchPlan", "Decoded", "LateRecord", "RawRecord", "apply_events", "batch_features_for_entity",
    "compute_features", "decode_batch", "feature_hash", "late_dead_letter", "merge_events",
    "plan_batch", "resume_positions", "slim_event",
]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RawRecord:
    """What the service needs from a consumed record (faust/aiokafka agnostic)."""

    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    topic: str = "events.valid"


@dataclass(frozen=True)
class LateRecord:
    """An event refused for being later than the allowed lateness: dead-lettered verbatim."""

    record: RawRecord
    event_time: float
    newest: float


@dataclass
class Decoded:
    """A batch after redelivery filtering and validation."""

    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # entity -> offset order
    offsets: dict[int, int] = field(default_factory=dict)  # partition -> highest new offset
    sources: dict[str, RawRecord] = field(default_factory=dict)  # event_id -> its record
    gaps: int = 0  # partitions whose first new offset skips past applied + 1
    invalid: int = 0
    redelivered: int = 0


@dataclass
class BatchPlan:
    """Everything one batch writes, in one transaction."""

    buffers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    features: dict[str, dict[str, float | None]] = field(default_factory=dict)
    at: dict[str, float] = field(default_factory=dict)
    offsets: dict[int, int] = field(default_factory=dict)
    applied: int = 0
    late: int = 0
    late_records: list[LateRecord] = field(default_factory=list)
    invalid: int = 0
    redelivered: int = 0
    gaps: int = 0


def batch_features_for_entity(events: Sequence[Event], at: float, spec: UseCaseSpec) -> dict[str, float | None]:
    """Alias of :func:`compute_features` (named for backfill code)."""
    return compute_features(events, at, spec)


def slim_event(event: Mapping[str, Any], spec: UseCaseSpec) -> dict[str, Any]:
    """Only what the features read: keeps the Redis buffers small."""
    keep = {"event_id", "event_time", *(f.field for f in spec.features if f.field)}
    return {k: event.get(k) for k in sorted(keep)}


def decode_event(value: bytes | None, spec: UseCaseSpec) -> dict[str, Any] | None:
    """A validated event dict (``event_time`` as float), or None if the bytes are not one."""
    try:
        return event_model(spec).model_validate(codec.loads(value or b"")).model_dump()
    except (codec.JSONDecodeError, ValidationError, TypeError, ValueError) as exc:
        log.warning("skipping invalid events.valid record: %s", str(exc)[:200])
        return None


def decode_batch(records: Iterable[RawRecord], applied: Mapping[int, int], spec: UseCaseSpec) -> Decoded:
    """Skip records at or below their partition's applied offset; validate the rest."""
    out = Decoded()
    for rec in sorted(records, key=lambda r: (r.partition, r.offset)):
        if rec.offset <= applied.get(rec.partition, -1):
            out.redelivered += 1
            continue
        if rec.partition not in out.offsets and rec.partition in applied and rec.offset > applied[rec.partition] + 1:
            out.gaps += 1  # should never happen: resume_positions seeks to applied + 1
            log.error("partition %d: offsets %d..%d were never applied", rec.partition,
                      applied[rec.partition] + 1, rec.offset - 1)
        out.offsets[rec.partition] = max(out.offsets.get(rec.partition, -1), rec.offset)
        event = decode_event(rec.value, spec)
        if event is None:
            out.invalid += 1
            continue
        out.events.setdefault(event["entity_id"], []).append(slim_event(event, spec))
        out.sources[event["event_id"]] = rec
    return out


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
    """New buffers and features for every entity touched by the batch."""
    plan = BatchPlan(offsets=dict(decoded.offsets), invalid=decoded.invalid,
                     redelivered=decoded.redelivered, gaps=decoded.gaps)
    for entity, new in decoded.events.items():
        buffer, late = merge_events(buffers.get(entity, ()), new, spec)
        plan.late += len(late)
        plan.applied += len(new) - len(late)
        plan.late_records += [
            LateRecord(decoded.sources[e["event_id"]], float(e["event_time"]), newest)
            for e, newest in late if e["event_id"] in decoded.sources
        ]
        if not buffer:
            continue
        at = max(float(e["event_time"]) for e in buffer)
        plan.buffers[entity] = buffer
        plan.features[entity] = compute_features(buffer, at, spec)
        plan.at[entity] = at
    return plan


def feature_hash(values: Mapping[str, float | None], at: float, now: float) -> dict[str, str]:
    """The Redis hash of one entity: str(float) per present feature, None fields omitted."""
    fields = {name: str(float(v)) for name, v in values.items() if v is not None}
    fields[EVENT_TIME_FIELD] = str(float(at))
    fields[WRITTEN_AT_FIELD] = str(float(now))
    return fields


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
