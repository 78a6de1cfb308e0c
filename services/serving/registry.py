"""Which model serves: version 0 (the spec's baseline) until the ``models`` topic says otherwise.

The champion is ONE attribute holding an immutable :class:`Champion`; a swap replaces the
reference. A request reads ``registry.current`` once and scores with that object, so an
in-flight request finishes with the model it started with, and no lock is needed on the
event loop. Artifacts are verified (HMAC) before unpickling; a refused artifact leaves the
current champion serving.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from shared.contracts import ModelEvent
from shared.modeling import ArtifactRejected, BaselineModel, Scorer, load_verified, sha256
from shared.spec import UseCaseSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Champion:
    version: int
    model: Scorer
    threshold: float
    metrics: dict[str, float] = field(default_factory=dict)
    since: float = 0.0

    def describe(self) -> dict[str, Any]:
        return {"version": self.version, "threshold": self.threshold,
                "metrics": dict(self.metrics), "since": self.since}


class Refused(Exception):
    """A model event that cannot be applied (bad artifact, unknown version)."""


class ModelRegistry:
    def __init__(self, spec: UseCaseSpec, secret: str, history_size: int = 200) -> None:
        baseline = Champion(0, BaselineModel(spec.model.baseline), spec.model.threshold, {}, time.time())
        self.current: Champion = baseline
        self._secret = secret
        self._known: dict[int, Champion] = {0: baseline}
        self.history: deque[dict[str, Any]] = deque(maxlen=history_size)
        self.caught_up = False  # set once the models topic has been replayed to its end

    @property
    def versions(self) -> list[int]:
        return sorted(self._known)

    def apply(self, event: ModelEvent, now: float | None = None) -> str:
        """Apply one ``models`` event; returns the outcome (also kept in ``history``)."""
        now = time.time() if now is None else now
        reason = event.reason
        try:
            if event.event == "promoted":
                self._swap(self._load(event), now)
                outcome = "serving"
            elif event.event == "rolled_back":
                self._swap(self._known_version(event.version), now)
                outcome = "serving"
            else:  # registered / rejected: informational for serving
                outcome = "noted"
        except Refused as exc:
            outcome, reason = "refused", str(exc)
            log.warning("model event %s v%d refused: %s", event.event, event.version, exc)
        self.history.append({"version": event.version, "event": event.event, "outcome": outcome,
                             "reason": reason, "at": now})
        return outcome

    def _swap(self, champion: Champion, now: float) -> None:
        # A new object each time: `since` records when this version (re)started serving.
        champion = Champion(champion.version, champion.model, champion.threshold, champion.metrics, now)
        self._known[champion.version] = champion
        self.current = champion
        log.info("now serving model version %d (threshold %.3f)", champion.version, champion.threshold)

    def _known_version(self, version: int) -> Champion:
        if version not in self._known:
            raise Refused(f"cannot roll back to version {version}: never loaded by this replica")
        return self._known[version]

    def _load(self, event: ModelEvent) -> Champion:
        if not event.artifact_b64:
            raise Refused("promoted event carries no artifact")
        try:
            artifact = base64.b64decode(event.artifact_b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise Refused(f"artifact is not valid base64: {exc}") from None
        if event.artifact_sha256 and event.artifact_sha256 != sha256(artifact):
            raise Refused("artifact sha256 does not match its bytes")
        try:
            model = load_verified(artifact, event.signature, self._secret)
        except ArtifactRejected as exc:
            raise Refused(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - a signed but unloadable pickle
            raise Refused(f"artifact could not be loaded: {exc!r}") from None
        if not callable(getattr(model, "predict_proba_one", None)):
            raise Refused("artifact is not a model (no predict_proba_one)")
        return Champion(event.version, model, event.threshold, dict(event.metrics))
