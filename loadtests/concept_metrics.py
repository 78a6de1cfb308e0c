"""Pure accounting of the concept benchmark: prequential accuracy, recovery, incidents, swaps.

``correct`` sequences are indexed by stream position; ``None`` marks an event without an
answer (a failed request), which no accuracy counts. No I/O here: the unit tests drive it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Correct = Sequence[bool | None]
RETRAIN_KINDS = ("concept_drift", "data_drift", "prediction_drift")


def accuracy(correct: Correct, lo: int = 0, hi: int | None = None) -> float | None:
    """Share of answered events in [lo, hi) that were right (None: nothing answered)."""
    part = [c for c in correct[max(0, lo):hi] if c is not None]
    return sum(part) / len(part) if part else None


def rolling(correct: Correct, window: int) -> list[float | None]:
    """Trailing accuracy over the last ``window`` events at each index (answered ones only)."""
    out: list[float | None] = []
    hits = seen = 0
    for i, c in enumerate(correct):
        if c is not None:
            hits, seen = hits + c, seen + 1
        if i >= window and correct[i - window] is not None:
            old = correct[i - window]
            hits, seen = hits - bool(old), seen - 1
        out.append(hits / seen if seen else None)
    return out


def prequential(learner: Any, rows: Sequence[tuple[dict[str, float], bool]], delay: int) -> list[bool]:
    """Test-then-train with delayed labels: event i is predicted before the learner has seen
    the labels of events i - delay + 1 .. i (the same delay the services get). An untrained
    learner's ``None`` answer counts as "false"."""
    out: list[bool] = []
    for i, (x, y) in enumerate(rows):
        out.append(bool(learner.predict_one(x)) == y)
        j = i - delay + 1
        if j >= 0:
            learner.learn_one(*rows[j])
    return out


def static(predict: Callable[[dict[str, float]], bool], rows: Sequence[tuple[dict[str, float], bool]]) -> list[bool]:
    """A model never retrained: its answer to every event."""
    return [predict(x) == y for x, y in rows]


def recovery(correct: Correct, start: int, level: float | None, window: int, tolerance: float) -> int | None:
    """Events after ``start`` until the trailing-``window`` accuracy is back within
    ``tolerance`` of ``level`` AND stays there to the end of the stream. 0: it never left;
    None: still below at the end (or no level)."""
    if level is None:
        return None
    roll = rolling(correct, window)
    below = [k for k in range(start, len(roll)) if roll[k] is not None and roll[k] < level - tolerance]
    if not below:
        return 0
    if below[-1] == len(roll) - 1:
        return None
    return below[-1] + 1 - start


def phases(correct: Correct, start: int, end: int, pre: int, steady: int) -> dict[str, float | None]:
    """Accuracy before the change (the ``pre`` events before ``start``), after it (from the
    end of the transition), over the transition, and over the last ``steady`` events."""
    return {"before": accuracy(correct, start - pre, start),
            "after": accuracy(correct, end),
            "transition": accuracy(correct, start, end) if end > start else None,
            "after_last": accuracy(correct, max(end, len(correct) - steady))}


@dataclass(frozen=True)
class Served:
    """What POST /predict returned for one event (``version`` None: the request failed)."""

    index: int
    sent_at: float
    recv_at: float
    version: int | None
    label: bool | None

    @property
    def ok(self) -> bool:
        return self.version is not None


def served_correct(served: Sequence[Served], truth: Sequence[bool]) -> list[bool | None]:
    out: list[bool | None] = [None] * len(truth)
    for s in served:
        if s.ok:
            out[s.index] = s.label == truth[s.index]
    return out


def first_answer(served: Sequence[Served], version: int, after: float = 0.0) -> Served | None:
    """The first answer (by receive time) given by ``version`` after ``after``."""
    hits = [s for s in served if s.version == version and s.recv_at >= after]
    return min(hits, key=lambda s: s.recv_at) if hits else None


def _becomes_champion(ev: dict[str, Any]) -> bool:
    return ev.get("event") == "rolled_back" or (
        ev.get("event") == "promoted" and ev.get("strategy") in (None, "full"))


def incidents(alerts: Sequence[dict[str, Any]], models: Sequence[dict[str, Any]],
              served: Sequence[Served]) -> list[dict[str, Any]]:
    """Per opened incident: when it was detected, the champion promoted for it (its trigger
    names the incident; else the first full promotion after detection of a newer version),
    and when /predict first answered with that version."""
    out = []
    promotions = sorted((m for m in models if _becomes_champion(m) and m.get("event") == "promoted"),
                        key=lambda m: m["created_at"])
    for alert in sorted(alerts, key=lambda a: a["detected_at"]):
        if alert.get("status", "opened") != "opened":
            continue
        incident = alert.get("incident_id") or alert["alert_id"]
        named = [m for m in promotions if f"drift:{incident}" in m.get("trigger", "").split(",")]
        later = [m for m in promotions if m["created_at"] >= alert["detected_at"]
                 and m["version"] > alert["model_version"]]
        promo = (named or later or [None])[0]
        row: dict[str, Any] = {"incident_id": incident, "kind": alert["kind"], "severity": alert.get("severity"),
                               "model_version": alert["model_version"], "detected_at": alert["detected_at"],
                               "test": alert.get("test"), "answered_by_trigger": bool(named)}
        if promo is not None:
            first = first_answer(served, promo["version"], promo["created_at"] - 5.0)
            row.update(promoted_version=promo["version"], promoted_at=promo["created_at"],
                       detect_to_promote_s=promo["created_at"] - alert["detected_at"])
            if first is not None:
                row.update(first_served_at=first.recv_at, first_served_index=first.index,
                           detect_to_serving_s=first.recv_at - alert["detected_at"])
        out.append(row)
    return out


def swaps(served: Sequence[Served], around_s: float = 10.0) -> list[dict[str, Any]]:
    """The first answer of every version after the first one (in send order; a canary's
    back-and-forth counts once), with the failed requests sent within ``around_s`` seconds."""
    ordered = sorted(served, key=lambda s: s.sent_at)
    out: list[dict[str, Any]] = []
    seen: list[int] = []
    for s in ordered:
        if s.ok and s.version not in seen:
            if seen:
                failed = sum(1 for f in ordered if not f.ok and abs(f.sent_at - s.recv_at) <= around_s)
                out.append({"from": seen[-1], "to": s.version, "at": s.recv_at, "index": s.index,
                            "failed_nearby": failed, "nearby_s": around_s})
            seen.append(s.version)  # type: ignore[arg-type]
    return out


def downsample(series: Sequence[float | None], step: int) -> list[float | None]:
    """Every ``step``-th value (rounded), for the report's plot data."""
    return [None if v is None else round(v, 4) for v in series[step - 1::step]]
