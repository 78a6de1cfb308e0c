"""Pure retrain-controller logic: triggers and their debounce, the policy per trigger
(drift rules, performance floor, schedule, new labels, requests), the holdout gate and the
ModelEvents a training yields (the labeled rows and their buffer: :mod:`services.retrain.rows`;
guards: :mod:`services.retrain.guards`).

No Kafka, Redis or I/O here: :mod:`services.retrain.app` feeds records in and acts on
the returned decisions, and the unit tests drive these functions directly.

Handled-ness lives in the ``models`` topic itself: every event a training produces names
the trigger ids it answered (``trigger`` = comma-joined ids such as ``drift:a1,request:r7``),
so replaying ``models`` from the beginning tells a restarted controller which alerts and
requests were already answered. Nothing else needs to be stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from services.retrain.rows import Row
from shared.contracts import (
    DriftAlert,
    ModelEvent,
    RetrainRequest,
    TrainingWindow,
)
from shared.spec import DriftRule, RetrainSpec, UseCaseSpec

BOOTSTRAP = "bootstrap"
LOWER_IS_BETTER = frozenset({"log_loss"})


Mode = Literal["stateless", "stateful"]


@dataclass
class Trigger:
    """One pending (or running) retrain; later triggers for the same champion merge in."""

    ids: list[str]
    since: float | None
    champion: int
    fresh_after: float | None = None  # retry after a rejection: need min_labels rows newer than this
    closed: bool = False  # its model events are built: later triggers can no longer join it
    mode: Mode = "stateless"
    basis: str = "recent"  # recent | change_point | since
    raised_at: float = 0.0  # wall clock: how long a change-point window has been waited for
    version: int | None = None  # the candidate version, reserved when training starts

    @property
    def label(self) -> str:
        return ",".join(self.ids)

    @property
    def kind(self) -> str:
        return kind_of(self.ids[0]) if self.ids else ""


def kind_of(trigger_id: str) -> str:
    return trigger_id.split(":", 1)[0]


@dataclass(frozen=True)
class Decision:
    action: Literal["pending", "merged", "skip", "defer"]
    reason: str
    code: str = ""  # machine-readable: budget, too_few_labels, duplicate_incident, policy, ...
    trigger_id: str = ""
    mode: Mode | None = None


@dataclass
class ControllerState:
    """What the controller knows from ``models`` (and ``retrain.decisions``) plus its own
    pending/running trigger."""

    champion: int = 0
    max_version: int = 0
    handled: set[str] = field(default_factory=set)
    promoted: dict[int, ModelEvent] = field(default_factory=dict)
    bootstrap_rejected_end: float | None = None
    pending: Trigger | None = None
    in_flight: Trigger | None = None
    # per parent version: the end of the newest rejected attempt's window and how many there were
    attempt_end: dict[int, float] = field(default_factory=dict)
    attempts: dict[int, int] = field(default_factory=dict)
    last_attempt_at: float = 0.0  # created_at of the newest training outcome (schedule)
    champion_since: float = 0.0
    train_starts: list[float] = field(default_factory=list)  # wall times (budget)
    dropped: list[str] = field(default_factory=list)  # ids dropped on a champion change
    challenger: int | None = None  # a passing candidate in shadow/canary rollout (services/rollout)
    # served time where the newest known concept starts: the latest change point any training
    # window was cut at (passed or rejected); periodic triggers whose policy window is
    # "change_point" relearn from here, so a refinement never mixes the old concept back in
    concept_since: float | None = None


def split_ids(trigger: str) -> list[str]:
    return [t for t in trigger.split(",") if t]


def apply_model_event(state: ControllerState, ev: ModelEvent) -> None:
    """Idempotent: replaying the same event again leaves the state unchanged."""
    state.max_version = max(state.max_version, ev.version)
    ids = split_ids(ev.trigger)
    if ev.event in ("registered", "promoted", "rejected"):
        state.handled.update(i for i in ids if i != BOOTSTRAP)
    if ev.event in ("registered", "rejected") and ev.trained_on is not None:
        state.last_attempt_at = max(state.last_attempt_at, ev.created_at)
    if ev.event == "rejected" and ev.trained_on is not None and ev.parent is not None:
        if ev.parent == 0:  # a candidate lost to the baseline: the next bootstrap waits for fresh rows
            state.bootstrap_rejected_end = max(state.bootstrap_rejected_end or 0.0, ev.trained_on.end)
        if ev.trained_on.end > state.attempt_end.get(ev.parent, float("-inf")):
            state.attempt_end[ev.parent] = ev.trained_on.end
            state.attempts[ev.parent] = state.attempts.get(ev.parent, 0) + 1
    if ev.event == "promoted" and ev.artifact_b64:
        state.promoted[ev.version] = ev
    if ev.event != "rolled_back" and ev.trained_on is not None and ev.trained_on.basis == "change_point" \
            and ev.trained_on.since is not None:
        state.concept_since = max(state.concept_since or float("-inf"), ev.trained_on.since)
    if ev.event == "promoted" and ev.strategy in ("shadow", "canary") and ev.version != state.champion:
        state.challenger = ev.version
    if becomes_champion(ev):
        state.challenger = None  # full promotion or rollback: the rollout is over
    if becomes_champion(ev) and ev.version != state.champion:
        state.champion, state.champion_since = ev.version, ev.created_at
        state.pending = _retarget(state, state.pending, state.champion)


def becomes_champion(ev: ModelEvent) -> bool:
    """A full promotion or a rollback changes the champion; a shadow or canary rollout
    only adds a challenger beside it."""
    return ev.event == "rolled_back" or (ev.event == "promoted" and ev.strategy in (None, "full"))


def learned_since(ev: ModelEvent | None, since: float) -> bool:
    """Was this version trained only on rows from ``since`` on (a fresh window, not a
    stateful continuation of a parent that learned the older data)?"""
    w = ev.trained_on if ev is not None else None
    return w is not None and w.basis != "stateful" and w.start >= since


def _retarget(state: ControllerState, pending: Trigger | None, champion: int) -> Trigger | None:
    """The champion changed: bootstrap, performance, schedule and new-labels ids were about
    the old one (dropped, reported); requests stay, and so do change-point drift ids unless
    the new champion already learned from that change point (e.g. a routine refresh on the
    recent window, started before the incident, still mixes the old concept in)."""
    if pending is None or pending.champion == champion:
        return pending
    keep_drift = pending.basis == "change_point" and pending.since is not None \
        and state.promoted.get(champion) is not None and not learned_since(state.promoted[champion], pending.since)
    ids = [i for i in pending.ids if i.startswith("request:") or (keep_drift and i.startswith("drift:"))]
    state.dropped.extend(i for i in pending.ids if i not in ids)
    if not ids:
        return None
    return Trigger(ids, pending.since, champion, mode=pending.mode, basis=pending.basis,
                   raised_at=pending.raised_at)


def merge_since(a: float | None, b: float | None) -> float | None:
    """None means "no constraint"; otherwise the earliest start wins, so merging never delays."""
    if a is None or b is None:
        return a if b is None else b
    return min(a, b)


def _duplicate_code(trigger_id: str) -> str:
    return "duplicate_incident" if trigger_id.startswith("drift:") else f"duplicate_{kind_of(trigger_id)}"


def raise_trigger(state: ControllerState, trigger_id: str, since: float | None,
                  fresh_after: float | None = None, mode: Mode = "stateless", basis: str | None = None,
                  now: float = 0.0) -> Decision:
    """Debounce: one retrain per champion version at a time; later triggers merge into it.
    Merging: the earliest start wins and stateless wins (a concept change dominates)."""
    basis = basis or ("since" if since is not None else "recent")
    for active, where in ((state.in_flight, "training"), (state.pending, "pending")):
        if active is not None and trigger_id in active.ids:
            return Decision("skip", f"{trigger_id} already {where}", _duplicate_code(trigger_id), trigger_id)
    running = state.in_flight
    if running is not None and running.champion == state.champion and not running.closed \
            and _covers(running, since, mode):
        running.ids.append(trigger_id)
        return Decision("merged", f"{trigger_id} merged into running training {running.label}",
                        "debounced", trigger_id, running.mode)
    pending = state.pending
    if pending is not None:
        pending.ids.append(trigger_id)
        pending.since = merge_since(pending.since, since)
        pending.mode = "stateless" if "stateless" in (pending.mode, mode) else "stateful"
        if pending.basis == "recent" or basis == "change_point":
            pending.basis = basis if pending.since is not None else "recent"
        return Decision("merged", f"{trigger_id} merged into pending {pending.label}", "debounced",
                        trigger_id, pending.mode)
    state.pending = Trigger([trigger_id], since, state.champion, fresh_after, mode=mode, basis=basis,
                            raised_at=now)
    return Decision("pending", f"{trigger_id} pending ({mode}, since={since})", "accepted", trigger_id, mode)


def _covers(running: Trigger, since: float | None, mode: Mode) -> bool:
    """Does the running training's window answer a trigger that needs rows from ``since``
    on (and a fresh model if stateless)? If not, the trigger waits for the next training
    instead of being marked answered by one planned without it."""
    if mode == "stateless" and running.mode == "stateful":
        return False
    return since is None or (running.since is not None and running.since >= since)


_SEVERITY = {"low": 0, "medium": 1, "high": 2}


def drift_rule(spec: UseCaseSpec | None, alert: DriftAlert) -> DriftRule | None:
    """The first rule of ``retrain.drift_rules`` matching the alert's kind and severity."""
    rules = spec.retrain.drift_rules if spec is not None else RetrainSpec().drift_rules
    for rule in rules:
        if alert.kind in rule.kinds and _SEVERITY[alert.severity] >= _SEVERITY[rule.min_severity]:
            return rule
    return None


