"""Which models serve: version 0 (the spec's baseline) until the ``models`` topic says otherwise,
then a champion and possibly a challenger (shadow or canary, see :mod:`rollout`).

The routing is ONE attribute holding an immutable :class:`Routing`; a swap replaces the
reference. A request reads ``registry.routing`` once and scores with that object, so an
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
from dataclasses import dataclass, field, replace
from typing import Any

from shared.batch_scoring import BatchScorer, batch_scorer
from shared.contracts import ModelEvent
from shared.modeling import ArtifactRejected, BaselineModel, Scorer, load_verified, score, sha256
from shared.spec import UseCaseSpec

from services.serving.rollout import RouteState, Strategy, in_canary, transition

log = logging.getLogger(__name__)
VECTORISE_FROM = 8
# Not echoed by /models: the artifact is large and opaque, the profile is monitoring's input.
LINEAGE_EXCLUDED = frozenset({"artifact_b64", "reference_profile"})


@dataclass(frozen=True)
class Champion:
    version: int
    model: Scorer
    threshold: float
    metrics: dict[str, float] = field(default_factory=dict)
    since: float = 0.0
    many: BatchScorer | None = None  # compiled at load: vectorised for the linear pipeline
    event: dict[str, Any] = field(default_factory=dict)  # the announcement, minus artifact/profile

    def score_rows(self, raws: list[dict[str, Any]], spec: UseCaseSpec) -> list[float]:
        """Scores of raw rows: River row by row for a few (exact, and cheaper than numpy's
        set-up), the compiled batch scorer from ``VECTORISE_FROM`` rows on (within 1e-9)."""
        if self.many is None or len(raws) < VECTORISE_FROM:
            model = self.model
            return [score(model, raw, spec) for raw in raws]
        return self.many(raws)

    def describe(self) -> dict[str, Any]:
        return {"version": self.version, "threshold": self.threshold,
                "metrics": dict(self.metrics), "since": self.since, "lineage": dict(self.event)}


@dataclass(frozen=True)
class Routing:
    """One immutable snapshot of who answers. A request reads ``registry.routing`` ONCE and
    routes every item with it, so a swap never mixes versions inside a request."""

    champion: Champion
    challenger: Champion | None = None
    strategy: Strategy = "full"
    share: float = 0.0

    def choose(self, entity_id: str) -> tuple[Champion, str, Champion | None]:
        """(model that answers, its role, model that scores in shadow or None)."""
        challenger = self.challenger
        if challenger is None:
            return self.champion, "champion", None
        if self.strategy == "shadow":
            return self.champion, "champion", challenger
        if in_canary(entity_id, challenger.version, self.share):
            return challenger, "challenger", None
        return self.champion, "champion", None

    def describe(self) -> dict[str, Any]:
        return {"strategy": self.strategy if self.challenger else "full",
                "challenger_share": self.share if self.strategy == "canary" and self.challenger else 0.0,
                "shadow": self.challenger is not None and self.strategy == "shadow",
                "sticky_by": "blake2b(challenger_version:entity_id)"}


class Refused(Exception):
    """A model event that cannot be applied (bad artifact, unknown version)."""


class ModelRegistry:
    def __init__(self, spec: UseCaseSpec, secret: str, history_size: int = 200) -> None:
        baseline = Champion(0, BaselineModel(spec.model.baseline), spec.model.threshold, {}, time.time(),
                            event={"version": 0, "event": "baseline", "reason": "the spec's baseline model"})
        self._spec = spec
        self.routing = Routing(baseline)
        self.state = RouteState()
        self._secret = secret
        self._known: dict[int, Champion] = {0: baseline}
        self.history: deque[dict[str, Any]] = deque(maxlen=history_size)
        # version -> its latest announcement (registered / promoted / rejected), for /models
        self.lineage: dict[int, dict[str, Any]] = {0: baseline.event}
        self.caught_up = False  # set once the models topic has been replayed to its end

    @property
    def current(self) -> Champion:
        """The champion (answers every request not routed to a canary)."""
        return self.routing.champion

    @property
    def versions(self) -> list[int]:
        return sorted(self._known)

    def apply(self, event: ModelEvent, now: float | None = None) -> str:
        """Apply one ``models`` event; returns the outcome (also kept in ``history``).
        A refused event changes nothing: whatever served before keeps serving."""
        now = time.time() if now is None else now
        reason = event.reason
        if event.event != "rolled_back":  # a rollback says nothing new about the version itself
            self.lineage[event.version] = lineage(event)
        try:
            if event.event == "promoted":
                self._known[event.version] = self._load(event)
            elif event.event == "rolled_back":
                self._known_version(event.version)
            if event.event in ("promoted", "rolled_back"):
                outcome = self._route(transition(self.state, event), now)
            else:  # registered / rejected: informational for serving
                outcome = "noted"
        except Refused as exc:
            outcome, reason = "refused", str(exc)
            log.warning("model event %s v%d refused: %s", event.event, event.version, exc)
        self.history.append({"version": event.version, "event": event.event, "outcome": outcome,
                             "strategy": event.strategy, "reason": reason, "who": event.who, "at": now})
        return outcome

    def _route(self, state: RouteState, now: float) -> str:
        """Publish the new snapshot with ONE assignment (atomic on the event loop)."""
        old = self.routing
        champion = _since(self._known[state.champion], old.champion, now)
        challenger = None if state.challenger is None else _since(
            self._known[state.challenger], old.challenger, now)
        self.state = state
        self.routing = Routing(champion, challenger, state.strategy, state.share)
        log.info("champion v%d, challenger %s (%s)", champion.version,
                 f"v{challenger.version}" if challenger else "none", state.strategy)
        return "serving" if challenger is None else state.strategy

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
        return Champion(event.version, model, event.threshold, dict(event.metrics),
                        many=batch_scorer(model, self._spec), event=lineage(event))


def lineage(event: ModelEvent) -> dict[str, Any]:
    """Every field of the announcement (whatever ModelEvent carries now or later) except the
    artifact and the reference profile."""
    return {k: v for k, v in event.model_dump(mode="json").items() if k not in LINEAGE_EXCLUDED}


def _since(model: Champion, before: Champion | None, now: float) -> Champion:
    """``since`` = when this version (re)started serving in this role."""
    keep = before is not None and before.version == model.version
    return replace(model, since=before.since if keep and before else now)
