"""Machine-readable rejection reasons shared by ingestion, serving and the DLQ tools."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Why a record was rejected. Stable strings: dashboards and `rivulet dlq` group by them."""

    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    OUT_OF_RANGE = "out_of_range"
    NOT_ALLOWED = "not_allowed"
    TOO_LONG = "too_long"
    BAD_FORMAT = "bad_format"
    NON_FINITE = "non_finite"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNKNOWN_SCHEMA_VERSION = "unknown_schema_version"
    EVENT_TIME_OUT_OF_BOUNDS = "event_time_out_of_bounds"
    KEY_MISMATCH = "key_mismatch"
    LATE_EVENT = "late_event"
    INVALID = "invalid"


class RejectedRecord(Exception):
    """A record failed validation. Carries the reason code, the field (or None) and a message."""

    def __init__(self, reason: Reason, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.field = field
        self.message = message

    def as_dict(self) -> dict[str, str | None]:
        return {"reason": self.reason.value, "field": self.field, "message": self.message}
