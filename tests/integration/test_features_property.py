"""One definition, two engines, through the real streaming service.

Hypothesis draws event streams (out-of-order arrivals within the allowed lateness,
duplicates, a few entities); each is produced to ``events.valid`` and consumed by ONE
features process started for the whole test, running the fraud spec plus hopping and
tumbling windows of every aggregation. Every entity's Redis hash must equal the batch
function ``compute_features`` over the same events at the entity's newest event time.
Each example uses fresh entity ids, so examples do not interfere.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import redis as redis_sync
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.spec import UseCaseSpec, default_spec_path, load_spec
from tests.helpers import Stack, wait_for
from tests.integration.test_features import (
    SPEC,
    all_applied,
    assert_store_matches_batch_engine,
    produce,
)

# Every aggregation over a hopping (1h, hop 15m) and a tumbling (6h) window, on top of the
# fraud spec's sliding ones; same feature-set version and keys as the fraud spec.
KINDS_TOML = "".join(
    f'\n[[features]]\nname = "{agg}_{kind}"\nagg = "{agg}"\n{field}window = "{window}"\nkind = "{kind}"\n{hop}'
    for kind, window, hop in (("hopping", "1h", 'hop = "15m"\n'), ("tumbling", "6h", ""))
    for agg, field in (("count", ""), ("sum", 'field = "amount"\n'), ("mean", 'field = "amount"\n'),
                       ("min", 'field = "amount"\n'), ("max", 'field = "amount"\n'), ("std", 'field = "amount"\n'),
                       ("last", 'field = "amount"\n'), ("distinct_count", 'field = "channel"\n'),
                       ("time_since_last", ""))
)

LATENESS = SPEC.features_config.allowed_lateness
_example = itertools.count()


@st.composite
def streams(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Events of 1-3 entities in arrival order: time + jitter < lateness, some produced twice."""
    run = next(_example)
    n = draw(st.integers(1, 40))
    entities = [f"prop-{run}-{i}" for i in range(draw(st.integers(1, 3)))]
    events = []
    for i in range(n):
        events.append({
            "schema_version": 1, "event_id": f"p{run}-{i}", "entity_id": draw(st.sampled_from(entities)),
            "event_time": 1.7e9 + draw(st.floats(0, 30 * 3600, allow_nan=False)),
            "amount": draw(st.floats(0, 1e6, allow_nan=False)),
            "merchant_category": draw(st.sampled_from(["grocery", "fuel", "travel"])),
            "country": "DE", "channel": draw(st.sampled_from(["online", "pos", "atm"])), "ingested_at": 1.0,
        })
    jitter = draw(st.lists(st.floats(0, LATENESS, exclude_max=True), min_size=n, max_size=n))
    arrival = [e for _, e in sorted(zip((e["event_time"] + j for e, j in zip(events, jitter)), events),
                                    key=lambda p: p[0])]
    for i in draw(st.lists(st.integers(0, n - 1), max_size=8)):  # a redelivered / re-produced copy
        pos = arrival.index(events[i])
        arrival.insert(pos + draw(st.integers(1, 5)), dict(events[i]))
    return arrival


@pytest.fixture
def features_service(stack: Stack) -> tuple[redis_sync.Redis, UseCaseSpec]:
    spec_file = stack.tmp / "kinds.toml"
    text = default_spec_path().read_text()
    head, tail = text.split("[features_config]")
    spec_file.write_text(f"{head}{KINDS_TOML}\n[features_config]{tail}")
    spec = load_spec(spec_file)
    assert {f.kind for f in spec.features} == {"sliding", "hopping", "tumbling"}
    stack.spawn("services.features", RIVULET_SPEC=spec_file, RIVULET_SESSION_TIMEOUT_S=4)
    return redis_sync.Redis.from_url(stack.redis.url), spec


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arrival=streams())
def test_streaming_service_equals_batch_function(stack: Stack, features_service: tuple[redis_sync.Redis, UseCaseSpec],
                                                 arrival: list[dict[str, Any]]) -> None:
    r, spec = features_service
    last = produce(stack, arrival)
    wait_for(lambda: all_applied(r, last), timeout=45, what="the example applied")
    assert_store_matches_batch_engine(r, arrival, spec)
    assert all(p.poll() is None for p in stack.procs)
