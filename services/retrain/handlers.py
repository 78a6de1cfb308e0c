"""Pure retrain-controller logic: the labeled-row buffer, triggers and their debounce,
the train/holdout split, the validation gate, and the ModelEvents a training yields.

No Kafka, Redis or I/O here: :mod:`services.retrain.app` feeds records in and acts on
the returned decisions, and the unit tests drive these functions directly.

Handled-ness lives in the ``models`` topic itself: every event a training produces names
the trigger ids it answered (``trigger`` = comma-joined ids such as ``drift:a1,request:r7``),
so replaying ``models`` from the beginning tells a restarted controller which alerts and
requests were already answered. Nothing else needs to be stored.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal

from shared.contracts import DriftAlert, LabeledPrediction, ModelEvent, RetrainRequest, TrainingWindow
from shared.spec import UseCaseSpec

BOOTSTRAP = "bootstrap"
RETRAIN_KINDS = frozenset({"data_drift", "prediction_drift", "concept_drift"})
LOWER_IS_BETTER = frozenset({"log_loss"})


@dataclass(frozen=True)
class Row:
    """One labeled prediction, reduced to what training needs (features AS SERVED)."""

    prediction_id: str
    served_at: float
    features: dict[str, Any]
    actual: bool
    revision: int = 1


def to_row(rec: LabeledPrediction) -> Row | None:
    """Shadow predictions duplicate a champion request, so they would double-count it."""
    if rec.role == "shadow":
        return None
    actual = rec.actual if isinstance(rec.actual, bool) else rec.actual >= 0.5
    return Row(rec.prediction_id, rec.served_at, dict(rec.features), actual, rec.revision)


class LabeledBuffer:
    """The most recent labeled rows (bounded), one per prediction id, latest revision wins."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._rows: OrderedDict[str, Row] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, row: Row) -> bool:
        """True if the row was stored (new id or newer revision)."""
        old = self._rows.get(row.prediction_id)
        if old is not None and old.revision > row.revision:
            return False
        self._rows[row.prediction_id] = row
        while len(self._rows) > self.capacity:
            self._rows.popitem(last=False)
        return True

    def eligible(self, since: float | None) -> list[Row]:
        """Rows served at/after ``since``, oldest first (ties broken by id: deterministic)."""
        rows = [r for r in self._rows.values() if since is None or r.served_at >= since]
        return sorted(rows, key=lambda r: (r.served_at, r.prediction_id))

    def count_after(self, after: float | None) -> int:
        return sum(1 for r in self._rows.values() if after is None or r.served_at > after)


@dataclass
class Trigger:
    """One pending (or running) retrain; later triggers for the same champion merge in."""

    ids: list[str]
    since: float | None
    champion: int
    fresh_after: float | None = None  # bootstrap retry: need min_labels rows newer than this
    closed: bool = False  # its model events are built: later triggers can no longer join it

    @property
    def label(self) -> str:
        return ",".join(self.ids)


@dataclass(frozen=True)
class Decision:
    action: Literal["pending", "merged", "skip"]
    reason: str


@dataclass
class ControllerState:
    """What the controller knows from ``models`` plus its own pending/running trigger."""

    champion: int = 0
    max_version: int = 0
    handled: set[str] = field(default_factory=set)
    promoted: dict[int, ModelEvent] = field(default_factory=dict)
    bootstrap_rejected_end: float | None = None
    pending: Trigger | None = None
    in_flight: Trigger | None = None


def split_ids(trigger: str) -> list[str]:
    return [t for t in trigger.split(",") if t]


