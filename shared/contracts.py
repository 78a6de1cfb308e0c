"""One frozen pydantic model per topic. Every record carries ``schema_version``.

Consumers ignore unknown fields (producers may add fields freely); a record whose
``schema_version`` is newer than the consumer knows is rejected, never guessed at.
The event model is built from the use-case spec (:func:`event_model`) because its
domain fields belong to the use case, not to Rivulet.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ValidationError,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    create_model,
)

from shared import codec
from shared.errors import Reason, RejectedRecord
from shared.spec import FieldSpec, UseCaseSpec

SCHEMA_VERSION = 1
Id = Annotated[StrictStr, Field(min_length=1, max_length=128)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
Scalar = StrictBool | StrictInt | StrictFloat | StrictStr | None


def to_epoch(value: Any) -> Any:
    """Accept epoch seconds or an RFC 3339 string; normalise to epoch seconds (float)."""
    if isinstance(value, bool):
        raise ValueError("event_time must be epoch seconds or an RFC 3339 string")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError(f"not an RFC 3339 timestamp: {value[:40]!r}") from exc
        if parsed.tzinfo is None:
            raise ValueError("RFC 3339 timestamp needs a time zone (e.g. Z)")
        return parsed.timestamp()
    raise ValueError("event_time must be epoch seconds or an RFC 3339 string")


EventTime = Annotated[float, BeforeValidator(to_epoch), Field(allow_inf_nan=False, ge=0)]


class Contract(BaseModel):
    """Base of every topic contract: frozen, tolerant of added fields."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    schema_version: Literal[1] = 1


M = TypeVar("M", bound=BaseModel)


class EventBase(Contract):
    """events.raw / events.valid: the fixed part; domain fields come from the spec."""

    event_id: Id
    entity_id: Id
    event_time: EventTime


def _domain_field(spec: FieldSpec) -> tuple[Any, Any]:
    if spec.type == "str":
        kind: Any = Literal[tuple(spec.allowed)] if spec.allowed else StrictStr  # type: ignore[misc]
        info = Field(max_length=spec.max_length, pattern=spec.pattern) if not spec.allowed else Field()
    elif spec.type == "bool":
        kind, info = StrictBool, Field()
    else:
        kind = StrictInt if spec.type == "int" else StrictFloat | StrictInt
        info = Field(ge=spec.min, le=spec.max, allow_inf_nan=False)
    if not spec.required:
        # Constraints stay attached to the type so an optional field keeps its range/pattern.
        return Annotated[kind, info] | None, Field(default=None)
    return kind, info