def on_alert(state: ControllerState, alert: DriftAlert, spec: UseCaseSpec | None = None,
             now: float = 0.0) -> Decision:
    """One retrain per incident: the trigger id is the incident's, so its later updates are
    already handled (or merged). An incident may open on a data-quality finding and become
    covariate shift a window later, so the first alert a rule accepts counts, whether it is
    the opening one or an update; a resolution never does."""
    trigger_id = f"drift:{alert.incident_id or alert.alert_id}"
    if trigger_id in state.handled:
        return Decision("skip", f"{trigger_id} already handled", "duplicate_incident", trigger_id)
    if alert.status == "resolved":
        return Decision("skip", f"{trigger_id}: incident resolved", "resolved", trigger_id)
    rule = drift_rule(spec, alert)
    if rule is None or rule.mode == "skip":
        return Decision("skip", f"{trigger_id}: no retrain rule for {alert.severity} {alert.kind} alerts",
                        "policy", trigger_id)
    if alert.model_version != state.champion and not _still_applies(state, alert):
        return Decision("skip", f"{trigger_id} is about v{alert.model_version}; champion is v{state.champion}",
                        "stale_model", trigger_id)
    since = None
    if rule.window == "change_point":
        since = alert.change_point_at if alert.change_point_at is not None else alert.window.start
    return raise_trigger(state, trigger_id, since, mode=rule.mode, basis=rule.window if since is not None
                         else "recent", now=now)


