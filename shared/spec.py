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
    # sliding: (at - window, at]; hopping: the last window/hop buckets of a hop grid, the
    # current one included; tumbling: the aligned bucket of length window containing `at`.
    kind: Literal["sliding", "hopping", "tumbling"] = "sliding"
    hop: Duration | None = None  # hopping only; window must be a multiple of it
    default: float | None = None

    @model_validator(mode="after")
    def _field_needed(self) -> FeatureSpec:
        if self.agg not in ("count", "time_since_last") and not self.field:
            raise ValueError(f"feature {self.name}: agg {self.agg} needs a field")
        if self.window <= 0:
            raise ValueError(f"feature {self.name}: window must be positive")
        if (self.kind == "hopping") != (self.hop is not None):
            raise ValueError(f"feature {self.name}: hop is required for (and only for) kind hopping")
        if self.hop is not None:
            steps = self.window / self.hop if self.hop > 0 else 0.0
            if self.hop <= 0 or steps < 1 or abs(steps - round(steps)) > 1e-9:
                raise ValueError(f"feature {self.name}: window must be a positive multiple of hop")
        return self


class FeaturesConfig(_Frozen):
    allowed_lateness: Duration = 600.0
    entity_ttl: Duration = 7 * 86400.0


class BaselineSpec(_Frozen):
    bias: float = 0.0
    weights: dict[str, float] = Field(default_factory=dict)


class LearnerSpec(_Frozen):
    kind: Literal["logistic_regression", "hoeffding_adaptive_tree", "hoeffding_tree",
                  "adaptive_random_forest"] = "logistic_regression"
    learning_rate: float = 0.05
    l2: float = 0.0
    epochs: int = 3
    seed: int = 42
    log_numeric: bool = False  # log1p(max(x, 0)) before scaling: for non-negative, heavy-tailed inputs
    # Tree kinds only; None = River's default. A small grace period and a looser split
    # confidence let a tree retrained on a short post-change window grow in time.
    grace_period: int | None = Field(default=None, ge=1)
    split_delta: float | None = Field(default=None, gt=0, lt=1)
    n_models: int = Field(default=5, ge=1)  # adaptive_random_forest: trees in the forest
    # Tree kinds only; None = River's default (gaussian splitter, "nba" leaves). The histogram
    # splitter places numeric thresholds where the data changes class (the Gaussian one
    # guesses them from per-class normal fits); "mc" leaves answer their majority class.
    splitter: Literal["gaussian", "histogram"] | None = None
    leaf_prediction: Literal["mc", "nb", "nba"] | None = None
    # At least this many learning steps per training: a short window (e.g. the first rows
    # after a concept change) gets more passes than ``epochs`` (None: exactly ``epochs``).
    min_updates: int | None = Field(default=None, ge=1)


TaskKind = Literal["binary", "regression"]


class ModelSpec(_Frozen):
    task: TaskKind = "binary"  # regression: score = the predicted value, actual = a number
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
    # Effect-size floors: a significant difference smaller than this is not a finding.
    min_effect_sigma: float = Field(default=0.1, ge=0)  # numeric/score: Wasserstein / reference sd
    min_effect_js: float = Field(default=0.03, ge=0)  # categorical: Jensen-Shannon distance
    # Self-reference: chunks of the first predictions tested for homogeneity; an unsettled
    # start (warm-up traffic) is dropped, up to this many times reference_size predictions.
    reference_max_burn_in: float = Field(default=5.0, ge=0)


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


Severity = Literal["low", "medium", "high"]
TrainMode = Literal["stateless", "stateful"]
WindowBasis = Literal["recent", "change_point"]


class DriftRule(_Frozen):
    """How the retrain controller answers a drift incident: the first rule whose ``kinds``
    contain the alert's kind and whose ``min_severity`` the alert reaches wins; no rule ->
    the alert is skipped (reason ``policy``). ``mode`` "skip" declares that explicitly."""

    kinds: tuple[Literal["data_drift", "prediction_drift", "concept_drift", "data_quality"], ...]
    min_severity: Severity = "low"
    mode: Literal["stateless", "stateful", "skip"] = "stateless"
    # change_point: train on rows served from the alert's change point (don't learn the old
    # concept); recent: the most recent ``window`` rows (stateful: those new since the champion)
    window: WindowBasis = "change_point"