def parse_record(model: type[M], value: bytes | None) -> M:
    """Raw bytes from an internal topic -> its contract. Raises RejectedRecord, never
    anything else, so a consumer can log or dead-letter one bad record and go on."""
    try:
        data = codec.loads(value or b"")
    except codec.JSONDecodeError as exc:
        raise RejectedRecord(Reason.INVALID_JSON, str(exc)[:200]) from None
    if not isinstance(data, dict):
        raise RejectedRecord(Reason.NOT_AN_OBJECT, "value is not a JSON object")
    if data.get("schema_version", 1) != SCHEMA_VERSION:
        raise RejectedRecord(Reason.UNKNOWN_SCHEMA_VERSION, f"schema_version {data['schema_version']!r}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or None
        raise RejectedRecord(Reason.INVALID, first["msg"], loc) from None


_EVENT_MODELS: dict[str, type[EventBase]] = {}


def event_model(spec: UseCaseSpec) -> type[EventBase]:
    """The events.raw contract for one use case (fixed envelope + the spec's domain fields)."""
    cache_key = spec.model_dump_json(include={"name", "event"})
    if cache_key not in _EVENT_MODELS:
        fields = {name: _domain_field(f) for name, f in spec.event.fields.items()}
        _EVENT_MODELS[cache_key] = create_model(  # type: ignore[call-overload]
            f"{spec.name.title().replace('_', '')}Event", __base__=EventBase, **fields
        )
    return _EVENT_MODELS[cache_key]


def request_model(spec: UseCaseSpec) -> type[BaseModel]:
    """The request-time fields of POST /predict: the spec's domain fields, all optional."""
    fields = {}
    for name, f in spec.event.fields.items():
        kind, info = _domain_field(f.model_copy(update={"required": False}))
        fields[name] = (kind, info)
    cfg = ConfigDict(frozen=True, extra="forbid")
    return create_model(f"{spec.name.title().replace('_', '')}RequestFields", __config__=cfg, **fields)  # type: ignore[call-overload]


class Label(Contract):
    """labels.raw / labels.valid: ground truth for one prediction, any time later."""

    prediction_id: Id
    label: StrictBool | Finite
    event_time: EventTime


class PredictionRecord(Contract):
    """predictions: what serving answered and exactly what it used to answer it."""

    prediction_id: Id
    entity_id: Id
    model_version: int
    role: Literal["champion", "challenger", "shadow"] = "champion"
    features: dict[str, Scalar]
    score: Finite
    label: bool
    threshold: float
    served_at: float
    latency_ms: float = 0.0
    feature_set_version: int = 1
    feature_event_time: float | None = None
    feature_age_s: float | None = None
    degraded: tuple[str, ...] = ()


class LabeledPrediction(PredictionRecord):
    """predictions.labeled: a prediction joined with its ground truth."""

    actual: bool | float
    label_event_time: float
    labeled_at: float
    revision: int = 1


class LabelMissing(PredictionRecord):
    """labels.missing: a prediction whose label did not arrive within spec.labels.maturity.

    Emitted once per prediction by the label ledger (at-least-once: dedupe by prediction_id).
    A label that arrives later goes to ``labels.unmatched`` (reason ``expired``), never joins.
    """

    status: Literal["label_missing"] = "label_missing"
    maturity_s: float
    expired_at: float


class UnmatchedLabel(Label):
    """labels.unmatched: a label that joined no prediction, and why.

    ``unknown_prediction``: no prediction with this id arrived within the label's own grace
    period; ``expired``: the prediction's maturity window had already closed.
    """

    reason: Literal["unknown_prediction", "expired"]
    unmatched_at: float
    model_version: int | None = None


class MetricsRecord(Contract):
    """metrics: a snapshot of online metrics for one model version (and optionally one slice).

    ``kind`` ``performance``: classification metrics over the last ``window`` labeled
    predictions (``estimated`` true: no labels yet, values estimated from calibrated scores);
    ``labels``: label coverage (joined / matured) and label delay quantiles. Snapshots are
    republished periodically; the latest per key wins.
    """

    kind: Literal["performance", "labels"]
    model_version: int
    slice: str | None = None  # e.g. "channel=online"; None = all predictions
    estimated: bool = False
    window: int = 0  # labeled predictions (or matured predictions for ``labels``) in the window
    metrics: dict[str, float] = Field(default_factory=dict)
    computed_at: float


class AlertWindow(BaseModel):
    model_config = ConfigDict(frozen=True)
    start: float
    end: float
    count: int


AlertKind = Literal["data_drift", "prediction_drift", "concept_drift", "data_quality"]


IncidentStatus = Literal["opened", "updated", "resolved"]
ProbableCause = Literal["upstream_data", "covariate_shift", "concept_drift", "prediction_drift"]


class DriftedFeature(BaseModel):
    """One test that crossed its threshold in the incident's latest evaluation.
    ``feature`` is null for the score, the error stream and upstream health checks."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    feature: str | None
    test: str
    statistic: float
    p_value: float | None = None


class DriftAlert(Contract):
    """drift.alerts: one message of a drift incident users can subscribe to.

    An incident (``incident_id``) is ``opened`` once, ``updated`` when what drifts changes
    and ``resolved`` after enough clean windows. The v1 fields (kind, feature, test,
    statistic, threshold, window) describe the incident's top finding."""

    alert_id: Id
    kind: AlertKind
    model_version: int
    feature: str | None
    test: str
    statistic: float
    p_value: float | None = None
    threshold: float
    window: AlertWindow
    detected_at: float
    severity: Literal["low", "medium", "high"] = "medium"
    message: str = ""
    incident_id: str | None = None
    status: IncidentStatus = "opened"
    top_features: tuple[DriftedFeature, ...] = ()
    probable_cause: ProbableCause | None = None
    # Served time from which the data looks changed (start of the first drifted window, or
    # the concept detector's cut point): retraining on a concept change starts here.
    change_point_at: float | None = None


class TrainingWindow(BaseModel):
    model_config = ConfigDict(frozen=True)
    start: float
    end: float
    count: int
    # Lineage (retrain): where the rows came from. ``offsets``: partition -> [first, last]
    # offset of ``topic`` among the rows; ``basis`` recent | change_point | since (a request's
    # start) | stateful (new since the parent's window); ``fallback``: why the window differs;
    # ``recency_half_life``: rows were weighted 2^(-age/half-life) (retrain.recency_half_life).
    topic: str | None = None
    offsets: dict[str, tuple[int, int]] | None = None
    basis: str | None = None
    since: float | None = None
    fallback: str | None = None
    recency_half_life: int | None = None


class ModelEvent(Contract):
    """models: registry events. ``promoted`` carries the signed artifact serving loads."""

    event: Literal["registered", "promoted", "rejected", "rolled_back"]
    version: int
    parent: int | None = None
    created_at: float
    trigger: str = ""
    reason: str = ""
    threshold: float = 0.5
    trained_on: TrainingWindow | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    champion_metrics: dict[str, float] = Field(default_factory=dict)
    reference_profile: dict[str, Any] | None = None
    artifact_b64: str | None = None
    artifact_sha256: str | None = None
    signature: str | None = None
    # Rollout (event "promoted"): full = becomes champion; shadow = scores every request,
    # logged as role "shadow", never answered; canary = answers ``share`` of entities.
    # Absent = full. ``who``: the person or service that asked (with ``reason`` as the why).
    strategy: Literal["full", "shadow", "canary"] | None = None
    share: float | None = Field(default=None, ge=0.0, le=1.0)
    who: str = ""
    # ``rolled_back`` that ends a rollout: the challenger it withdraws (``version`` stays champion).
    withdrawn: int | None = None
    # Rollout steps: the live labeled metrics behind the decision, per side
    # ({"challenger": {...}, "champion": {...}}; the stage's own predictions only).
    evidence: dict[str, dict[str, float]] = Field(default_factory=dict)
    # Lineage of a trained version (retrain): what it was trained from and how it was judged.
    spec_name: str | None = None
    spec_hash: str | None = None  # sha256 of the canonical spec JSON
    feature_set_version: int | None = None
    policy: Literal["stateless", "stateful"] | None = None
    params: dict[str, Any] | None = None  # learner and window parameters
    seed: int | None = None
    code_version: str | None = None  # "<package version>+<git sha or unknown>"
    validation: dict[str, Any] | None = None  # holdout, replay, slices, sanity
    reasons: tuple[str, ...] = ()  # every reason the gate rejected it (empty when it passed)


class RetrainRequest(Contract):
    """retrain.requests: ask for a retrain (manual, or from a drift alert)."""

    request_id: Id
    reason: str = "manual"
    requested_at: float
    since: float | None = None
    mode: Literal["stateless", "stateful"] | None = None  # None: the spec's retrain.on_request
    who: str = ""


class DeadLetter(Contract):
    """events.dlq / labels.dlq: the value is the ORIGINAL bytes, untouched; this model is
    carried in the record headers (``rivulet.dlq.<field>``), Kafka-Connect style, so that
    an oversized or non-UTF-8 payload is preserved exactly."""

    reason: str
    field: str | None = None
    message: str
    source_topic: str
    source_partition: int
    source_offset: int
    failed_at: float


    def to_headers(self) -> list[tuple[str, bytes]]:
        return [
            (f"rivulet.dlq.{k}", str(v).encode())
            for k, v in self.model_dump().items()
            if v is not None
        ]

    @classmethod
    def from_headers(cls, headers: Any) -> "DeadLetter":
        prefix = "rivulet.dlq."
        data: dict[str, Any] = {
            k[len(prefix):]: v.decode() for k, v in headers if k.startswith(prefix)
        }
        for key, cast in (("schema_version", int), ("source_partition", int),
                          ("source_offset", int), ("failed_at", float)):
            if key in data:
                data[key] = cast(data[key])
        return cls.model_validate(data)


# Defined in its own module (it builds on the contracts above); re-exported here.
from shared.contracts_retrain import RetrainDecision  # noqa: E402
