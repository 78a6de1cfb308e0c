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
from shared.contracts import Id, Scalar, request_model
from shared.redis_keys import EVENT_TIME_FIELD
from shared.spec import UseCaseSpec

FEATURES_UNAVAILABLE = "features_unavailable"
STALE_FEATURES = "stale_features"
NON_FINITE_MSG = "numbers must be finite: NaN, Infinity and overflowing values such as 1e999 are not allowed"


class RequestError(Exception):
    """A /predict body was refused; ``detail`` is FastAPI-shaped ({loc, msg, type}) and safe to echo."""

    def __init__(self, status: int, detail: list[dict[str, Any]]) -> None:
        super().__init__(detail[0]["msg"] if detail else "invalid request")
        self.status = status
        self.detail = detail


def error(loc: list[str | int], msg: str, type_: str) -> dict[str, Any]:
    return {"loc": loc, "msg": msg, "type": type_}


def build_request_model(spec: UseCaseSpec) -> type[BaseModel]:
    """The /predict body: an entity id plus the spec's request-time fields (all optional)."""
    fields_model = request_model(spec)
    return create_model(  # type: ignore[call-overload,no-any-return]
        "PredictRequest",
        __config__=ConfigDict(frozen=True, extra="forbid"),
        entity_id=(Id, Field(description=f"the {spec.entity} to score")),
        features=(fields_model, Field(default_factory=fields_model, description="request-time fields")),
    )


def build_batch_model(item_model: type[BaseModel], max_items: int) -> type[BaseModel]:
    """The /predict/batch body: ``{"items": [<a /predict body>, ...]}``, 1..max_items items."""
    return create_model(  # type: ignore[call-overload,no-any-return]
        "PredictBatchRequest",
        __config__=ConfigDict(frozen=True, extra="forbid"),
        items=(list[item_model], Field(min_length=1, max_length=max_items,  # type: ignore[valid-type]
                                       description=f"1 to {max_items} entities to score")),
    )


def too_large(size: int, limit: int) -> RequestError:
    msg = f"request body is at least {size} bytes; the limit is {limit} bytes"
    return RequestError(413, [error(["body"], msg, "payload_too_large")])


def parse_request(body: bytes, model: type[BaseModel], max_bytes: int) -> dict[str, Any]:
    """Size cap, then strict JSON, then the request model. Raises :class:`RequestError`.

    Returns the parsed JSON itself once the model accepted it: strict types mean the
    validated values ARE the input values, so nothing is gained by dumping the model again."""
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
        model.model_validate(data)
    except ValidationError as exc:
        raise RequestError(422, validation_details(exc.errors())) from None
    return data


def request_fields(item: Mapping[str, Any]) -> dict[str, Any]:
    """The non-null request-time fields of one validated item."""
    return {k: v for k, v in (item.get("features") or {}).items() if v is not None}


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
        field = field_loc(tuple(err.get("loc", ())))
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