def apply_model_event(state: ControllerState, ev: ModelEvent) -> None:
    """Idempotent: replaying the same event again leaves the state unchanged."""
    state.max_version = max(state.max_version, ev.version)
    ids = split_ids(ev.trigger)
    if ev.event in ("registered", "promoted", "rejected"):
        state.handled.update(i for i in ids if i != BOOTSTRAP)
    if ev.event == "rejected" and ev.parent == 0 and ev.trained_on is not None:
        # a candidate lost to the baseline: the next bootstrap waits for fresh rows
        state.bootstrap_rejected_end = max(state.bootstrap_rejected_end or 0.0, ev.trained_on.end)
    if ev.event == "promoted" and ev.artifact_b64:
        state.promoted[ev.version] = ev
    if becomes_champion(ev) and ev.version != state.champion:
        state.champion = ev.version
        state.pending = _retarget(state.pending, state.champion)


def becomes_champion(ev: ModelEvent) -> bool:
    """A full promotion or a rollback changes the champion; a shadow or canary rollout
    only adds a challenger beside it."""
    return ev.event == "rolled_back" or (ev.event == "promoted" and ev.strategy in (None, "full"))


def _retarget(pending: Trigger | None, champion: int) -> Trigger | None:
    """The champion changed: bootstrap and drift ids were about the old one; requests stay."""
    if pending is None or pending.champion == champion:
        return pending
    ids = [i for i in pending.ids if i.startswith("request:")]
    return Trigger(ids, pending.since, champion) if ids else None


def merge_since(a: float | None, b: float | None) -> float | None:
    """None means "no constraint"; otherwise the earliest start wins, so merging never delays."""
    if a is None or b is None:
        return a if b is None else b
    return min(a, b)


def raise_trigger(state: ControllerState, trigger_id: str, since: float | None,
                  fresh_after: float | None = None) -> Decision:
    """Debounce: one retrain per champion version at a time; later triggers merge into it."""
    for active, where in ((state.in_flight, "training"), (state.pending, "pending")):
        if active is not None and trigger_id in active.ids:
            return Decision("skip", f"{trigger_id} already {where}")
    running = state.in_flight
    if running is not None and running.champion == state.champion and not running.closed:
        running.ids.append(trigger_id)
        return Decision("merged", f"{trigger_id} merged into running training {running.label}")
    if state.pending is not None:
        state.pending.ids.append(trigger_id)
        state.pending.since = merge_since(state.pending.since, since)
        return Decision("merged", f"{trigger_id} merged into pending {state.pending.label}")
    state.pending = Trigger([trigger_id], since, state.champion, fresh_after)
    return Decision("pending", f"{trigger_id} pending (since={since})")


def on_alert(state: ControllerState, alert: DriftAlert) -> Decision:
    """One retrain per incident: the trigger id is the incident's, so its later updates are
    already handled (or merged). An incident may open on a data-quality finding and become
    covariate shift a window later, so the first alert of a retrain-worthy kind counts,
    whether it is the opening one or an update; a resolution never does."""
    trigger_id = f"drift:{alert.incident_id or alert.alert_id}"
    if trigger_id in state.handled:
        return Decision("skip", f"{trigger_id} already handled")
    if alert.status == "resolved":
        return Decision("skip", f"{trigger_id}: incident resolved")
    if alert.kind not in RETRAIN_KINDS:
        return Decision("skip", f"{trigger_id}: {alert.kind} alerts do not trigger retraining")
    if alert.model_version != state.champion:
        return Decision("skip", f"{trigger_id} is about v{alert.model_version}; champion is v{state.champion}")
    return raise_trigger(state, trigger_id, alert.window.start)


def on_request(state: ControllerState, req: RetrainRequest) -> Decision:
    trigger_id = f"request:{req.request_id}"
    if trigger_id in state.handled:
        return Decision("skip", f"{trigger_id} already handled")
    return raise_trigger(state, trigger_id, req.since)


def on_bootstrap(state: ControllerState, spec: UseCaseSpec) -> Decision | None:
    """While the baseline serves, keep a bootstrap trigger pending (None: nothing to do)."""
    if state.champion != 0 or not spec.retrain.bootstrap:
        return None
    for active in (state.pending, state.in_flight):
        if active is not None and BOOTSTRAP in active.ids:
            return None
    if state.in_flight is not None:
        return None
    return raise_trigger(state, BOOTSTRAP, None, fresh_after=state.bootstrap_rejected_end)