def _still_applies(state: ControllerState, alert: DriftAlert) -> bool:
    """A concept change (the label relation moved at a point in time) about an older version
    still concerns a newer champion that did not learn from that point on -- e.g. a routine
    refresh promoted while the incident was being detected. Data/prediction drift is measured
    against one version's reference, so it never carries over."""
    champ = state.promoted.get(state.champion)
    cp = alert.change_point_at if alert.change_point_at is not None else alert.window.start
    return (alert.kind == "concept_drift" and alert.model_version < state.champion and champ is not None
            and champ.trained_on is not None and not learned_since(champ, cp))


def on_request(state: ControllerState, req: RetrainRequest, spec: UseCaseSpec | None = None,
               now: float = 0.0) -> Decision:
    trigger_id = f"request:{req.request_id}"
    if trigger_id in state.handled:
        return Decision("skip", f"{trigger_id} already handled", "duplicate_request", trigger_id)
    policy = spec.retrain.on_request if spec is not None else RetrainSpec().on_request
    return raise_trigger(state, trigger_id, req.since, mode=req.mode or policy.mode, now=now)


def on_bootstrap(state: ControllerState, spec: UseCaseSpec, now: float = 0.0) -> Decision | None:
    """While the baseline serves, keep a bootstrap trigger pending (None: nothing to do)."""
    if state.champion != 0 or not spec.retrain.bootstrap or state.challenger is not None:
        return None
    for active in (state.pending, state.in_flight):
        if active is not None and BOOTSTRAP in active.ids:
            return None
    if state.in_flight is not None:
        return None
    return raise_trigger(state, BOOTSTRAP, None, fresh_after=state.bootstrap_rejected_end, now=now)


def start_training(state: ControllerState, now: float = 0.0) -> Trigger:
    """Move the pending trigger to in-flight and reserve its version; the caller checked
    :func:`check_ready`. The start counts against the budget."""
    assert state.pending is not None
    state.in_flight, state.pending = state.pending, None
    state.in_flight.version = state.max_version + 1
    state.train_starts.append(now)
    return state.in_flight


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
                 reason: str, window: TrainingWindow, threshold: float, now: float,
                 lineage: dict[str, Any] | None = None, strategy: str | None = None) -> list[ModelEvent]:
    """Pass: ``registered`` then ``promoted`` (both complete; ``strategy`` "shadow" hands the
    candidate to the rollout controller). Fail: ``rejected`` with metrics, lineage and the
    signed artifact (so a human can still promote it deliberately); the version number is
    consumed either way, so numbers stay unique."""
    common: dict[str, Any] = dict(
        version=version, parent=parent, created_at=now, trigger=trigger.label, reason=reason,
        threshold=threshold, trained_on=window, metrics=result["metrics"],
        champion_metrics=result["champion_metrics"], **(lineage or {}),
    )
    full = dict(common, reference_profile=result["profile"], artifact_b64=result["artifact_b64"],
                artifact_sha256=result["sha256"], signature=result["signature"])
    if not passed:
        return [ModelEvent(event="rejected", **full)]
    return [ModelEvent(event="registered", **full), ModelEvent(event="promoted", strategy=strategy, **full)]


def failure_event(trigger: Trigger, version: int, parent: int, reason: str, window: TrainingWindow,
                  now: float, lineage: dict[str, Any] | None = None) -> ModelEvent:
    """Training crashed or the champion changed meanwhile: answer the trigger anyway, once."""
    return ModelEvent(event="rejected", version=version, parent=parent, created_at=now,
                      trigger=trigger.label, reason=reason, trained_on=window, reasons=(reason,),
                      **(lineage or {}))
