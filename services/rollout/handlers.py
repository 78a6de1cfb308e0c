"""Pure rollout logic: which stage is under way (a fold of ``models``), and what to do next.

The stage comes from the same transition rules serving routes with
(:func:`services.serving.rollout.transition`), so the controller and every serving replica
agree on who is champion and challenger. A verdict is one of ``wait``, ``canary`` (leave
shadow), ``full`` (promote) or ``rollback`` (withdraw the challenger; champion unchanged),
with a reason that carries the numbers; :func:`step_event` turns it into the ``models`` event.

Rules (``tolerance`` is in the primary metric's units; accuracy is a second guard; "significant"
means beyond ``confidence_z`` standard errors of the difference):
* worse: the challenger trails by more than ``tolerance`` and significantly, on the primary
  metric or on accuracy;
* better: not worse, at least as good on the primary metric, and not significantly worse
  than the tolerance allows (the lower confidence bound of the gain is >= -tolerance);
* shadow -> canary once ``shadow_predictions`` requests were shadow-scored and
  ``shadow_min_labels`` of them are labeled, unless worse (-> rollback);
* canary -> full once both sides have ``canary_min_labels`` labeled canary-period predictions
  and the challenger is better; worse -> rollback; in between: wait for more labels;
* after ``stage_timeout`` in one stage: ``on_timeout`` (rollback, or advance unless worse).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from services.rollout.evidence import Side, StageEvidence
from services.serving.rollout import RouteState, transition
from shared.contracts import ModelEvent
from shared.spec import RolloutSpec

LOWER_IS_BETTER = frozenset({"log_loss"})
WHO = "rollout"
Action = Literal["wait", "canary", "full", "rollback"]


@dataclass(frozen=True)
class Stage:
    """One stage of one challenger. ``offset``: the ``models`` offset that started it."""

    version: int
    champion: int
    strategy: Literal["shadow", "canary"]
    share: float
    started_at: float
    offset: int
    announcement: ModelEvent | None  # the challenger's signed artifact (re-announced as is)

    @property
    def key(self) -> tuple[int, int, str]:
        return self.version, self.champion, self.strategy

    def elapsed(self, now: float) -> float:
        return max(0.0, now - self.started_at)


class ModelsFold:
    """Fold of ``models``: routing state, last artifact per version, the current stage.
    A re-announcement of the same stage (a duplicate) keeps the stage and its start."""

    def __init__(self) -> None:
        self.route = RouteState()
        self.artifacts: dict[int, ModelEvent] = {}
        self.stage: Stage | None = None

    def apply(self, event: ModelEvent, offset: int) -> None:
        if event.artifact_b64:
            self.artifacts[event.version] = event
        self.route = r = transition(self.route, event)
        if r.challenger is None or r.strategy not in ("shadow", "canary"):
            self.stage = None
            return
        key = (r.challenger, r.champion, r.strategy)
        if self.stage is not None and self.stage.key == key:
            return
        self.stage = Stage(r.challenger, r.champion, r.strategy, r.share,  # type: ignore[arg-type]
                           event.created_at, offset, self.artifacts.get(r.challenger))


@dataclass(frozen=True)
class Comparison:
    gain: float  # primary metric, positive = challenger better
    se: float  # standard error of ``gain``
    worse: bool
    better: bool
    text: str
    evidence: dict[str, dict[str, float]]


def _gain(challenger: Side, champion: Side, metric: str) -> tuple[float, float]:
    ch, cp = challenger.metrics()[metric], champion.metrics()[metric]
    gain = cp - ch if metric in LOWER_IS_BETTER else ch - cp
    return gain, math.hypot(challenger.se(metric), champion.se(metric))


def _worse(gain: float, se: float, tolerance: float, z: float) -> bool:
    """Trails by more than ``tolerance``, and significantly trails at all."""
    return gain < -tolerance and gain + z * se < 0


def compare(challenger: Side, champion: Side, metric: str, tolerance: float, z: float = 0.0) -> Comparison:
    """Worse: significantly worse beyond tolerance on the primary metric or on accuracy.
    Better: at least as good on the primary metric, confidently not worse than the tolerance
    allows, and not worse on accuracy."""
    gain, se = _gain(challenger, champion, metric)
    acc_gain, acc_se = _gain(challenger, champion, "accuracy")
    worse = _worse(gain, se, tolerance, z) or _worse(acc_gain, acc_se, tolerance, z)
    better = not worse and gain >= 0 and gain - z * se >= -tolerance
    ch, cp = challenger.metrics(), champion.metrics()
    direction = "lower" if metric in LOWER_IS_BETTER else "higher"
    text = (f"{metric} challenger={ch[metric]:.4f} champion={cp[metric]:.4f} ({direction} is better; "
            f"gain {gain:+.4f} ± {se:.4f} se), accuracy challenger={ch['accuracy']:.4f} "
            f"champion={cp['accuracy']:.4f}, on {len(challenger)}/{len(champion)} labeled predictions, "
            f"tolerance {tolerance}, z {z}")
    return Comparison(gain, se, worse, better, text, {"challenger": ch, "champion": cp})


@dataclass(frozen=True)
class Verdict:
    action: Action
    reason: str
    evidence: dict[str, dict[str, float]] | None = None


def verdict(stage: Stage, ev: StageEvidence, spec: RolloutSpec, metric: str, now: float) -> Verdict:
    if stage.strategy == "shadow":
        return shadow_verdict(stage, ev, spec, metric, now)
    return canary_verdict(stage, ev, spec, metric, now)


def shadow_verdict(stage: Stage, ev: StageEvidence, spec: RolloutSpec, metric: str, now: float) -> Verdict:
    pairs = len(ev.champion_side)
    progress = (f"{ev.shadow_count}/{spec.shadow_predictions} shadow-scored requests, "
                f"{pairs}/{spec.shadow_min_labels} labeled")
    cmp = compare(ev.challenger_side, ev.champion_side, metric, spec.tolerance, spec.confidence_z) if pairs else None
    if ev.shadow_count >= spec.shadow_predictions and pairs >= spec.shadow_min_labels:
        if cmp is None:
            return Verdict("canary", f"v{stage.version} shadow: {progress}; no labels to compare yet")
        if cmp.worse:
            return Verdict("rollback", f"v{stage.version} shadow worse than champion v{stage.champion} "
                                       f"beyond tolerance: {cmp.text} ({progress})", cmp.evidence)
        return Verdict("canary", f"v{stage.version} shadow not worse than champion v{stage.champion}: "
                                 f"{cmp.text} ({progress})", cmp.evidence)
    if stage.elapsed(now) >= spec.stage_timeout:
        return on_timeout(stage, cmp, spec, now, progress, never_scored=ev.shadow_count == 0)
    return Verdict("wait", f"v{stage.version} shadow: {progress}")


def canary_verdict(stage: Stage, ev: StageEvidence, spec: RolloutSpec, metric: str, now: float) -> Verdict:
    n_ch, n_cp = len(ev.challenger_side), len(ev.champion_side)
    progress = (f"labeled canary predictions challenger {n_ch}/{spec.canary_min_labels}, "
                f"champion {n_cp}/{spec.canary_min_labels}")
    cmp = compare(ev.challenger_side, ev.champion_side, metric, spec.tolerance, spec.confidence_z) if n_ch and n_cp else None
    if cmp is not None and min(n_ch, n_cp) >= spec.canary_min_labels:
        if cmp.worse:
            return Verdict("rollback", f"v{stage.version} canary worse than champion v{stage.champion} "
                                       f"beyond tolerance: {cmp.text}", cmp.evidence)
        if cmp.better:
            return Verdict("full", f"v{stage.version} canary better than champion v{stage.champion}: "
                                   f"{cmp.text}", cmp.evidence)
        progress = f"within tolerance but not better, waiting for more labels: {cmp.text}"
    if stage.elapsed(now) >= spec.stage_timeout:
        return on_timeout(stage, cmp, spec, now, progress, never_scored=False)
    return Verdict("wait", f"v{stage.version} canary (share {stage.share}): {progress}")


def on_timeout(stage: Stage, cmp: Comparison | None, spec: RolloutSpec, now: float, progress: str,
               never_scored: bool) -> Verdict:
    """``rollback``: withdraw. ``promote``: advance unless the labels so far show it worse
    (or, in shadow, it never scored a request: serving probably refused the artifact)."""
    head = (f"v{stage.version} {stage.strategy} timed out after {stage.elapsed(now):.0f} s "
            f"(stage_timeout {spec.stage_timeout:.0f} s, on_timeout {spec.on_timeout}): {progress}")
    evidence = cmp.evidence if cmp else None
    if spec.on_timeout == "rollback" or never_scored or (cmp is not None and cmp.worse):
        suffix = "; never shadow-scored" if never_scored else ("; worse: " + cmp.text if cmp and cmp.worse else "")
        return Verdict("rollback", head + suffix, evidence)
    return Verdict("canary" if stage.strategy == "shadow" else "full", head + "; advancing", evidence)


def step_event(stage: Stage, decided: Verdict, spec: RolloutSpec, now: float) -> ModelEvent:
    """The ``models`` event of a verdict. Promotions re-announce the challenger's signed
    artifact (serving loads it again; drift reads its reference profile); a rollback serves
    the champion again and names the withdrawn challenger."""
    common = {"created_at": now, "who": WHO, "reason": decided.reason, "evidence": decided.evidence or {}}
    if decided.action == "rollback" or stage.announcement is None:
        reason = decided.reason if stage.announcement else f"{decided.reason}; no artifact known for v{stage.version}"
        return ModelEvent(event="rolled_back", version=stage.champion, parent=stage.champion,
                          withdrawn=stage.version, trigger=WHO, **{**common, "reason": reason})
    if decided.action not in ("canary", "full"):
        raise ValueError(f"no event for verdict {decided.action!r}")
    update = dict(event="promoted", strategy=decided.action,
                  share=spec.canary_share if decided.action == "canary" else None, **common)
    return stage.announcement.model_copy(update=update)
