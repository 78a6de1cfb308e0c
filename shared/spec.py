"""The use-case spec: one TOML file that drives validation, features, model and monitoring.

Services never hard-code the demo's fields; they read a :class:`UseCaseSpec`.
A second use case is a second file (``RIVULET_SPEC=path``), not a code change.
"""

from __future__ import annotations

import re
import tomllib
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float:
    """'5m' -> 300.0; numbers are seconds. Why: specs read better with units."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*", str(value))
    if not match:
        raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 5m, 1h, 7d)")
    return float(match.group(1)) * _UNITS[match.group(2)]


Duration = Annotated[float, BeforeValidator(parse_duration)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FieldSpec(_Frozen):
    """One domain field of an event (also a request-time field of /predict)."""

    type: Literal["float", "int", "str", "bool"]
    required: bool = True
    min: float | None = None
    max: float | None = None
    allowed: tuple[str, ...] | None = None
    max_length: int | None = None
    pattern: str | None = None


class EventSpec(_Frozen):
    schema_version: int = 1
    max_payload_bytes: int = 16384
    max_future_s: float = 86400.0
    max_past_s: float = 365 * 86400.0
    fields: dict[str, FieldSpec]


Agg = Literal["count", "sum", "mean", "min", "max", "std", "last", "distinct_count", "time_since_last"]


class FeatureSpec(_Frozen):
    """A windowed aggregate per entity, over event time."""

    name: str
    agg: Agg
    field: str | None = None
    window: Duration
    kind: Literal["sliding"] = "sliding"
    default: float | None = None

    @model_validator(mode="after")
    def _field_needed(self) -> "FeatureSpec":
        if self.agg not in ("count", "time_since_last") and not self.field:
            raise ValueError(f"feature {self.name}: agg {self.agg} needs a field")
        return self


class FeaturesConfig(_Frozen):
    allowed_lateness: Duration = 600.0
    entity_ttl: Duration = 7 * 86400.0


class BaselineSpec(_Frozen):
    bias: float = 0.0
    weights: dict[str, float] = Field(default_factory=dict)


class LearnerSpec(_Frozen):
    kind: Literal["logistic_regression", "hoeffding_adaptive_tree"] = "logistic_regression"
    learning_rate: float = 0.05
    l2: float = 0.0
    epochs: int = 3
    seed: int = 42
    log_numeric: bool = False  # log1p(max(x, 0)) before scaling: for non-negative, heavy-tailed inputs


class ModelSpec(_Frozen):
    task: Literal["binary"] = "binary"
    threshold: float = 0.5
    numeric: tuple[str, ...]
    categorical: tuple[str, ...] = ()
    baseline: BaselineSpec = BaselineSpec()
    learner: LearnerSpec = LearnerSpec()


class DriftSpec(_Frozen):
    window: int = 500
    reference_size: int = 2000
    alpha: float = 0.001  # cap on the family-wise false-alarm rate of one evaluation
    cooldown: Duration = 600.0
    accuracy_window: int = 300
    accuracy_drop: float = 0.05
    # Sliding window of `window` predictions, evaluated every `step` predictions; the
    # per-evaluation family alpha is min(alpha, false_alarms_per_100k * step / 100000)
    # (alpha spending over evaluations), split over the tests by Bonferroni.
    step: int = Field(default=100, ge=1)
    false_alarms_per_100k: float = Field(default=1.0, gt=0)
    resolve_after: int = Field(default=2, ge=1)  # clean full windows before an incident resolves
    quality_tolerance: float = 0.05  # bad-value rate above the reference's that is still fine
    dlq_rate_max: float = 0.05  # events.dlq records per prediction above which upstream is unhealthy
    adwin_delta: float = 1e-4  # river.drift.ADWIN on the champion's 0/1 error stream
    ph_threshold: float = 200.0  # river.drift.PageHinkley (mode "up") on the same stream
    ph_delta: float = 0.01


class LabelsSpec(_Frozen):
    maturity: Duration = 3600.0  # a prediction waits this long for its label
    # A label whose prediction has not (yet) arrived waits this long before it is declared
    # unmatched (None: the maturity window).
    unmatched_grace: Duration | None = None


class MonitoringSpec(_Frozen):
    """Online performance metrics: window size and the categorical inputs to slice by."""

    slices: tuple[str, ...] = ()  # model inputs (e.g. "channel"); metrics per value of each
    window: int = 1000  # labeled predictions per rolling window
    min_labels: int = 50  # below this many labels, accuracy is estimated from scores


class RetrainSpec(_Frozen):
    primary_metric: Literal["accuracy", "log_loss", "f1"] = "log_loss"
    min_labels: int = 600
    window: int = 4000
    holdout_fraction: float = 0.25
    margin: float = 0.0
    bootstrap: bool = True


class RolloutSpec(_Frozen):
    """Automatic rollout of a candidate that passed the validation gate (services/rollout).

    enabled: the retrain controller announces passing candidates as ``shadow`` and the rollout
    controller moves them shadow -> canary -> full, or rolls the canary back; disabled: a
    passing candidate is promoted ``full`` at once."""

    enabled: bool = False
    shadow_predictions: int = Field(default=500, ge=0)  # shadow-scored requests before canary
    canary_share: float = Field(default=0.2, gt=0.0, le=1.0)  # sticky share of entities
    canary_min_labels: int = Field(default=300, ge=1)  # labeled canary predictions before deciding
    tolerance: float = Field(default=0.02, ge=0.0)  # canary may trail the champion by this much


class UseCaseSpec(_Frozen):
    """Everything the services need to know about one use case."""

    model_config = ConfigDict(frozen=True, extra="forbid", ignored_types=(cached_property,))

    name: str
    entity: str = "entity"
    feature_set_version: int = 1
    event: EventSpec
    features: tuple[FeatureSpec, ...]
    features_config: FeaturesConfig = FeaturesConfig()
    model: ModelSpec
    drift: DriftSpec = DriftSpec()
    labels: LabelsSpec = LabelsSpec()
    retrain: RetrainSpec = RetrainSpec()
    monitoring: MonitoringSpec = MonitoringSpec()
    rollout: RolloutSpec = RolloutSpec()

    @model_validator(mode="after")
    def _consistent(self) -> "UseCaseSpec":
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise ValueError("feature names must be unique")
        known = set(names) | set(self.event.fields)
        for col in (*self.model.numeric, *self.model.categorical):
            if col not in known:
                raise ValueError(f"model input {col!r} is neither an event field nor a feature")
        for feat in self.features:
            if feat.field and feat.field not in self.event.fields:
                raise ValueError(f"feature {feat.name}: unknown field {feat.field!r}")
        for col in self.monitoring.slices:
            if col not in self.model.categorical:
                raise ValueError(f"monitoring slice {col!r} is not a categorical model input")
        return self

    @cached_property
    def max_window_s(self) -> float:
        return max((f.window for f in self.features), default=0.0)

    @cached_property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @cached_property
    def model_inputs(self) -> tuple[str, ...]:
        return (*self.model.numeric, *self.model.categorical)


def default_spec_path() -> Path:
    return Path(str(resources.files("shared") / "specs" / "fraud.toml"))


def load_spec(path: str | Path | None = None) -> UseCaseSpec:
    """Read and validate a spec file (default: the shipped card-fraud demo)."""
    with open(path or default_spec_path(), "rb") as fh:
        return UseCaseSpec.model_validate(tomllib.load(fh))
