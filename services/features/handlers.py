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

from shared import codec
from shared.contracts import event_model
from shared.redis_keys import EVENT_TIME_FIELD, WRITTEN_AT_FIELD
from shared.spec import UseCaseSpec
from services.features.windows import Event, compute_features, dedupe

__all__ = [
    "BatchPlan", "Decoded", "RawRecord", "apply_events", "batch_features_for_entity",
    "compute_features", "decode_batch", "feature_hash", "plan_batch", "slim_event",
]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RawRecord:
    """What the service needs from a consumed record (faust/aiokafka agnostic)."""

    partition: int
    offset: int
    value: bytes | None


@dataclass
class Decoded:
    """A batch after redelivery filtering and validation."""

    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # entity -> offset order
    offsets: dict[int, int] = field(default_factory=dict)  # partition -> highest new offset
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
    invalid: int = 0
    redelivered: int = 0


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
        out.offsets[rec.partition] = max(out.offsets.get(rec.partition, -1), rec.offset)
        event = decode_event(rec.value, spec)
        if event is None:
            out.invalid += 1
            continue
        out.events.setdefault(event["entity_id"], []).append(slim_event(event, spec))
    return out


def apply_events(
    buffer: Sequence[Event], new: Sequence[Event], spec: UseCaseSpec
) -> tuple[list[dict[str, Any]], int]:
    """Merge ``new`` (in arrival order) into ``buffer``; returns (pruned buffer, late count).

    An event older than the allowed lateness relative to the newest event seen before it
    is not applied (deterministic whatever the batch boundaries are).
    """
    lateness = spec.features_config.allowed_lateness
    merged = [dict(e) for e in buffer]
    seen = {e["event_id"] for e in merged}
    newest = max((float(e["event_time"]) for e in merged), default=float("-inf"))
    late = 0
    for event in new:
        t = float(event["event_time"])
        if event["event_id"] in seen:
            continue
        if t < newest - lateness:
            late += 1
            continue
        seen.add(event["event_id"])
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
    plan = BatchPlan(offsets=dict(decoded.offsets), invalid=decoded.invalid, redelivered=decoded.redelivered)
    for entity, new in decoded.events.items():
        buffer, late = apply_events(buffers.get(entity, ()), new, spec)
        plan.late += late
        plan.applied += len(new) - late
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
