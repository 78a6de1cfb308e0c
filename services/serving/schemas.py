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
