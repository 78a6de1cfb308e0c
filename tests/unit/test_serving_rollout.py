"""Pure serving rules: rollout transitions, sticky canary routing, batch validation, staleness
and API keys."""

from __future__ import annotations

import base64

import pytest

from services.serving import handlers
from services.serving.auth import key_ok, presented_key
from services.serving.registry import ModelRegistry
from services.serving.rollout import RouteState, fold, in_canary, rollback_target, transition
from shared import modeling
from shared.contracts import ModelEvent
from shared.spec import load_spec

SPEC = load_spec()
SECRET = "unit-secret"
ITEM = handlers.build_request_model(SPEC)
BATCH = handlers.build_batch_model(ITEM, max_items=3)


def promoted(version: int, strategy: str | None = None, share: float | None = None) -> ModelEvent:
    return ModelEvent(event="promoted", version=version, created_at=1.0, strategy=strategy, share=share)


def rolled_back(version: int) -> ModelEvent:
    return ModelEvent(event="rolled_back", version=version, created_at=2.0, who="alice", reason="bad canary")


def test_full_promotions_stack_previous_champions_and_rollback_pops_them() -> None:
    state = fold([promoted(1), promoted(2), promoted(3)])
    assert state == RouteState(champion=3, previous=(0, 1, 2))
    assert rollback_target(state) == 2
    state = transition(state, rolled_back(2))
    assert state.champion == 2 and state.previous == (0, 1) and rollback_target(state) == 1
    assert rollback_target(RouteState()) is None  # nothing before the baseline


def test_shadow_and_canary_make_a_challenger_and_rollback_drops_it() -> None:
    state = fold([promoted(1), promoted(2, "canary", 0.25)])
    assert (state.champion, state.challenger, state.strategy, state.share) == (1, 2, "canary", 0.25)
    assert rollback_target(state) == 1  # abort the rollout, keep the champion
    aborted = transition(state, rolled_back(1))
    assert aborted.challenger is None and aborted.champion == 1 and aborted.previous == (0,)
    shadow = transition(state, promoted(3, "shadow"))
    assert (shadow.challenger, shadow.strategy, shadow.share) == (3, "shadow", 0.0)
    graduated = transition(shadow, promoted(3, "full"))
    assert graduated == RouteState(champion=3, previous=(0, 1))
    assert transition(RouteState(), promoted(4, "canary")).share == 0.1  # default share


def test_canary_routing_is_sticky_and_close_to_the_share() -> None:
    entities = [f"card-{i}" for i in range(20_000)]
    chosen = [e for e in entities if in_canary(e, 7, 0.1)]
    assert 0.09 < len(chosen) / len(entities) < 0.11
    assert chosen == [e for e in entities if in_canary(e, 7, 0.1)]  # same answer every time
    assert set(chosen) <= {e for e in entities if in_canary(e, 7, 0.3)}  # a wider share keeps them
    assert not in_canary("x", 7, 0.0) and in_canary("x", 7, 1.0)


def _signed(version: int, strategy: str | None, share: float | None = None, *, secret: str = SECRET) -> ModelEvent:
    rows = [({"amount": float(i), "channel": "pos"}, i % 3 == 0) for i in range(60)]
    artifact = modeling.serialize(modeling.train(SPEC, rows))
    return ModelEvent(event="promoted", version=version, created_at=1.0, threshold=0.4, strategy=strategy,
                      share=share, artifact_b64=base64.b64encode(artifact).decode(),
                      artifact_sha256=modeling.sha256(artifact), signature=modeling.sign(artifact, secret))


def test_registry_routes_canary_and_shadow_with_one_snapshot() -> None:
    reg = ModelRegistry(SPEC, SECRET)
    assert reg.apply(_signed(1, "canary", 0.5)) == "canary"
    routing = reg.routing
    assert routing.champion.version == 0 and routing.challenger and routing.challenger.version == 1
    answers = {e: routing.choose(e) for e in (f"c{i}" for i in range(200))}
    roles = {role for _, role, _ in answers.values()}
    assert roles == {"champion", "challenger"}
    for entity, (model, role, shadow) in answers.items():
        assert shadow is None and model.version == (1 if role == "challenger" else 0)
        assert routing.choose(entity)[0] is model  # sticky
    assert reg.apply(_signed(2, "canary", 0.5, secret="wrong")) == "refused"
    assert reg.routing is routing  # refused: nothing changed
    assert reg.apply(_signed(2, "shadow")) == "shadow"
    model, role, shadow = reg.routing.choose("c1")
    assert (model.version, role, shadow.version if shadow else None) == (0, "champion", 2)
    assert routing.challenger.version == 1  # the old snapshot is untouched (in-flight requests)
    assert reg.apply(rolled_back(0)) == "serving" and reg.routing.challenger is None
    assert [h["outcome"] for h in reg.history] == ["canary", "refused", "shadow", "serving"]
    assert reg.history[-1]["who"] == "alice"


