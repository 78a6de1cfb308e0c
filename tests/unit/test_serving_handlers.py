"""Pure serving handlers: body validation (errors name the field), Redis hash parsing, merge,
the record, and the model registry's swap rules."""

from __future__ import annotations

import base64
import math

import pytest

from services.serving import handlers
from services.serving.registry import ModelRegistry
from shared import codec, modeling
from shared.contracts import ModelEvent, PredictionRecord
from services.serving.schemas import inline_schema
from shared.spec import load_spec

SPEC = load_spec()
MODEL = handlers.build_request_model(SPEC)
LIMIT = 1024
SECRET = "unit-secret"


def refused(body: bytes) -> handlers.RequestError:
    with pytest.raises(handlers.RequestError) as info:
        handlers.parse_request(body, MODEL, LIMIT)
    return info.value


def test_valid_body_parses_with_optional_fields() -> None:
    req = handlers.parse_request(b'{"entity_id": "c1", "features": {"amount": 12.5, "channel": "pos"}}',
                                 MODEL, LIMIT)
    assert req["entity_id"] == "c1"
    assert handlers.request_fields(req) == {"amount": 12.5, "channel": "pos"}
    bare = handlers.parse_request(b'{"entity_id": "c2"}', MODEL, LIMIT)
    assert handlers.request_fields(bare) == {}
    nulls = handlers.parse_request(b'{"entity_id": "c3", "features": {"amount": null}}', MODEL, LIMIT)
    assert handlers.request_fields(nulls) == {}


@pytest.mark.parametrize(("body", "loc", "kind"), [
    (b'{"entity_id": "c", "features": {"amount": NaN}}', ["features", "amount"], "non_finite"),
    (b'{"entity_id": "c", "features": {"amount": Infinity}}', ["features", "amount"], "non_finite"),
    (b'{"entity_id": "c", "features": {"amount": -Infinity}}', ["features", "amount"], "non_finite"),
    (b'{"entity_id": "c", "features": {"amount": 1e999}}', ["features", "amount"], "non_finite"),
    (b'{"entity_id": "c", "features": {"amount": "12"}}', ["features", "amount"], "float_type"),
    (b'{"entity_id": "c", "features": {"amount": -1}}', ["features", "amount"], "greater_than_equal"),
    (b'{"entity_id": "c", "features": {"amount": true}}', ["features", "amount"], "float_type"),
    (b'{"entity_id": "c", "features": {"channel": "fax"}}', ["features", "channel"], "literal_error"),
    (b'{"entity_id": "c", "features": {"country": "usa"}}', ["features", "country"], "string_pattern_mismatch"),
    (b'{"entity_id": "c", "features": {"colour": "red"}}', ["features", "colour"], "extra_forbidden"),
    (b'{"entity_id": "c", "extra": 1}', ["extra"], "extra_forbidden"),
    (b'{"features": {}}', ["entity_id"], "missing"),
    (b'{"entity_id": ""}', ["entity_id"], "string_too_short"),
    (b'{"entity_id": 7}', ["entity_id"], "string_type"),
    (b'{"entity_id": "c", "features": [1]}', ["features"], "model_type"),
    (b'{"entity_id": "c"', ["body"], "invalid_json"),
    (b'[1, 2]', ["body"], "not_an_object"),
    (b'   ', ["body"], "missing"),
])
def test_bad_bodies_name_the_field(body: bytes, loc: list[str], kind: str) -> None:
    err = refused(body)
    assert err.status == 422
    assert err.detail[0]["loc"] == loc
    assert err.detail[0]["type"] == kind
    assert err.detail[0]["msg"]
    codec.dumps({"detail": err.detail})  # always serialisable: nothing non-finite echoed


def test_union_errors_collapse_to_one_entry_per_field() -> None:
    err = refused(b'{"entity_id": "c", "features": {"amount": "x", "channel": "fax"}}')
    assert [d["loc"] for d in err.detail] == [["features", "amount"], ["features", "channel"]]
    assert "'colour'" in refused(b'{"entity_id": "c", "features": {"colour": 1}}').detail[0]["msg"]


def test_body_over_the_limit_is_413_before_parsing() -> None:
    err = refused(b'{"entity_id": "' + b"x" * LIMIT + b'"}')
    assert err.status == 413
    assert err.detail[0]["type"] == "payload_too_large" and str(LIMIT) in err.detail[0]["msg"]


def test_safe_details_never_echo_input() -> None:
    out = handlers.safe_details([{"loc": ("body", "a"), "msg": "bad", "type": "t", "input": math.nan}])
    assert out == [{"loc": ["body", "a"], "msg": "bad", "type": "t"}]


def test_feature_hash_parsing_keeps_known_finite_values() -> None:
    raw = {"txn_count_5m": "3.0", "amount_sum_5m": "nan", "amount_max_1h": "oops", "unknown": "1",
           "amount_mean_24h": b"42.5", "_event_time": "1700000000.5", "_written_at": "1700000001"}
    values, event_time = handlers.parse_feature_hash(raw, SPEC)
    assert values == {"txn_count_5m": 3.0, "amount_mean_24h": 42.5}
    assert event_time == 1700000000.5
    assert handlers.parse_feature_hash({}, SPEC) == ({}, None)


