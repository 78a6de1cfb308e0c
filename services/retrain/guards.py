"""Guards and the periodic triggers: the retrain budget, the label minimum, the change-point
window's wait, and the schedule / new-labels / performance-floor triggers. Pure, like
:mod:`services.retrain.handlers` (which holds the state they read and change).

Periodic triggers check their guards when they fire and are skipped (budget,
too_few_labels) rather than queued: they fire again on a later check, so nothing is lost.
Event triggers (drift incidents, requests, bootstrap) wait instead: ``check_ready``
defers them until enough labels exist and the budget allows.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.retrain.handlers import (
    LOWER_IS_BETTER,
    ControllerState,
    Decision,
    Mode,
    Trigger,
    raise_trigger,
)
from services.retrain.rows import LabeledBuffer
from shared.contracts import MetricsRecord
from shared.spec import RetrainSpec, TriggerPolicy, UseCaseSpec


def budget_left(state: ControllerState, spec: UseCaseSpec, now: float) -> int:
    """Trainings still allowed in the rolling hour (a large number when unlimited)."""
    limit = spec.retrain.budget_per_hour
    if limit <= 0:
        return 1 << 30
    return limit - sum(1 for t in state.train_starts if now - t < 3600.0)


def champion_end(state: ControllerState) -> float | None:
    """The end of the champion's training window: rows after it are new to the champion."""
    ev = state.promoted.get(state.champion)
    return ev.trained_on.end if ev is not None and ev.trained_on is not None else None


def _periodic(state: ControllerState, buffer: LabeledBuffer, spec: UseCaseSpec, trigger_id: str,
              policy: TriggerPolicy, now: float, fresh_after: float | None = None) -> Decision | None:
    """Window "change_point": train only on rows since the newest known concept change
    (:attr:`ControllerState.concept_since`; none known: the recent window)."""
    mode = policy.mode
    since = state.concept_since if policy.window == "change_point" else None
    active = [t for t in (state.pending, state.in_flight) if t is not None]
    if trigger_id in state.handled or any(trigger_id in t.ids for t in active):
        return None
    if budget_left(state, spec, now) <= 0:
        return Decision("skip", f"{trigger_id}: retrain budget of {spec.retrain.budget_per_hour}/h used up",
                        "budget", trigger_id)
    start = champion_end(state) if mode == "stateful" and state.champion else None
    if since is None:
        have = buffer.count_after(start)
    else:
        have = len(buffer.eligible(since if start is None else max(since, start)))
    if have < spec.retrain.min_labels:
        return Decision("skip", f"{trigger_id}: {have}/{spec.retrain.min_labels} labeled rows", "too_few_labels",
                        trigger_id)
    return raise_trigger(state, trigger_id, since, fresh_after, mode=mode,
                         basis="change_point" if since is not None else "recent", now=now)


def on_schedule(state: ControllerState, buffer: LabeledBuffer, spec: UseCaseSpec, now: float) -> Decision | None:
    """Every ``retrain.schedule`` since the last training (or the champion's promotion)."""
    every = spec.retrain.schedule
    if not every or state.champion == 0:
        return None
    last = max(state.last_attempt_at, state.champion_since)
    if now - last < every:
        return None
    return _periodic(state, buffer, spec, f"schedule:v{state.champion}:{int(last)}",
                     spec.retrain.on_schedule, now)


def on_new_labels(state: ControllerState, buffer: LabeledBuffer, spec: UseCaseSpec, now: float) -> Decision | None:
    """``retrain.new_labels`` labeled rows newer than the champion's window (or than its
    last rejected retry)."""
    n = spec.retrain.new_labels
    if n <= 0 or state.champion == 0:
        return None
    ref = max(champion_end(state) or float("-inf"), state.attempt_end.get(state.champion, float("-inf")))
    if buffer.count_after(None if ref == float("-inf") else ref) < n:
        return None
    tag = "all" if ref == float("-inf") else f"{ref:.3f}"
    return _periodic(state, buffer, spec, f"new_labels:v{state.champion}:{tag}", spec.retrain.on_new_labels, now)


