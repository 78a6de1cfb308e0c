"""Decoding a batch of ``events.valid`` records: redelivery filter, then cheap checks.

Why not the full contract: ingestion validated every events.valid record; re-running
pydantic here cost more than the features. What the features rely on is checked: ids are
non-empty strings, event_time a finite number, each field a feature reads of its type.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from shared import codec
from shared.spec import UseCaseSpec

log = logging.getLogger("services.features.handlers")


class RawRecord(NamedTuple):
    """What the service needs from a consumed record (faust/aiokafka agnostic). A tuple:
    one is built per consumed record, several times cheaper than a frozen dataclass."""

    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    topic: str = "events.valid"


@dataclass
class Decoded:
    """A batch after redelivery filtering and validation."""

    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # entity -> offset order
    partitions: dict[str, int] = field(default_factory=dict)  # entity -> its partition
    offsets: dict[int, int] = field(default_factory=dict)  # partition -> highest new offset
    sources: dict[str, RawRecord] = field(default_factory=dict)  # event_id -> its record
    gaps: int = 0  # partitions whose first new offset skips past applied + 1
    invalid: int = 0
    redelivered: int = 0


# (field, accepted types, required) of each field a feature reads.
Checks = tuple[tuple[str, tuple[type, ...], bool], ...]
_TYPES: dict[str, tuple[type, ...]] = {"float": (int, float), "int": (int,), "str": (str,), "bool": (bool,)}
_CHECKS: dict[int, tuple[UseCaseSpec, Checks]] = {}


def _field_checks(spec: UseCaseSpec) -> Checks:
    """(field, accepted types, required) of every field a feature reads, once per spec."""
    cached = _CHECKS.get(id(spec))
    if cached is None or cached[0] is not spec:
        names = sorted({f.field for f in spec.features if f.field})
        checks = tuple((n, _TYPES[spec.event.fields[n].type], spec.event.fields[n].required) for n in names)
        cached = _CHECKS[id(spec)] = (spec, checks)
    return cached[1]


def decode_event(value: bytes | None, spec: UseCaseSpec,
                 checks: Checks | None = None) -> tuple[str, dict[str, Any]] | None:
    """(entity id, slim event) or None if the bytes are not an event the features can read.

    Why not the full contract: ingestion validated every events.valid record; re-running
    pydantic here cost more than the features. What the features rely on is checked:
    ids are non-empty strings, event_time a finite number, each read field of its type.
    """
    try:
        data = codec.loads(value or b"")
    except codec.JSONDecodeError as exc:
        log.warning("skipping invalid events.valid record: %s", str(exc)[:200])
        return None
    checks = _field_checks(spec) if checks is None else checks
    problem = _problem(data, checks)
    if problem:
        log.warning("skipping invalid events.valid record: %s", problem)
        return None
    slim = {"event_id": data["event_id"], "event_time": float(data["event_time"])}
    for name, _, _ in checks:
        slim[name] = data.get(name)
    return data["entity_id"], slim


def _problem(data: Any, checks: Checks) -> str | None:
    if not isinstance(data, dict):
        return "not a JSON object"
    if data.get("schema_version", 1) != 1:
        return f"unknown schema_version {data.get('schema_version')!r}"
    for key in ("event_id", "entity_id"):
        if not isinstance(data.get(key), str) or not data[key]:
            return f"{key} must be a non-empty string"
    t = data.get("event_time")
    if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t) or t < 0:
        return "event_time must be a finite number of epoch seconds"
    for name, types, required in checks:
        v = data.get(name)
        if v is None:
            if required:
                return f"{name} is required"
        elif not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
            return f"{name} has the wrong type"
        elif isinstance(v, float) and not math.isfinite(v):
            return f"{name} is not finite"
    return None


def decode_batch(records: Iterable[RawRecord], applied: Mapping[int, int], spec: UseCaseSpec) -> Decoded:
    """Skip records at or below their partition's applied offset; decode the rest."""
    out, checks = Decoded(), _field_checks(spec)
    for rec in sorted(records, key=lambda r: (r.partition, r.offset)):
        if rec.offset <= applied.get(rec.partition, -1):
            out.redelivered += 1
            continue
        if rec.partition not in out.offsets and rec.partition in applied and rec.offset > applied[rec.partition] + 1:
            out.gaps += 1  # should never happen: resume_positions seeks to applied + 1
            log.error("partition %d: offsets %d..%d were never applied", rec.partition,
                      applied[rec.partition] + 1, rec.offset - 1)
        out.offsets[rec.partition] = max(out.offsets.get(rec.partition, -1), rec.offset)
        decoded = decode_event(rec.value, spec, checks)
        if decoded is None:
            out.invalid += 1
            continue
        entity, event = decoded
        out.events.setdefault(entity, []).append(event)
        out.partitions.setdefault(entity, rec.partition)
        out.sources[event["event_id"]] = rec
    return out
