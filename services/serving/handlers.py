"""Pure request handling for serving: body -> validated request, Redis hash -> features,
merge, and the prediction record. No FastAPI, Redis or Kafka here, so tests drive it directly.

Why parse the body ourselves: FastAPI's own JSON parsing accepts NaN/Infinity/1e999 and then
fails (500) echoing them back. orjson rejects them, and every error here names the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from shared import codec
from shared.contracts import Id, PredictionRecord, Scalar, request_model
from shared.redis_keys import EVENT_TIME_FIELD
from shared.spec import UseCaseSpec

FEATURES_UNAVAILABLE = "features_unavailable"
NON_FINITE_MSG = "numbers must be finite: NaN, Infinity and overflowing values such as 1e999 are not allowed"


class RequestError(Exception):
    """A /predict body was refused; ``detail`` is FastAPI-shaped ({loc, msg, type}) and safe to echo."""

    def __init__(self, status: int, detail: list[dict[str, Any]]) -> None:
        super().__init__(detail[0]["msg"] if detail else "invalid request")
        self.status = status
        self.detail = detail


def error(loc: list[str | int], msg: str, type_: str) -> dict[str, Any]:
    return {"loc": loc, "msg": msg, "type": type_}


class ErrorDetail(BaseModel):
    """One refused field (documentation model for the OpenAPI page)."""

    loc: list[str | int]
    msg: str
    type: str


class ErrorResponse(BaseModel):
    detail: list[ErrorDetail]


class PredictResponse(BaseModel):
    """What /predict answers (documentation model; the record on ``predictions`` has more)."""

    prediction_id: str
    entity_id: str
    model_version: int
    score: float
    label: bool
    threshold: float
    feature_age_s: float | None
    degraded: list[str]
    served_at: float


def build_request_model(spec: UseCaseSpec) -> type[BaseModel]:
    """The /predict body: an entity id plus the spec's request-time fields (all optional)."""
    fields_model = request_model(spec)
    return create_model(  # type: ignore[call-overload,no-any-return]
        "PredictRequest",
        __config__=ConfigDict(frozen=True, extra="forbid"),
        entity_id=(Id, Field(description=f"the {spec.entity} to score")),
        features=(fields_model, Field(default_factory=fields_model, description="request-time fields")),
    )


def too_large(size: int, limit: int) -> RequestError:
    msg = f"request body is at least {size} bytes; the limit is {limit} bytes"
    return RequestError(413, [error(["body"], msg, "payload_too_large")])


def parse_request(body: bytes, model: type[BaseModel], max_bytes: int) -> Any:
    """Size cap, then strict JSON, then the request model. Raises :class:`RequestError`."""
    if len(body) > max_bytes:
        raise too_large(len(body), max_bytes)
    if not body.strip():
        raise RequestError(422, [error(["body"], "request body is empty; expected a JSON object", "missing")])
    try:
        data = codec.loads(body)
    except codec.JSONDecodeError as exc:
        raise RequestError(422, [diagnose_json(body, exc)]) from None
    if not isinstance(data, dict):
        raise RequestError(422, [error(["body"], "request body must be a JSON object", "not_an_object")])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestError(422, validation_details(exc.errors())) from None


def diagnose_json(body: bytes, exc: Exception) -> dict[str, Any]:
    """Name the field holding a non-finite number if that is why orjson refused the body."""
    try:
        lenient = json.loads(body)  # accepts NaN/Infinity and turns 1e999 into inf
    except Exception:  # noqa: BLE001 - any failure means "plain invalid JSON"
        return error(["body"], f"invalid JSON: {exc}", "invalid_json")
    path = next(_non_finite_paths(lenient, []), None)
    if path is None:  # orjson is stricter elsewhere too (e.g. lone surrogates)
        return error(["body"], f"invalid JSON: {exc}", "invalid_json")
    return error(path or ["body"], NON_FINITE_MSG, "non_finite")


def _non_finite_paths(value: Any, path: list[str | int]) -> Iterator[list[str | int]]:
    if isinstance(value, float) and not math.isfinite(value):
        yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _non_finite_paths(item, [*path, key])
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _non_finite_paths(item, [*path, i])


