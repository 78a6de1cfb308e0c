"""retrain.decisions: every decision of the retrain controller and the progress of each training.

Why a topic: "why did (or didn't) it retrain?" must be answerable after the fact, by
anyone, without the controller's logs. One record per decision; ``decision_id`` is derived
from what was decided, so a restarted controller that re-decides the same thing republishes
nothing (and a consumer can dedupe on it).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.contracts import Contract, Id, TrainingWindow

DecisionAction = Literal[
    "pending",   # a trigger was accepted and waits for its guards
    "merged",    # a trigger joined the pending or running training (debounce)
    "skipped",   # a trigger was dropped: see ``code``
    "deferred",  # a pending trigger cannot train yet: see ``code`` (too_few_labels, budget)
    "train",     # training starts: trigger, policy and window
    "started",   # the training worker is running
    "progress",  # an epoch finished
    "finished",  # the worker answered (artifact sha256 in ``message``)
    "failed",    # the worker crashed or timed out
    "passed",    # the gate passed: the candidate is registered and promoted
    "rejected",  # the gate failed: ``reasons`` lists every failed check
]


class RetrainDecision(Contract):
    decision_id: Id
    action: DecisionAction
    # machine-readable reason: budget, too_few_labels, duplicate_incident, duplicate_request,
    # resolved, policy, stale_model, champion_changed, disabled, ... ("" for plain progress)
    code: str = ""
    message: str = ""
    trigger: str = ""  # the trigger ids concerned (comma-joined), e.g. drift:inc-7,request:r1
    trigger_kind: str = ""  # drift | performance | schedule | new_labels | request | bootstrap
    source_id: str | None = None  # the alert/request/metrics record that caused the decision
    champion: int = 0
    version: int | None = None  # the candidate version (train .. passed/rejected)
    policy: Literal["stateless", "stateful"] | None = None
    window: TrainingWindow | None = None
    progress: float | None = Field(default=None, ge=0.0, le=1.0)
    metrics: dict[str, float] = Field(default_factory=dict)
    reasons: tuple[str, ...] = ()
    decided_at: float
