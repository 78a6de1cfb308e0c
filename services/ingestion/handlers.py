"""Pure validation of raw events and labels. No Kafka here: the tests drive these directly.

Each function returns the normalised record (a dict ready for the ``*.valid`` topic) or
raises :class:`RejectedRecord` with a reason code and the offending field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from shared import codec
from shared.contracts import Label, event_model
from shared.errors import Reason, RejectedRecord
from shared.spec import UseCaseSpec

# schema_version -> function upgrading a record of that version to the next one.
# Version 1 is the first public version, so nothing to upgrade yet.
EVENT_UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}

_TYPE_REASONS = {
    "missing": Reason.MISSING_FIELD,
    "greater_than": Reason.OUT_OF_RANGE,
    "greater_than_equal": Reason.OUT_OF_RANGE,
    "less_than": Reason.OUT_OF_RANGE,
    "less_than_equal": Reason.OUT_OF_RANGE,
    "string_too_long": Reason.TOO_LONG,
    "string_too_short": Reason.OUT_OF_RANGE,
    "string_pattern_mismatch": Reason.BAD_FORMAT,
    "literal_error": Reason.NOT_ALLOWED,
    "finite_number": Reason.NON_FINITE,
    "value_error": Reason.BAD_FORMAT,
}


def parse_object(raw: bytes, max_bytes: int) -> dict[str, Any]:
    """Size cap first, then strict JSON (NaN/Infinity/1e999 rejected), then 'is an object'."""
    if len(raw) > max_bytes:
        raise RejectedRecord(Reason.PAYLOAD_TOO_LARGE, f"payload is {len(raw)} bytes; limit {max_bytes}")
    try:
        data = codec.loads(raw)
    except codec.JSONDecodeError as exc:
        text = str(exc)
        non_finite = "infinity" in text.lower() or any(t in raw for t in (b"NaN", b"Infinity"))
        reason = Reason.NON_FINITE if non_finite else Reason.INVALID_JSON
        raise RejectedRecord(reason, f"invalid JSON: {text}") from None
    if not isinstance(data, dict):
        raise RejectedRecord(Reason.NOT_AN_OBJECT, f"expected a JSON object, got {type(data).__name__}")
    return data


def check_schema_version(data: dict[str, Any], newest: int) -> dict[str, Any]:
    """Older versions are upgraded step by step; unknown (newer or bogus) ones are rejected."""
    version = data.get("schema_version", 1)
    if not isinstance(version, int) or isinstance(version, bool):
        raise RejectedRecord(Reason.WRONG_TYPE, "schema_version must be an integer", "schema_version")
    if version < 1 or version > newest:
        raise RejectedRecord(
            Reason.UNKNOWN_SCHEMA_VERSION, f"schema_version {version} is not supported (1..{newest})",
            "schema_version",
        )
    while version < newest:
        data = EVENT_UPGRADES[version](data)
        version += 1
    return {**data, "schema_version": 1}


def rejection(exc: ValidationError) -> RejectedRecord:
    """The first pydantic error as a reason code + field name + readable message."""
    err = exc.errors(include_url=False)[0]
    loc = err.get("loc", ())
    field = str(loc[0]) if loc else None
    kind = err.get("type", "")
    if kind.endswith("_type") or kind.endswith("_parsing"):
        reason = Reason.WRONG_TYPE
    else:
        reason = _TYPE_REASONS.get(kind, Reason.INVALID)
    return RejectedRecord(reason, f"{field}: {err.get('msg', 'invalid')}", field)


def _validate(model: type[BaseModel], data: dict[str, Any]) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise rejection(exc) from None


_MODELS: dict[int, tuple[UseCaseSpec, type[BaseModel]]] = {}


def _event_model(spec: UseCaseSpec) -> type[BaseModel]:
    """``event_model(spec)`` once per spec object: it keys its own cache by the spec's JSON,
    whose dump cost a tenth of ingestion's CPU when done per event."""
    cached = _MODELS.get(id(spec))
    if cached is None or cached[0] is not spec:
        cached = _MODELS[id(spec)] = (spec, event_model(spec))
    return cached[1]


def check_event_time(t: float, now: float, max_past_s: float, max_future_s: float) -> None:
    if t > now + max_future_s or t < now - max_past_s:
        raise RejectedRecord(
            Reason.EVENT_TIME_OUT_OF_BOUNDS,
            f"event_time {t:.0f} is outside [now-{max_past_s:.0f}s, now+{max_future_s:.0f}s]",
            "event_time",
        )


def validate_event(raw: bytes, spec: UseCaseSpec, now: float) -> dict[str, Any]:
    """events.raw bytes -> the events.valid record (event_time as epoch seconds)."""
    data = check_schema_version(parse_object(raw, spec.event.max_payload_bytes), spec.event.schema_version)
    event = _validate(_event_model(spec), data)
    check_event_time(event.event_time, now, spec.event.max_past_s, spec.event.max_future_s)  # type: ignore[attr-defined]
    return {**event.model_dump(), "ingested_at": now}


def validate_label(raw: bytes, spec: UseCaseSpec, now: float) -> dict[str, Any]:
    """labels.raw bytes -> the labels.valid record."""
    data = check_schema_version(parse_object(raw, spec.event.max_payload_bytes), 1)
    label = _validate(Label, data)
    check_event_time(label.event_time, now, spec.event.max_past_s, spec.event.max_future_s)  # type: ignore[attr-defined]
    return label.model_dump()