def field_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Cut a pydantic loc to the field: ``("items", 3, "features", "amount", "float")`` ->
    ``("items", 3, "features", "amount")``."""
    if loc[:1] == ("items",) and len(loc) > 2 and isinstance(loc[1], int):
        return ("items", loc[1], *field_loc(loc[2:]))
    return loc[:2] if loc[:1] == ("features",) else loc[:1]


def safe_details(errors: Any) -> list[dict[str, Any]]:
    """Any pydantic/FastAPI error list reduced to {loc, msg, type}: the input is never echoed."""
    return [error([p if isinstance(p, (str, int)) else str(p) for p in e.get("loc", ())],
                  str(e.get("msg", "invalid value")), str(e.get("type", "invalid"))) for e in errors]


def parse_feature_hash(raw: Mapping[str, Any], spec: UseCaseSpec) -> tuple[dict[str, float], float | None]:
    """The Redis feature hash -> (known features as finite floats, event time of last event).

    Unknown fields and unparsable/non-finite values are skipped: a bad value must not fail a
    prediction, it becomes "missing" (default or the model's missing flag).
    """
    values: dict[str, float] = {}
    for name in spec.feature_names:  # look up the known names: cheaper than scanning the hash
        value = raw.get(name)
        if value is not None and (number := _to_float(value)) is not None:
            values[name] = number
    event_time = raw.get(EVENT_TIME_FIELD)
    return values, None if event_time is None else _to_float(event_time)


def unpack_hashes(packed: Any, count: int) -> list[dict[str, str]]:
    """The batch script's reply (a JSON list of flat HGETALL arrays; cjson writes an empty one
    as ``{}``) -> one ``{field: value}`` per key. Anything malformed reads as "no features"."""
    if not isinstance(packed, list) or len(packed) != count:
        return [{} for _ in range(count)]
    return [dict(zip(flat[::2], flat[1::2])) if isinstance(flat, list) else {} for flat in packed]


def _to_float(value: Any) -> float | None:
    try:
        number = float(value)  # str or bytes
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


def feature_table(spec: UseCaseSpec) -> tuple[tuple[str, float | None], ...]:
    return tuple((f.name, f.default) for f in spec.features)


def inputs(raw_hash: Mapping[str, Any], item: Mapping[str, Any], table: tuple[tuple[str, float | None], ...],
           model_inputs: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, Scalar], float | None]:
    """The hot path's one pass over a request item: exactly ``merge(with_defaults(
    parse_feature_hash(...)), request_fields(item))`` (a unit test checks it), without the
    intermediate dicts. Returns (raw, used, event time)."""
    raw: dict[str, Any] = {}
    get = raw_hash.get
    for name, default in table:
        value = get(name)
        if value is not None:
            try:  # _to_float inlined: this loop runs once per feature per prediction
                number = float(value)
            except (TypeError, ValueError):
                number = math.nan
            if number - number == 0.0:  # finite (NaN and +-inf give NaN)
                raw[name] = number
                continue
        if default is not None:
            raw[name] = default
    fields = item.get("features")
    if fields:
        for key, value in fields.items():
            if value is not None:
                raw[key] = value
    event_time = raw_hash.get(EVENT_TIME_FIELD)
    return raw, {name: raw.get(name) for name in model_inputs}, None if event_time is None else _to_float(event_time)


def feature_age(event_time: float | None, now: float) -> float | None:
    return None if event_time is None else now - event_time


def freshness(event_time: float | None, now: float, max_age_s: float) -> tuple[float | None, tuple[str, ...]]:
    """(feature age, ("stale_features",) when older than ``max_age_s``; 0 turns the check off)."""
    age = feature_age(event_time, now)
    stale = max_age_s > 0 and age is not None and age > max_age_s
    return age, ((STALE_FEATURES,) if stale else ())


def build_record(*, prediction_id: str, entity_id: str, version: int, used: dict[str, Scalar],
                 score: float, threshold: float, now: float, latency_ms: float,
                 event_time: float | None, degraded: tuple[str, ...], spec: UseCaseSpec,
                 role: str = "champion", age: float | None = None) -> dict[str, Any]:
    """A ``predictions`` record (PredictionRecord's JSON shape) as a plain dict: every value is
    already validated or computed here, so a per-request pydantic model would only cost time."""
    return {
        "schema_version": 1,
        "prediction_id": prediction_id,
        "entity_id": entity_id,
        "model_version": version,
        "role": role,
        "features": used,
        "score": score,
        "label": score >= threshold,
        "threshold": threshold,
        "served_at": now,
        "latency_ms": latency_ms,
        "feature_set_version": spec.feature_set_version,
        "feature_event_time": event_time,
        "feature_age_s": feature_age(event_time, now) if age is None else age,
        "degraded": list(degraded),
    }


RESPONSE_KEYS = ("prediction_id", "entity_id", "model_version", "role", "score", "label", "threshold",
                 "feature_age_s", "degraded", "served_at")


def response_body(record: Mapping[str, Any]) -> dict[str, Any]:
    return {key: record[key] for key in RESPONSE_KEYS}
