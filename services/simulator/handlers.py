"""Pure bookkeeping for the simulator's status table."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


@dataclass
class Stats:
    """Counters the status table shows; ``accuracy`` is over the last ``window`` labels."""

    window: int = 500
    events: int = 0
    predictions: int = 0
    failed_requests: int = 0
    labels: int = 0
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=2000))
    correct: deque[bool] = field(default_factory=lambda: deque(maxlen=500))
    model_version: int | None = None
    versions_seen: dict[int, int] = field(default_factory=dict)
    last_alert: dict[str, Any] | None = None
    alerts: int = 0
    phase: str = "warm-up"
    # (model version, "before shift" | "after shift") -> correctness of each labeled prediction
    accuracy_by_version: dict[tuple[int, str], list[bool]] = field(default_factory=dict)

    def record_prediction(self, response: dict[str, Any], latency_ms: float) -> None:
        self.predictions += 1
        self.latencies_ms.append(latency_ms)
        version = int(response["model_version"])
        self.model_version = version
        self.versions_seen[version] = self.versions_seen.get(version, 0) + 1

    def record_label(self, predicted: bool, actual: bool, version: int, phase: str = "before shift") -> None:
        self.labels += 1
        self.correct.append(predicted == actual)
        self.accuracy_by_version.setdefault((version, phase), []).append(predicted == actual)

    @property
    def accuracy(self) -> float | None:
        return sum(self.correct) / len(self.correct) if self.correct else None

    def snapshot(self) -> dict[str, Any]:
        lat = list(self.latencies_ms)
        return {
            "phase": self.phase, "events": self.events, "predictions": self.predictions,
            "failed_requests": self.failed_requests, "labels": self.labels,
            "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99),
            "accuracy": self.accuracy, "model_version": self.model_version, "alerts": self.alerts,
            "last_alert": self.last_alert,
        }