def test_batch_errors_name_the_item_and_field() -> None:
    body = (b'{"items": [{"entity_id": "a"}, {"entity_id": "b", "features": {"amount": "x"}},'
            b' {"entity_id": "c", "features": {"channel": "fax"}}]}')
    with pytest.raises(handlers.RequestError) as info:
        handlers.parse_request(body, BATCH, 10_000)
    locs = [d["loc"] for d in info.value.detail]
    assert locs == [["items", 1, "features", "amount"], ["items", 2, "features", "channel"]], locs
    body = b'{"items": [{"entity_id": "a"}, {"entity_id": "c", "features": {"amount": NaN}}]}'
    with pytest.raises(handlers.RequestError) as info:
        handlers.parse_request(body, BATCH, 10_000)
    assert info.value.detail[0]["loc"] == ["items", 1, "features", "amount"]  # non-JSON NaN, named
    for bad, loc in ((b'{"items": []}', ["items"]), (b'{"items": [' + b'{"entity_id": "a"},' * 3 +
                     b'{"entity_id": "z"}]}', ["items"]), (b'{"items": [{"features": {}}]}', ["items", 0, "entity_id"])):
        with pytest.raises(handlers.RequestError) as info:
            handlers.parse_request(bad, BATCH, 10_000)
        assert info.value.detail[0]["loc"] == loc, info.value.detail
    ok = handlers.parse_request(b'{"items": [{"entity_id": "a", "features": {"amount": 3}}]}', BATCH, 10_000)
    assert handlers.request_fields(ok["items"][0]) == {"amount": 3}


def test_stale_features_are_flagged_only_when_a_max_age_is_set() -> None:
    assert handlers.freshness(100.0, 200.0, 0.0) == (100.0, ())
    assert handlers.freshness(100.0, 200.0, 150.0) == (100.0, ())
    assert handlers.freshness(100.0, 200.0, 60.0) == (100.0, (handlers.STALE_FEATURES,))
    assert handlers.freshness(None, 200.0, 60.0) == (None, ())


def test_api_key_from_either_header_compared_against_every_key() -> None:
    keys = (b"k1", b"k2")
    assert presented_key([(b"x-api-key", b" k2 ")]) == b"k2"
    assert presented_key([(b"authorization", b"Bearer k1")]) == b"k1"
    assert presented_key([(b"authorization", b"Basic abc")]) is None
    assert key_ok(b"k2", keys) and not key_ok(b"k3", keys) and not key_ok(None, keys) and not key_ok(b"", keys)


def test_fast_murmur2_matches_the_kafka_default_partitioner() -> None:
    import os

    from aiokafka.partitioner import murmur2 as reference

    from services.serving.background import murmur2

    keys = [os.urandom(n) for n in range(0, 70) for _ in range(20)] + [b"prediction-1", b"\xff" * 33]
    assert all(murmur2(k) == reference(k) for k in keys)


@pytest.mark.parametrize("raw_hash, item", [
    ({}, {"entity_id": "e"}),
    ({"txn_count_5m": "3", "amount_mean_24h": "nan", "amount_max_5m": "x", "_event_time": "12.5", "zz": "1"},
     {"entity_id": "e", "features": {"amount": 5, "channel": None, "country": "FR"}}),
    ({"txn_count_1h": "7.5", "amount": "99"}, {"entity_id": "e", "features": {"amount": 1.5}}),
])
def test_fused_inputs_equal_the_composed_pure_functions(raw_hash: dict, item: dict) -> None:
    values, event_time = handlers.parse_feature_hash(raw_hash, SPEC)
    raw, used = handlers.merge(handlers.with_defaults(values, SPEC), handlers.request_fields(item), SPEC)
    fused = handlers.inputs(raw_hash, item, handlers.feature_table(SPEC), SPEC.model_inputs)
    assert fused == (raw, used, event_time)