def test_defaults_fill_only_features_that_have_one() -> None:
    filled = handlers.with_defaults({"txn_count_5m": 2.0, "amount_max_5m": 9.0}, SPEC)
    assert filled["txn_count_5m"] == 2.0 and filled["amount_max_5m"] == 9.0
    assert filled["txn_count_1h"] == 0.0  # spec default
    assert "amount_mean_24h" not in filled and "secs_since_prev_txn" not in filled  # no default


def test_merge_request_fields_win_and_record_holds_model_inputs_only() -> None:
    online = {"txn_count_5m": 4.0, "amount_mean_24h": 10.0, "amount_mean_5m": 1.0}
    raw, used = handlers.merge(online, {"amount": 99.0, "channel": "pos", "country": None}, SPEC)
    assert raw["amount"] == 99.0 and raw["txn_count_5m"] == 4.0 and "country" not in raw
    assert set(used) == set(SPEC.model_inputs)
    assert used["amount"] == 99.0 and used["channel"] == "pos" and used["amount_mean_24h"] == 10.0
    assert used["country"] is None and used["secs_since_prev_txn"] is None
    assert "amount_mean_5m" not in used  # a feature the model does not use


def test_record_label_and_age() -> None:
    _, used = handlers.merge({}, {"amount": 5.0}, SPEC)
    rec = handlers.build_record(prediction_id="p", entity_id="e", version=3, used=used, score=0.5,
                                threshold=0.5, now=110.0, latency_ms=1.0, event_time=100.0,
                                degraded=(), spec=SPEC)
    assert rec["label"] is True and rec["feature_age_s"] == 10.0 and rec["model_version"] == 3
    assert PredictionRecord.model_validate(codec.loads(codec.dumps(rec))).role == "champion"
    body = handlers.response_body(rec)
    assert {"prediction_id", "model_version", "score", "label", "threshold", "feature_age_s",
            "degraded", "role"} <= set(body)
    assert handlers.feature_age(None, 5.0) is None


def _trained(seed_rows: int = 60) -> object:
    rows = [({"amount": float(i), "channel": "pos"}, i % 3 == 0) for i in range(seed_rows)]
    return modeling.train(SPEC, rows)


def _promoted(version: int, artifact: bytes, signature: str | None) -> ModelEvent:
    return ModelEvent(event="promoted", version=version, created_at=1.0, threshold=0.3,
                      metrics={"accuracy": 0.9}, artifact_b64=base64.b64encode(artifact).decode(),
                      artifact_sha256=modeling.sha256(artifact), signature=signature)


def test_registry_promotes_refuses_and_rolls_back() -> None:
    reg = ModelRegistry(SPEC, SECRET)
    assert reg.current.version == 0 and reg.current.threshold == SPEC.model.threshold
    artifact = modeling.serialize(_trained())
    assert reg.apply(_promoted(1, artifact, modeling.sign(artifact, SECRET))) == "serving"
    v1 = reg.current
    assert v1.version == 1 and v1.threshold == 0.3 and v1.metrics == {"accuracy": 0.9}
    assert reg.apply(_promoted(2, artifact, modeling.sign(artifact, "wrong-secret"))) == "refused"
    assert reg.apply(_promoted(3, artifact, None)) == "refused"
    assert reg.current is v1  # old model keeps serving
    assert reg.apply(ModelEvent(event="rolled_back", version=9, created_at=2.0)) == "refused"
    assert reg.apply(ModelEvent(event="rolled_back", version=0, created_at=2.0)) == "serving"
    assert reg.current.version == 0 and isinstance(reg.current.model, modeling.BaselineModel)
    assert reg.versions == [0, 1]
    assert [h["outcome"] for h in reg.history] == ["serving", "refused", "refused", "refused", "serving"]


def test_registry_refuses_artifact_whose_hash_does_not_match() -> None:
    reg = ModelRegistry(SPEC, SECRET)
    artifact = modeling.serialize(_trained())
    event = _promoted(1, artifact, modeling.sign(artifact, SECRET)).model_copy(update={"artifact_sha256": "0" * 64})
    assert reg.apply(event) == "refused" and reg.current.version == 0
    assert "sha256" in reg.history[-1]["reason"]


def test_openapi_body_schema_is_self_contained_and_shows_ranges() -> None:
    schema = inline_schema(MODEL)
    text = codec.dumps(schema).decode()
    assert "$ref" not in text and "$defs" not in text and '"ge"' not in text
    amount = schema["properties"]["features"]["properties"]["amount"]["anyOf"][0]
    assert amount["minimum"] == 0 and amount["maximum"] == 1_000_000
    assert schema["required"] == ["entity_id"] and schema["additionalProperties"] is False


def test_prediction_log_drops_and_counts_when_full_instead_of_blocking() -> None:
    from services.serving.background import PredictionLog

    drops: list[tuple[str, int]] = []
    plog = PredictionLog(size=2, batch=10, on_drop=lambda reason, n: drops.append((reason, n)))
    assert [plog.offer(b"k", b"v") for _ in range(3)] == [True, True, False]
    assert len(plog.queue) == 2 and plog.dropped["queue_full"] == 1 and drops == [("queue_full", 1)]
