"""Rollout rules, on versions only: which version is champion, which is challenger and how
traffic is split. Pure (no I/O, no models), so serving's registry and ``rivulet models
rollback`` fold the ``models`` topic with the same rules and agree on "the previous version".

Strategies of a ``promoted`` event: ``full`` (default) makes it the champion; ``shadow`` makes
it a challenger that scores every request but never answers; ``canary`` makes it a challenger
that answers a share of entities, chosen by a stable hash of the entity id (sticky). A
``rolled_back`` event serves ``version`` again as the champion and ends any rollout.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Literal

from shared.contracts import ModelEvent

Strategy = Literal["full", "shadow", "canary"]
DEFAULT_CANARY_SHARE = 0.1
HISTORY = 50  # previous champions remembered for rollbacks


@dataclass(frozen=True)
class RouteState:
    champion: int = 0
    challenger: int | None = None
    strategy: Strategy = "full"
    share: float = 0.0  # share of entities the challenger answers (canary only)
    previous: tuple[int, ...] = ()  # earlier champions, oldest first


def transition(state: RouteState, event: ModelEvent) -> RouteState:
    """The state after one ``models`` event (events other than promoted/rolled_back: unchanged)."""
    if event.event == "promoted":
        strategy: Strategy = event.strategy or "full"
        if strategy == "full":
            if event.version == state.champion:
                return replace(state, challenger=None, strategy="full", share=0.0)
            previous = (*state.previous, state.champion)[-HISTORY:]
            return RouteState(event.version, None, "full", 0.0, previous)
        if event.version == state.champion:
            return state  # already answering everything
        share = 0.0 if strategy == "shadow" else (
            DEFAULT_CANARY_SHARE if event.share is None else event.share)
        return replace(state, challenger=event.version, strategy=strategy, share=share)
    if event.event == "rolled_back":
        previous = state.previous
        if event.version in previous:  # back to an earlier champion: forget what came after it
            previous = previous[: len(previous) - 1 - previous[::-1].index(event.version)]
        elif event.version != state.champion:
            previous = (*previous, state.champion)[-HISTORY:]
        return RouteState(event.version, None, "full", 0.0, previous)
    return state


def rollback_target(state: RouteState) -> int | None:
    """What ``rivulet models rollback`` serves: the champion when a rollout is under way
    (the challenger is dropped), else the champion before the current one (None: nothing)."""
    if state.challenger is not None:
        return state.champion
    return state.previous[-1] if state.previous else None


def fold(events: list[ModelEvent]) -> RouteState:
    state = RouteState()
    for event in events:
        state = transition(state, event)
    return state


def in_canary(entity_id: str, version: int, share: float) -> bool:
    """Sticky: the same entity always lands on the same side for one challenger version.
    blake2b, not ``hash()``: Python's string hash changes with every process."""
    if share <= 0.0:
        return False
    if share >= 1.0:
        return True
    digest = hashlib.blake2b(f"{version}:{entity_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < share * 2**64
