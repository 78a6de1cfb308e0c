"""The concept-drift streams of the concept benchmark (pure: no I/O).

Each case is a seeded River synthetic stream with ONE concept change at a known index:
* ``sea_abrupt``: SEA, variant 3 (label: x0 + x1 > 9.5) -> variant 2 (> 7), abrupt;
* ``agrawal_abrupt``: Agrawal, classification function 0 -> 2, abrupt;
* ``sea_gradual``: river's ``ConceptDriftStream`` from SEA variant 0 (> 8) to variant 3
  (> 9.5): the new concept's share follows a sigmoid centred on the change index, ``width``
  events wide.
Rows are ``(fields, label)``: ``fields`` are the request-time fields of POST /predict, named
as in the case's spec (SEA's integer keys become ``x0..x2``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from river.datasets import synth

SPECS = Path(__file__).resolve().parents[1] / "shared" / "specs"
Row = tuple[dict[str, float], bool]


@dataclass(frozen=True)
class Case:
    """One benchmark stream: ``change`` = index of the first event drawn from the new concept
    (abrupt) or the centre of the transition (gradual, ``width`` > 0)."""

    name: str
    spec: Path
    description: str
    make: Callable[[int, int, int], Iterator[tuple[dict[Any, Any], Any]]]  # (seed, change, width)
    width: int = 0
    # The two concepts as functions, (fields, new concept?) -> label: the "majority oracle"
    # of a gradual change (old concept before the centre, new one from it) bounds how soon
    # ANY predictor's trailing accuracy can be back (the report's recovery_reference).
    concepts: Callable[[dict[str, float], bool], bool] | None = None

    def transition(self, change: int) -> tuple[int, int]:
        """[start, end) of the transition: the concept is the old one before ``start`` and
        the new one from ``end`` on (abrupt: start = end = change)."""
        half = self.width // 2
        return max(0, change - half), change + half


def _fields(x: dict[Any, Any]) -> dict[str, float]:
    return {(f"x{k}" if isinstance(k, int) else str(k)): float(v) for k, v in x.items()}


def _abrupt(old: Any, new: Any, change: int) -> Iterator[tuple[dict[Any, Any], Any]]:
    return itertools.chain(itertools.islice(iter(old), change), iter(new))


def _sea_abrupt(seed: int, change: int, width: int) -> Iterator[tuple[dict[Any, Any], Any]]:
    return _abrupt(synth.SEA(variant=3, seed=seed), synth.SEA(variant=2, seed=seed + 1), change)


def _agrawal_abrupt(seed: int, change: int, width: int) -> Iterator[tuple[dict[Any, Any], Any]]:
    return _abrupt(synth.Agrawal(classification_function=0, seed=seed),
                   synth.Agrawal(classification_function=2, seed=seed + 1), change)


def _sea_gradual(seed: int, change: int, width: int) -> Iterator[tuple[dict[Any, Any], Any]]:
    return iter(synth.ConceptDriftStream(stream=synth.SEA(variant=0, seed=seed),
                                         drift_stream=synth.SEA(variant=3, seed=seed + 1),
                                         position=change, width=max(1, width), seed=seed + 2))


CASES: dict[str, Case] = {
    "sea_abrupt": Case("sea_abrupt", SPECS / "sea.toml",
                       "SEA variant 3 -> 2 (x0 + x1 > 9.5 becomes > 7), abrupt", _sea_abrupt),
    "agrawal_abrupt": Case("agrawal_abrupt", SPECS / "agrawal.toml",
                           "Agrawal classification function 0 -> 2, abrupt", _agrawal_abrupt),
    "sea_gradual": Case("sea_gradual", SPECS / "sea.toml",
                        "SEA variant 0 -> 3 (x0 + x1 > 8 becomes > 9.5), gradual (ConceptDriftStream)",
                        _sea_gradual, width=2000, concepts=lambda x, new: sea_label(x, 9.5 if new else 8.0)),
}


def rows(case: Case, before: int, after: int, seed: int) -> list[Row]:
    """``before`` events, then the change, then ``after`` events (gradual: the transition's
    centre is at ``before``)."""
    stream = case.make(seed, before, case.width)
    return [(_fields(x), bool(y)) for x, y in itertools.islice(stream, before + after)]


def sea_label(fields: dict[str, float], theta: float) -> bool:
    """SEA's concept: x0 + x1 > theta (variants 0..3: 8, 9, 7, 9.5)."""
    return fields["x0"] + fields["x1"] > theta