def readiness(state: ControllerState, buffer: LabeledBuffer, min_labels: int) -> tuple[bool, str]:
    """Is the pending trigger ready to train? Always returns a human-readable why."""
    if state.in_flight is not None:
        return False, f"training {state.in_flight.label} in progress"
    pending = state.pending
    if pending is None:
        return False, "idle: no pending trigger"
    have = len(buffer.eligible(pending.since))
    if have < min_labels:
        return False, f"{pending.label} waiting: {have}/{min_labels} labeled rows since {pending.since}"
    if pending.fresh_after is not None:
        fresh = buffer.count_after(pending.fresh_after)
        if fresh < min_labels:
            return False, (f"{pending.label} waiting: {fresh}/{min_labels} new labeled rows since "
                           f"the rejected bootstrap (data up to {pending.fresh_after})")
    return True, f"{pending.label} ready: {have} labeled rows since {pending.since}"


def start_training(state: ControllerState) -> Trigger:
    """Move the pending trigger to in-flight; the caller checked :func:`readiness`."""
    assert state.pending is not None
    state.in_flight, state.pending = state.pending, None
    return state.in_flight


def split_window(rows: list[Row], window: int, holdout_fraction: float) -> tuple[list[Row], list[Row]]:
    """The most recent ``window`` rows (``rows`` sorted oldest first); the newest share is the
    holdout, so validation mimics serving the future. Both parts keep at least one row."""
    recent = rows[-window:] if window > 0 else list(rows)
    if len(recent) < 2:
        return recent, []
    n_hold = min(len(recent) - 1, max(1, math.ceil(len(recent) * holdout_fraction)))
    return recent[:-n_hold], recent[-n_hold:]


def gate(candidate: dict[str, float], champion: dict[str, float], metric: str,
         margin: float) -> tuple[bool, str]:
    """The candidate must beat the champion on ``metric`` by strictly more than ``margin``."""
    cand, champ = candidate[metric], champion[metric]
    gain = champ - cand if metric in LOWER_IS_BETTER else cand - champ
    direction = "lower" if metric in LOWER_IS_BETTER else "higher"
    verdict = f"{metric} candidate={cand:.4f} champion={champ:.4f} ({direction} is better, margin {margin})"
    if gain > margin:
        return True, f"passed: {verdict}"
    return False, f"rejected: {verdict}"


def training_window(rows: list[Row]) -> TrainingWindow:
    return TrainingWindow(start=rows[0].served_at, end=rows[-1].served_at, count=len(rows))


def model_events(result: dict[str, Any], trigger: Trigger, version: int, parent: int, passed: bool,
                 reason: str, window: TrainingWindow, threshold: float, now: float) -> list[ModelEvent]:
    """Pass: ``registered`` then ``promoted`` (both complete). Fail: ``rejected`` with metrics
    (the version number is still consumed, so numbers stay unique)."""
    common: dict[str, Any] = dict(
        version=version, parent=parent, created_at=now, trigger=trigger.label, reason=reason,
        threshold=threshold, trained_on=window, metrics=result["metrics"],
        champion_metrics=result["champion_metrics"],
    )
    if not passed:
        return [ModelEvent(event="rejected", **common)]
    full = dict(common, reference_profile=result["profile"], artifact_b64=result["artifact_b64"],
                artifact_sha256=result["sha256"], signature=result["signature"])
    return [ModelEvent(event="registered", **full), ModelEvent(event="promoted", **full)]


def failure_event(trigger: Trigger, version: int, parent: int, reason: str, window: TrainingWindow,
                  now: float) -> ModelEvent:
    """Training crashed or the champion changed meanwhile: answer the trigger anyway, once."""
    return ModelEvent(event="rejected", version=version, parent=parent, created_at=now,
                      trigger=trigger.label, reason=reason, trained_on=window)