def validation_details(errors: list[Any]) -> list[dict[str, Any]]:
    """pydantic errors -> {loc, msg, type} naming the field; never echoes the input.

    The loc is cut to the field (``["features", "amount"]``): pydantic appends union-member
    tags (``float``/``int``) that mean nothing to a client; one entry per field is kept.
    """
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for err in errors:
        loc = tuple(err.get("loc", ()))
        field = loc[:2] if loc[:1] == ("features",) else loc[:1]
        if field in out:
            continue
        kind = str(err.get("type", "invalid"))
        msg = str(err.get("msg", "invalid value"))
        if kind == "extra_forbidden":
            msg = f"unknown field {field[-1]!r}"
        elif kind == "missing":
            msg = "field required"
        out[field] = error(list(field) or ["body"], msg, kind)
    return list(out.values())


def safe_details(errors: Any) -> list[dict[str, Any]]:
    """Any pydantic/FastAPI error list reduced to {loc, msg, type}: the input is never echoed."""
    return [error([p if isinstance(p, (str, int)) else str(p) for p in e.get("loc", ())],
                  str(e.get("msg", "invalid value")), str(e.get("type", "invalid"))) for e in errors]


def parse_feature_hash(raw: Mapping[Any, Any], spec: UseCaseSpec) -> tuple[dict[str, float], float | None]:
    """The Redis feature hash -> (known features as finite floats, event time of last event).

    Unknown fields and unparsable/non-finite values are skipped: a bad value must not fail a
    prediction, it becomes "missing" (default or the model's missing flag).
    """
    known = set(spec.feature_names)
    values: dict[str, float] = {}
    event_time: float | None = None
    for key, value in raw.items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        if name != EVENT_TIME_FIELD and name not in known:
            continue
        number = _to_float(value)
        if number is None:
            continue
        if name == EVENT_TIME_FIELD:
            event_time = number
        else:
            values[name] = number
    return values, event_time


def _to_float(value: Any) -> float | None:
    try:
        number = float(value.decode() if isinstance(value, bytes) else value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def with_defaults(values: Mapping[str, float], spec: UseCaseSpec) -> dict[str, float]:
    """Every spec feature: its online value, else its spec default; absent if neither."""
    out: dict[str, float] = {}
    for feat in spec.features:
        if feat.name in values:
            out[feat.name] = values[feat.name]
        elif feat.default is not None:
            out[feat.name] = feat.default
    return out


def merge(online: Mapping[str, Any], request_fields: Mapping[str, Any],
          spec: UseCaseSpec) -> tuple[dict[str, Any], dict[str, Scalar]]:
    """raw = online features overlaid with the request's (non-null) fields; ``used`` = the
    model inputs exactly as scored (None = missing), which is what the record carries."""
    raw = {**online, **{k: v for k, v in request_fields.items() if v is not None}}
    used: dict[str, Scalar] = {name: raw.get(name) for name in spec.model_inputs}
    return raw, used


def feature_age(event_time: float | None, now: float) -> float | None:
    return None if event_time is None else now - event_time


def build_record(*, prediction_id: str, entity_id: str, version: int, used: dict[str, Scalar],
                 score: float, threshold: float, now: float, latency_ms: float,
                 event_time: float | None, degraded: tuple[str, ...], spec: UseCaseSpec) -> PredictionRecord:
    return PredictionRecord(
        prediction_id=prediction_id,
        entity_id=entity_id,
        model_version=version,
        features=used,
        score=score,
        label=score >= threshold,
        threshold=threshold,
        served_at=now,
        latency_ms=latency_ms,
        feature_set_version=spec.feature_set_version,
        feature_event_time=event_time,
        feature_age_s=feature_age(event_time, now),
        degraded=degraded,
    )


def response_body(record: PredictionRecord) -> dict[str, Any]:
    return {
        "prediction_id": record.prediction_id,
        "entity_id": record.entity_id,
        "model_version": record.model_version,
        "score": record.score,
        "label": record.label,
        "threshold": record.threshold,
        "feature_age_s": record.feature_age_s,
        "degraded": list(record.degraded),
        "served_at": record.served_at,
    }


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A model's JSON schema with ``$defs`` inlined, for ``openapi_extra`` (no dangling refs).

    pydantic emits range constraints on a union (``StrictFloat | StrictInt``) as ``ge``/``le``;
    they are renamed to the JSON-schema keywords so the docs show the range.
    """
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any, in_properties: bool = False) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.split("/")[-1]])
            if in_properties:  # keys are field names, not keywords
                return {k: resolve(v) for k, v in node.items()}
            return {_KEYWORDS.get(k, k): resolve(v, k == "properties") for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)  # type: ignore[no-any-return]


_KEYWORDS = {"ge": "minimum", "le": "maximum", "gt": "exclusiveMinimum", "lt": "exclusiveMaximum"}
