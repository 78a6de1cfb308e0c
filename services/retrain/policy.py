"""What a training learns from and how its candidate is judged: the window plan
(stateless or stateful, recent or from the change point, with its minimum size), the
validation gate over holdout + replay + slices + sanity, and the version's lineage.

Pure (no I/O). The replay is the recorded production traffic neither model trained on:
labeled rows served after the champion's training window (and not before the newest known
concept change point), not in the candidate's training rows, in the order their labels actually arrived, with the features exactly as served.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

from services.retrain.guards import effective_mode
from services.retrain.handlers import (
    LOWER_IS_BETTER,
    ControllerState,
    Trigger,
    gate,
)
from services.retrain.rows import Row, split_window
from shared.contracts import ModelEvent, TrainingWindow
from shared.spec import UseCaseSpec
from shared.topics import PREDICTIONS_LABELED

# Periodic refreshes: "is the candidate better on today's traffic?" -- their replay starts at
# the candidate's window, so a slow (gradual) change does not let older traffic, which the
# spec's window deliberately leaves out, favour a champion that learned it.
REFRESH_KINDS = frozenset({"new_labels", "schedule", "performance"})


@dataclass
class Plan:
    mode: str
    basis: str
    since: float | None
    train: list[Row]
    holdout: list[Row]
    replay: list[Row]
    parent: ModelEvent | None = None  # the artifact a stateful update continues
    notes: list[str] = field(default_factory=list)  # fallbacks, said out loud
    half_life: int | None = None  # rows weighted 2^(-age/half_life) (retrain.recency_half_life)

    def window(self) -> TrainingWindow:
        return rows_window(self.train, basis=self.basis, since=self.since,
                           fallback="; ".join(self.notes) or None, recency_half_life=self.half_life)


def rows_window(rows: list[Row], **extra: Any) -> TrainingWindow:
    """Time range, count and per-partition [first, last] offsets of ``rows``."""
    offsets: dict[str, tuple[int, int]] = {}
    for r in rows:
        if r.partition < 0:
            continue
        lo, hi = offsets.get(str(r.partition), (r.offset, r.offset))
        offsets[str(r.partition)] = (min(lo, r.offset), max(hi, r.offset))
    return TrainingWindow(start=rows[0].served_at if rows else 0.0, end=rows[-1].served_at if rows else 0.0,
                          count=len(rows), topic=PREDICTIONS_LABELED.name, offsets=offsets or None, **extra)


def plan_window(rows: list[Row], trigger: Trigger, state: ControllerState, spec: UseCaseSpec) -> Plan:
    """``rows``: every buffered labeled row, oldest first."""
    r = spec.retrain
    mode, notes = effective_mode(state, trigger), []
    if trigger.mode == "stateful" and mode == "stateless":
        notes.append("stateful asked but the champion has no artifact (baseline): trained stateless")
    champ = state.promoted.get(trigger.champion)
    champ_end = champ.trained_on.end if champ is not None and champ.trained_on is not None else None
    since, basis = trigger.since, trigger.basis
    if mode == "stateful":
        cand = [x for x in rows if (champ_end is None or x.served_at > champ_end)
                and (since is None or x.served_at >= since)]
        basis = "stateful"
    elif since is not None:
        cand = [x for x in rows if x.served_at >= since]
        wmin = r.window_min or r.min_labels
        if basis == "change_point" and len(cand) < wmin:
            notes.append(f"only {len(cand)} labeled rows since the change point: extended back to "
                         f"the most recent {wmin}")
            cand = rows[-wmin:]
    else:
        cand, basis = list(rows), "recent"
    train, holdout = split_window(cand, r.window, r.holdout_fraction)
    used = {x.prediction_id for x in train}
    # traffic from before the newest known concept change would judge the candidate on a
    # concept it must not learn (and favour a champion that still knows it)
    floor = since if state.concept_since is None else max(since or state.concept_since, state.concept_since)
    if trigger.kind in REFRESH_KINDS and train:  # a refresh is judged on the traffic its window stands for
        floor = max(floor if floor is not None else train[0].served_at, train[0].served_at)
    replay = sorted((x for x in rows if x.prediction_id not in used
                     and (champ_end is None or x.served_at > champ_end)
                     and (floor is None or x.served_at >= floor)),
                    key=lambda x: (x.labeled_at, x.prediction_id))
    # no known change point: the newest rows stand for the concept to learn (a gradual change)
    half_life = r.recency_half_life if basis == "recent" else None
    return Plan(mode, basis, since, train, holdout, replay, champ if mode == "stateful" else None, notes, half_life)


# -- the gate -------------------------------------------------------------------------------
def judge(result: dict[str, Any], spec: UseCaseSpec) -> tuple[bool, list[str], str]:
    """Every check, every failure: ``(passed, reasons, summary)``."""
    r, v = spec.retrain, result["validation"]
    metric, reasons = r.primary_metric, []
    ok, verdict = gate(v["holdout"]["candidate"], v["holdout"]["champion"], metric, r.margin)
    summary = [f"holdout {verdict}"]
    if not ok:
        reasons.append(f"holdout: {verdict}")
    replay = v["replay"]
    if replay["candidate"].get("count", 0) >= r.replay_min_rows:
        ok, verdict = gate(replay["candidate"], replay["champion"], metric, r.margin)
        summary.append(f"replay {verdict}")
        if not ok:
            reasons.append(f"replay: {verdict}")
    else:
        summary.append(f"replay: {int(replay['candidate'].get('count', 0))} rows < {r.replay_min_rows}, not gated")
    reasons += slice_reasons(v["slices"], metric, r.slice_tolerance, r.slice_min_rows)
    reasons += sanity_reasons(v["sanity"], r.min_score_std)
    return not reasons, reasons, "; ".join(summary)


def slice_reasons(slices: dict[str, Any], metric: str, tolerance: float, min_rows: int) -> list[str]:
    out = []
    for name, s in sorted(slices.items()):
        if s["count"] < min_rows:
            continue
        cand, champ = s["candidate"][metric], s["champion"][metric]
        loss = cand - champ if metric in LOWER_IS_BETTER else champ - cand
        if loss > tolerance:
            out.append(f"slice {name}: {metric} candidate={cand:.4f} champion={champ:.4f} "
                       f"worse by {loss:.4f} > tolerance {tolerance} ({s['count']} rows)")
    return out


def sanity_reasons(sanity: dict[str, Any], min_std: float) -> list[str]:
    out = []
    if sanity["non_finite"]:
        out.append(f"sanity: {sanity['non_finite']} NaN/inf scores")
    if sanity["rows"] and not sanity["score_std"] > min_std:
        out.append(f"sanity: score distribution collapsed (std {sanity['score_std']:.2e} <= {min_std})")
    if sanity["both_classes"] and sanity["positive_share"] in (0.0, 1.0):
        out.append(f"sanity: predicts one label for every row (positive share {sanity['positive_share']:.0f}) "
                   "although both labels occur")
    return out


# -- lineage --------------------------------------------------------------------------------
def spec_hash(spec: UseCaseSpec) -> str:
    return hashlib.sha256(spec.model_dump_json().encode()).hexdigest()


def lineage(plan: Plan, spec: UseCaseSpec, code_version: str, result: dict[str, Any] | None) -> dict[str, Any]:
    """The ModelEvent lineage fields of a candidate (validation only when it was trained)."""
    r = spec.retrain
    params = {"learner": spec.model.learner.model_dump(mode="json"), "window": r.window,
              "holdout_fraction": r.holdout_fraction, "margin": r.margin, "primary_metric": r.primary_metric,
              "train_rows": len(plan.train), "holdout_rows": len(plan.holdout), "replay_rows": len(plan.replay)}
    if plan.parent is not None:
        params["parent_artifact_sha256"] = plan.parent.artifact_sha256
    out: dict[str, Any] = dict(spec_name=spec.name, spec_hash=spec_hash(spec),
                               feature_set_version=spec.feature_set_version, policy=plan.mode, params=params,
                               seed=spec.model.learner.seed, code_version=code_version)
    if result is not None:
        validation = dict(result["validation"])
        validation["holdout_window"] = rows_window(plan.holdout).model_dump(mode="json") if plan.holdout else None
        validation["replay_window"] = _replay_window(plan.replay)
        out["validation"] = validation
    return out


def _replay_window(rows: list[Row]) -> dict[str, Any] | None:
    if not rows:
        return None
    served = sorted(x.served_at for x in rows)
    return rows_window(rows).model_copy(update={"start": served[0], "end": served[-1]}).model_dump(mode="json")


def finite_metrics(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
