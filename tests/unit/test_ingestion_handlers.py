"""Ingestion validation: every rejection has the right reason code and field."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

from services.ingestion.handlers import validate_event, validate_label
from shared import codec
from shared.errors import Reason, RejectedRecord
from shared.spec import load_spec

SPEC = load_spec()
NOW = 1_800_000_000.0


def event(**overrides: object) -> dict:
    base = {"event_id": "e1", "entity_id": "c1", "event_time": NOW - 5, "amount": 12.5,
            "merchant_category": "grocery", "country": "US", "channel": "pos"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not ...}


def test_valid_event_is_normalised() -> None:
    out = validate_event(codec.dumps(event()), SPEC, NOW)
    assert out == {"schema_version": 1, "event_id": "e1", "entity_id": "c1", "event_time": NOW - 5,
                   "amount": 12.5, "merchant_category": "grocery", "country": "US",
                   "channel": "pos", "ingested_at": NOW}


@pytest.mark.parametrize("stamp", ["2027-01-15T08:00:00Z", "2027-01-15T09:00:00+01:00"])
def test_rfc3339_parsed_to_epoch_seconds(stamp: str) -> None:
    expected = datetime(2027, 1, 15, 8, 0, tzinfo=timezone.utc).timestamp()
    out = validate_event(codec.dumps(event(event_time=stamp)), SPEC, expected)
    assert out["event_time"] == expected


CASES = [
    (b"{not json", Reason.INVALID_JSON, None),
    (b"[1, 2]", Reason.NOT_AN_OBJECT, None),
    (b'{"event_id": "e1", "amount": NaN}', Reason.NON_FINITE, None),
    (b'{"event_id": "e1", "amount": Infinity}', Reason.NON_FINITE, None),
    (b'{"event_id": "e1", "amount": 1e999}', Reason.NON_FINITE, None),
    (codec.dumps(event(amount="12.5")), Reason.WRONG_TYPE, "amount"),
    (codec.dumps(event(amount=True)), Reason.WRONG_TYPE, "amount"),
    (codec.dumps(event(amount=-1)), Reason.OUT_OF_RANGE, "amount"),
    (codec.dumps(event(channel="telepathy")), Reason.NOT_ALLOWED, "channel"),
    (codec.dumps(event(country="usa")), Reason.BAD_FORMAT, "country"),
    (codec.dumps(event(merchant_category="x" * 40)), Reason.TOO_LONG, "merchant_category"),
    (codec.dumps(event(event_id=...)), Reason.MISSING_FIELD, "event_id"),
    (codec.dumps(event(entity_id=7)), Reason.WRONG_TYPE, "entity_id"),
    (codec.dumps(event(schema_version=2)), Reason.UNKNOWN_SCHEMA_VERSION, "schema_version"),
    (codec.dumps(event(schema_version="1")), Reason.WRONG_TYPE, "schema_version"),
    (codec.dumps(event(event_time=NOW + 10 * 86400)), Reason.EVENT_TIME_OUT_OF_BOUNDS, "event_time"),
    (codec.dumps(event(event_time="yesterday")), Reason.BAD_FORMAT, "event_time"),
    (b"\xff\xfe\x00garbage", Reason.INVALID_JSON, None),
    (b"x" * (SPEC.event.max_payload_bytes + 1), Reason.PAYLOAD_TOO_LARGE, None),
]


@pytest.mark.parametrize(("raw", "reason", "field"), CASES)
def test_bad_events_rejected_with_reason_and_field(raw: bytes, reason: Reason, field: str | None) -> None:
    with pytest.raises(RejectedRecord) as info:
        validate_event(raw, SPEC, NOW)
    assert info.value.reason == reason
    assert info.value.field == field
    assert info.value.message


def test_unknown_extra_fields_are_ignored_not_rejected() -> None:
    out = validate_event(codec.dumps(event(extra_field="x")), SPEC, NOW)
    assert "extra_field" not in out


def test_label_valid_and_invalid() -> None:
    ok = validate_label(codec.dumps({"prediction_id": "p1", "label": True, "event_time": NOW}), SPEC, NOW)
    assert ok["label"] is True and ok["prediction_id"] == "p1"
    num = validate_label(codec.dumps({"prediction_id": "p1", "label": 0.5, "event_time": NOW}), SPEC, NOW)
    assert num["label"] == 0.5
    with pytest.raises(RejectedRecord) as info:
        validate_label(codec.dumps({"prediction_id": "p1", "label": "yes", "event_time": NOW}), SPEC, NOW)
    assert info.value.field == "label" and info.value.reason == Reason.WRONG_TYPE
    with pytest.raises(RejectedRecord) as info:
        validate_label(codec.dumps({"label": True, "event_time": NOW}), SPEC, time.time())
    assert info.value.field == "prediction_id" and info.value.reason == Reason.MISSING_FIELD
