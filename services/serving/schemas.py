"""OpenAPI documentation: response models and the inlined request-body schemas.

The routes answer with plain dicts (no per-request pydantic); these models only describe them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    """One refused field (documentation model for the OpenAPI page)."""

    loc: list[str | int]
    msg: str
    type: str


class ErrorResponse(BaseModel):
    detail: list[ErrorDetail]


PREDICT_RESPONSE_EXAMPLE = {
    "prediction_id": "5f0c1e9a7b3d4c2e8f6a1b0c9d8e7f6a", "entity_id": "card-42", "model_version": 3,
    "role": "champion", "score": 0.0831, "label": False, "threshold": 0.5, "feature_age_s": 12.4,
    "degraded": [], "served_at": 1767225600.0}


class PredictResponse(BaseModel):
    """What /predict answers (documentation model; the record on ``predictions`` has more)."""

    prediction_id: str
    entity_id: str
    model_version: int
    role: str = Field(description="champion, or challenger when a canary answered")
    score: float
    label: bool
    threshold: float
    feature_age_s: float | None = Field(description="seconds since the event behind the online features")
    degraded: list[str] = Field(description="empty, or features_unavailable / stale_features")
    served_at: float

    model_config = {"json_schema_extra": {"examples": [PREDICT_RESPONSE_EXAMPLE]}}


class PredictBatchResponse(BaseModel):
    """What /predict/batch answers: one result per item, in request order."""

    items: list[PredictResponse]


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


class ModelDescription(BaseModel):
    """A model that answers (champion) or is being rolled out (challenger)."""

    version: int
    threshold: float = Field(description="decision threshold the model was validated with")
    metrics: dict[str, float]
    since: float = Field(description="when this version started serving in this role")
    lineage: dict[str, Any] = Field(description="its announcement on `models` (parent, trigger, trained_on, "
                                                "metrics, created_at, who, reason, ...) minus the artifact "
                                                "and the reference profile")


class ModelsResponse(BaseModel):
    """What /models answers (documentation model)."""

    champion: ModelDescription
    challenger: ModelDescription | None
    routing: dict[str, Any] = Field(description="strategy (full/shadow/canary), challenger_share, shadow, sticky_by")
    previous: list[int] = Field(description="earlier champions, oldest first (what rollback returns to)")
    versions: list[int] = Field(description="versions loaded by this replica")
    history: list[dict[str, Any]] = Field(description="recent model events and their outcome here")
    caught_up: bool = Field(description="the `models` topic has been replayed to its end")
    lineage: dict[str, dict[str, Any]] = Field(description="version -> its latest announcement (lineage)")


class ReadyResponse(BaseModel):
    ready: bool
    model_loaded: bool
    redis: bool
    model_version: int


def example_item(fields_schema: dict[str, Any], entity_id: str = "card-42") -> dict[str, Any]:
    """A /predict body built from the request model's schema (first allowed value, a value in
    range); the caller keeps it only if the request model accepts it."""
    features: dict[str, Any] = {}
    for name, prop in fields_schema.get("properties", {}).items():
        options = _flatten(prop)
        kinds = {o.get("type") for o in options}
        enum = next((o["enum"] for o in options if "enum" in o), None)
        if enum:
            features[name] = enum[0]
        elif kinds & {"number", "integer"}:
            bounded = next((o for o in options if "minimum" in o or "maximum" in o), {})
            features[name] = float(min(max(42.5, bounded.get("minimum", 42.5)), bounded.get("maximum", 42.5)))
        elif "string" in kinds:
            pattern = next((o.get("pattern") for o in options if o.get("pattern")), None)
            features[name] = _matching(pattern, name)
    return {"entity_id": entity_id, "features": features}


def _flatten(node: dict[str, Any]) -> list[dict[str, Any]]:
    """A property's alternatives, nested ``anyOf`` included (each also as given, for its bounds)."""
    out = [node]
    for option in node.get("anyOf", []):
        out += _flatten(option)
    return out


def _matching(pattern: str | None, name: str) -> str:
    import re

    for candidate in ("grocery", "US", name, "example", "EXAMPLE", "a"):
        if pattern is None or re.fullmatch(pattern, candidate):
            return candidate
    return "example"