def on_metrics(state: ControllerState, rec: MetricsRecord, buffer: LabeledBuffer, spec: UseCaseSpec,
               now: float) -> Decision | None:
    """Measured (never estimated) overall performance of the champion worse than the floor."""
    r = spec.retrain
    if (r.performance_floor is None or rec.kind != "performance" or rec.slice is not None or rec.estimated
            or rec.model_version != state.champion or rec.window < r.performance_min_labels):
        return None
    value = rec.metrics.get(r.primary_metric)
    if value is None or not worse_than(value, r.performance_floor, r.primary_metric):
        return None
    trigger_id = f"performance:v{state.champion}:{state.attempts.get(state.champion, 0)}"
    return _periodic(state, buffer, spec, trigger_id, r.on_performance, now,
                     fresh_after=state.attempt_end.get(state.champion))


def worse_than(value: float, floor: float, metric: str) -> bool:
    return value > floor if metric in LOWER_IS_BETTER else value < floor


# -- readiness --------------------------------------------------------------------------
def effective_mode(state: ControllerState, trigger: Trigger) -> Mode:
    """Stateful needs a champion artifact to continue; the baseline has none."""
    if trigger.mode == "stateful" and trigger.champion and trigger.champion in state.promoted:
        return "stateful"
    return "stateless"


def check_ready(state: ControllerState, buffer: LabeledBuffer, spec: UseCaseSpec,
                now: float) -> tuple[bool, str, str]:
    """Can the pending trigger train now? ``(ready, code, why)``; codes: busy, idle,
    too_few_labels, rollout_in_progress, budget, ready, ready_fallback."""
    r = spec.retrain
    if state.in_flight is not None:
        return False, "busy", f"training {state.in_flight.label} in progress"
    pending = state.pending
    if pending is None:
        return False, "idle", "idle: no pending trigger"
    min_labels = max(2, r.min_labels)
    start, need = pending.since, min_labels
    if effective_mode(state, pending) == "stateful":
        end = champion_end(state)
        start = end if start is None or (end is not None and end > start) else start
        have = buffer.count_after(start) if start is not None else len(buffer)
    else:
        have = len(buffer.eligible(start))
        if pending.basis == "change_point":
            need = max(min_labels, r.window_min or min_labels)
    code = "ready"
    if have < need:
        waited = now - pending.raised_at
        if not (pending.basis == "change_point" and waited >= r.change_point_max_wait and len(buffer) >= min_labels):
            return False, "too_few_labels", (f"{pending.label} waiting: {have}/{need} labeled rows since {start}")
        code = "ready_fallback"
    if pending.fresh_after is not None:
        fresh = buffer.count_after(pending.fresh_after)
        if fresh < min_labels:
            return False, "too_few_labels", (f"{pending.label} waiting: {fresh}/{min_labels} new labeled rows "
                                             f"since the rejected attempt (data up to {pending.fresh_after})")
    if state.challenger is not None:
        return False, "rollout_in_progress", (f"{pending.label} waiting: v{state.challenger} is in rollout "
                                              "(shadow/canary); the next candidate is trained after it ends")
    if budget_left(state, spec, now) <= 0:
        return False, "budget", f"{pending.label} waiting: retrain budget of {r.budget_per_hour}/h used up"
    return True, code, f"{pending.label} ready: {have} labeled rows since {start}"


def readiness(state: ControllerState, buffer: LabeledBuffer, min_labels: int) -> tuple[bool, str]:
    """Compatibility wrapper of :func:`check_ready` with only a label minimum."""
    spec = RetrainSpec(min_labels=min_labels, budget_per_hour=0)
    ready, _, why = check_ready(state, buffer, _SpecView(spec), 0.0)  # type: ignore[arg-type]
    return ready, why


@dataclass(frozen=True)
class _SpecView:
    retrain: RetrainSpec