class TriggerPolicy(_Frozen):
    """Training mode and window of one trigger kind (performance, schedule, new labels, manual)."""

    mode: TrainMode = "stateful"
    window: WindowBasis = "recent"


def _default_drift_rules() -> tuple[DriftRule, ...]:
    return (DriftRule(kinds=("data_drift", "prediction_drift", "concept_drift")),)


class RetrainSpec(_Frozen):
    primary_metric: Literal["accuracy", "log_loss", "f1"] = "log_loss"
    min_labels: int = 600
    window: int = 4000
    holdout_fraction: float = 0.25
    margin: float = 0.0
    bootstrap: bool = True
    # a window with no known change point (basis "recent") weighs a row 2^(-age / half-life),
    # age in rows from the newest: a gradual change is followed sooner, as an online learner
    # forgets; change-point windows are all one concept and stay unweighted (None: off).
    # Learners that take a sample weight use it (logistic regression, Hoeffding trees).
    recency_half_life: int | None = Field(default=None, ge=1)
    # -- triggers (services/retrain; every decision is a record on retrain.decisions) --------
    drift_rules: tuple[DriftRule, ...] = Field(default_factory=_default_drift_rules)
    # measured (not estimated) champion performance on primary_metric worse than this floor
    # (log_loss: above it) over at least performance_min_labels labels; None: off
    performance_floor: float | None = None
    performance_min_labels: int = Field(default=200, ge=1)
    on_performance: TriggerPolicy = TriggerPolicy(mode="stateless")
    schedule: Duration | None = None  # retrain every this long (None: off)
    on_schedule: TriggerPolicy = TriggerPolicy()
    new_labels: int = Field(default=0, ge=0)  # retrain after this many labels newer than the champion's window (0: off)
    on_new_labels: TriggerPolicy = TriggerPolicy()
    on_request: TriggerPolicy = TriggerPolicy(mode="stateless")  # `rivulet retrain` (--mode overrides)
    # -- guards -----------------------------------------------------------------------------
    budget_per_hour: int = Field(default=6, ge=0)  # trainings started per rolling hour (0: unlimited)
    # a change-point window shorter than this is extended back to the most recent window_min
    # rows (None: min_labels); the trigger first waits up to change_point_max_wait for them
    window_min: int | None = Field(default=None, ge=1)
    change_point_max_wait: Duration = 3600.0
    # -- validation gate (holdout AND replay of recorded traffic, per slice, sanity) ----------
    replay_min_rows: int = Field(default=50, ge=1)  # a smaller replay is reported, not gated on
    slice_tolerance: float = Field(default=0.05, ge=0.0)  # a slice may be this much worse
    slice_min_rows: int = Field(default=50, ge=1)  # smaller slices are reported, not gated on
    min_score_std: float = Field(default=1e-4, ge=0.0)  # below: score distribution collapsed


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
    # Labeled shadow predictions (paired with the champion's answer to the same request)
    # needed before the shadow verdict; 0 = decide on whatever is labeled at that point.
    shadow_min_labels: int = Field(default=100, ge=0)
    # Longest a candidate may stay in shadow or in canary (e.g. no traffic or no labels);
    # then ``on_timeout``: roll it back (champion unchanged), or advance it unless the
    # labels seen so far show it worse beyond ``tolerance``.
    stage_timeout: Duration = Field(default=1800.0, gt=0)
    on_timeout: Literal["rollback", "promote"] = "rollback"
    # A difference counts only when significant at this many standard errors (1.64: about
    # 95 % one-sided), so a few hundred noisy labels neither promote nor roll back by chance.
    # 0: compare point estimates.
    confidence_z: float = Field(default=1.64, ge=0.0)


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
    def _consistent(self) -> UseCaseSpec:
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
