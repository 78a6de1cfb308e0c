"""Records for ``retrain.decisions``: one per decision and per training step (pure).

``decision_id`` is a digest of what was decided (action, trigger, source, code, version,
step), so the same decision made again after a restart has the same id: the controller
remembers the ids it has seen on the topic and publishes each decision once.
"""

from __future__ import annotations

import hashlib
from typing import Any

from services.retrain.handlers import Decision, Trigger, kind_of
from shared.contracts import RetrainDecision, TrainingWindow

ACTIONS = {"pending": "pending", "merged": "merged", "skip": "skipped", "defer": "deferred"}


def decision_id(*parts: Any) -> str:
    return hashlib.blake2b("|".join(str(p) for p in parts).encode(), digest_size=16).hexdigest()


def from_decision(d: Decision, source_id: str | None, champion: int, now: float) -> RetrainDecision:
    """A trigger decision (pending / merged / skipped / deferred)."""
    action = ACTIONS[d.action]
    return RetrainDecision(
        decision_id=decision_id(action, d.trigger_id, source_id, d.code), action=action,  # type: ignore[arg-type]
        code=d.code, message=d.reason, trigger=d.trigger_id, trigger_kind=kind_of(d.trigger_id),
        source_id=source_id, champion=champion, policy=d.mode, decided_at=now)


def deferred(trigger: Trigger, code: str, why: str, now: float) -> RetrainDecision:
    return RetrainDecision(
        decision_id=decision_id("deferred", trigger.label, code, trigger.since, trigger.fresh_after),
        action="deferred", code=code, message=why, trigger=trigger.label, trigger_kind=trigger.kind,
        champion=trigger.champion, policy=trigger.mode, decided_at=now)


def step(action: str, trigger: Trigger, now: float, *, code: str = "", message: str = "",
         policy: str | None = None, window: TrainingWindow | None = None, progress: float | None = None,
         metrics: dict[str, float] | None = None, reasons: tuple[str, ...] = (), part: Any = "") -> RetrainDecision:
    """A training step of candidate ``trigger.version``: train, started, progress, finished,
    failed, passed, rejected."""
    return RetrainDecision(
        decision_id=decision_id(action, trigger.label, trigger.version, code, part), action=action,  # type: ignore[arg-type]
        code=code, message=message, trigger=trigger.label, trigger_kind=trigger.kind, champion=trigger.champion,
        version=trigger.version, policy=policy, window=window, progress=progress, metrics=metrics or {},
        reasons=reasons, decided_at=now)
