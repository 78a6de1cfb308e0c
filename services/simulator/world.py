"""A seeded card-fraud world on a virtual clock. Pure: no I/O.

Cards transact as Poisson processes (about ``txn_per_hour`` each). Fraud comes in bursts
on a compromised card. Two things can change at the shift:

* covariate shift: every amount is scaled by ``amount_scale`` and a new merchant category
  (``crypto``) appears;
* concept change: fraud moves from "big online purchases abroad" to "card testing"
  (rapid small amounts at home, ATM/online).

The virtual clock runs faster than wall time so that 5 min / 1 h / 24 h windows reach a
steady state within a short demo.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field
from typing import Any

CATEGORIES = ("grocery", "fuel", "restaurant", "travel", "pharmacy", "clothing", "electronics", "jewelry")
COUNTRIES = ("FR", "DE", "US", "GB", "ES", "IT", "NL", "BR")
NEW_CATEGORY = "crypto"


@dataclass(frozen=True)
class Card:
    card_id: str
    home: str
    log_amount: float
    categories: tuple[str, ...]
    online_share: float


@dataclass(frozen=True)
class Txn:
    """One transaction: the events.raw record and the ground truth behind it."""

    event: dict[str, Any]
    is_fraud: bool

    @property
    def request_fields(self) -> dict[str, Any]:
        return {k: self.event[k] for k in ("amount", "merchant_category", "country", "channel")}


@dataclass
class World:
    n_cards: int = 1000
    seed: int = 7
    start_time: float = 0.0
    txn_per_hour: float = 1.0
    compromise_rate: float = 0.012
    amount_scale: float = 1.0
    new_category_share: float = 0.0
    concept: str = "A"
    now: float = field(init=False)
    _rng: random.Random = field(init=False, repr=False)
    _cards: list[Card] = field(init=False, repr=False)
    _queue: list[tuple[float, int, int, bool]] = field(init=False, repr=False)
    _seq: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self.now = self.start_time
        self._cards = [self._make_card(i) for i in range(self.n_cards)]
        self._queue = []
        for i in range(self.n_cards):
            self._schedule(i, self.now + self._gap(), fraud=False)

    def _make_card(self, i: int) -> Card:
        r = self._rng
        return Card(f"card-{i:05d}", r.choice(COUNTRIES), r.gauss(3.4, 0.5),
                    tuple(r.sample(CATEGORIES[:6], 3)), r.uniform(0.05, 0.4))

    def _gap(self) -> float:
        return self._rng.expovariate(self.txn_per_hour / 3600.0)

    def _schedule(self, card: int, t: float, fraud: bool) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (t, self._seq, card, fraud))

    def shift(self, *, amount_scale: float = 2.5, new_category_share: float = 0.2, concept: str = "B") -> None:
        """Apply the covariate shift and the concept change from now on."""
        self.amount_scale, self.new_category_share, self.concept = amount_scale, new_category_share, concept

    def next(self) -> Txn:
        t, seq, idx, fraud = heapq.heappop(self._queue)
        self.now = t
        card = self._cards[idx]
        if not fraud:
            self._schedule(idx, t + self._gap(), fraud=False)
            if self._rng.random() < self.compromise_rate:
                self._start_burst(idx, t)
        fields = self._fraud_fields(card) if fraud else self._normal_fields(card)
        event = {"event_id": f"ev-{self.seed}-{seq}", "entity_id": card.card_id,
                 "event_time": round(t, 3), **fields}
        return Txn(event, fraud)

    def _start_burst(self, idx: int, t: float) -> None:
        r = self._rng
        length, mean_gap = (r.randint(3, 5), 40.0) if self.concept == "A" else (r.randint(5, 8), 12.0)
        for _ in range(length):
            t += r.expovariate(1 / mean_gap)
            self._schedule(idx, t, fraud=True)

    def _normal_fields(self, card: Card) -> dict[str, Any]:
        r = self._rng
        category = NEW_CATEGORY if r.random() < self.new_category_share else r.choice(card.categories)
        channel = "online" if r.random() < card.online_share else r.choice(("pos", "pos", "pos", "atm"))
        amount = math.exp(r.gauss(card.log_amount, 0.6)) * self.amount_scale
        country = card.home if r.random() < 0.95 else r.choice(COUNTRIES)
        return {"amount": round(amount, 2), "merchant_category": category, "country": country, "channel": channel}

    def _fraud_fields(self, card: Card) -> dict[str, Any]:
        r = self._rng
        if self.concept == "A":  # big purchases abroad, online
            amount = math.exp(card.log_amount) * r.uniform(4, 12) * self.amount_scale
            category = r.choice(("electronics", "jewelry"))
            country = r.choice([c for c in COUNTRIES if c != card.home]) if r.random() < 0.7 else card.home
            channel = "online" if r.random() < 0.8 else "pos"
        else:  # card testing: tiny amounts at home
            amount = r.uniform(0.5, 4.0) * self.amount_scale
            category = r.choice(card.categories)
            country = card.home
            channel = r.choice(("atm", "online", "pos"))
        return {"amount": round(amount, 2), "merchant_category": category, "country": country, "channel": channel}
