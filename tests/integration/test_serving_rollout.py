"""Rollouts against a real broker and Redis: a hot swap under concurrent load (no failed or
mixed-version answer), and shadow -> canary -> rollback driven by the real `rivulet models` CLI."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import httpx

from services.serving.settings import ServingSettings
from shared import codec, modeling
from shared.contracts import ModelEvent, PredictionRecord
from shared.spec import load_spec
from tests.helpers import ROOT, Stack, consume_all, produce
from tests.integration.test_serving import SECRET, _model_event, _publish, running, serving_settings, write_features

SPEC = load_spec()
ROWS = [({"amount": float(a), "channel": "online" if a % 2 else "pos"}, a > 500) for a in range(0, 1000, 7)]
ONLINE = {"txn_count_5m": 2.0, "amount_sum_5m": 80.0}
FIELDS = {"amount": 640.0, "merchant_category": "grocery", "country": "US", "channel": "online"}


def _expected_score(model: Any) -> float:
    raw = {f.name: f.default for f in SPEC.features if f.default is not None} | ONLINE | FIELDS
    return modeling.score(model, raw, SPEC)


async def test_hot_swap_under_load_has_no_failed_or_mixed_answers(stack: Stack) -> None:
    write_features(stack.redis.url, "card-1", ONLINE, time.time())
    new_model = modeling.train(SPEC, ROWS)
    expected = {0: (_expected_score(modeling.BaselineModel(SPEC.model.baseline)), SPEC.model.threshold),
                1: (_expected_score(new_model), 0.3)}
    answers: list[tuple[int, int, float, float, float]] = []  # worker, status/version, score, threshold, t
    statuses: list[int] = []
    stop = asyncio.Event()

    async def worker(client: httpx.AsyncClient, n: int) -> None:
        while not stop.is_set():
            resp = await client.post("/predict", json={"entity_id": "card-1", "features": FIELDS})
            statuses.append(resp.status_code)
            if resp.status_code == 200:
                body = resp.json()
                answers.append((n, body["model_version"], body["score"], body["threshold"], time.monotonic()))

    async with running(serving_settings(stack)) as client:
        tasks = [asyncio.create_task(worker(client, n)) for n in range(8)]
        await asyncio.sleep(0.5)
        announced = time.monotonic()  # before the send: the measured swap time is an upper bound
        await _publish(stack, 1, _model_event(1, new_model, SECRET))
        deadline = announced + 15
        while time.monotonic() < deadline and not any(v == 1 and t > announced for _, v, _, _, t in answers):
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*tasks)

    assert statuses and set(statuses) == {200}, set(statuses)
    first_new = min(t for _, v, _, _, t in answers if v == 1)
    swap_s = first_new - announced
    print(f"hot swap: v1 answering {swap_s * 1000:.0f} ms after the announcement was sent; "
          f"{len(answers)} requests during the test")
    assert swap_s < 10  # generous bound; the measured value is informational
    for _, version, score, threshold, _ in answers:  # every answer is ONE model's, whole
        assert (score, threshold) == expected[version], (version, score, threshold)
    for n in range(8):  # per client, versions never go backwards
        versions = [v for w, v, _, _, _ in answers if w == n]
        assert versions == sorted(versions)
    assert {v for _, v, _, _, _ in answers} == {0, 1}


async def _cli(stack: Stack, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shared.cli", "models", *args, cwd=ROOT, env=stack.env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()
    return out.decode()


async def _registered(stack: Stack, version: int, model: Any) -> None:
    """What retrain publishes before promoting: a signed artifact the CLI can re-announce."""
    event = ModelEvent.model_validate(codec.loads(_model_event(version, model, SECRET)))
    event = event.model_copy(update={"event": "registered"})
    await produce(stack.broker.url, "models", [(str(version).encode(), codec.dumps(event.model_dump(mode="json")))])


async def _models(client: httpx.AsyncClient, check: Any, what: str, timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = (await client.get("/models")).json()
        if check(body):
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}: {body}")


async def _predict_many(client: httpx.AsyncClient, n: int) -> list[dict[str, Any]]:
    return [(await client.post("/predict", json={"entity_id": f"card-{i}", "features": FIELDS})).json()
            for i in range(n)]


async def test_shadow_canary_and_rollback_from_the_cli(stack: Stack) -> None:
    settings: ServingSettings = serving_settings(stack)
    champion, challenger = modeling.train(SPEC, ROWS), modeling.train(SPEC, [(x, not y) for x, y in ROWS])
    async with running(settings) as client:
        await _publish(stack, 1, _model_event(1, champion, SECRET))
        await _registered(stack, 2, challenger)
        await _models(client, lambda b: b["champion"]["version"] == 1, "v1 champion")

        await _cli(stack, "promote", "2", "--strategy", "shadow", "--who", "tester", "--why", "try it")
        body = await _models(client, lambda b: b["challenger"] is not None, "shadow challenger")
        assert body["routing"]["shadow"] is True and body["challenger"]["version"] == 2
        shadowed = await _predict_many(client, 5)
        assert {(a["model_version"], a["role"]) for a in shadowed} == {(1, "champion")}

        await _cli(stack, "promote", "2", "--strategy", "canary", "--share", "0.5")
        body = await _models(client, lambda b: b["routing"]["strategy"] == "canary", "canary")
        assert body["routing"]["challenger_share"] == 0.5
        canary = await _predict_many(client, 40)
        again = await _predict_many(client, 40)
        sides = [(a["model_version"], a["role"]) for a in canary]
        assert set(sides) == {(1, "champion"), (2, "challenger")}
        assert sides == [(a["model_version"], a["role"]) for a in again]  # sticky per entity

        out = await _cli(stack, "rollback", "--why", "canary looked worse")
        assert "challenger v2 dropped" in out
        await _models(client, lambda b: b["challenger"] is None, "rollout aborted")
        assert {a["model_version"] for a in await _predict_many(client, 10)} == {1}
        await _cli(stack, "rollback")  # no rollout left: back to the champion before v1
        body = await _models(client, lambda b: b["champion"]["version"] == 0, "rollback to v0")
        assert body["history"][-1]["event"] == "rolled_back" and body["history"][-1]["outcome"] == "serving"

    ids = {a["prediction_id"] for a in shadowed}
    want = {f"{i}.shadow" for i in ids} | ids
    records = await consume_all(stack.broker.url, "predictions", timeout=20,
                                until=lambda recs: want <= {r.key.decode() for r in recs})
    by_id = {r.key.decode(): PredictionRecord.model_validate(codec.loads(r.value)) for r in records}
    for pid in ids:
        shadow, answered = by_id[f"{pid}.shadow"], by_id[pid]
        assert (shadow.role, shadow.model_version, answered.role, answered.model_version) == ("shadow", 2, "champion", 1)
        assert shadow.features == answered.features and shadow.score != answered.score
    events = [ModelEvent.model_validate(codec.loads(r.value)) for r in await consume_all(
        stack.broker.url, "models", timeout=10, until=lambda recs: len(recs) >= 6)]
    assert [(e.event, e.strategy, e.who) for e in events[2:4]] == [("promoted", "shadow", "tester"),
                                                                  ("promoted", "canary", events[3].who)]
    assert events[4].event == "rolled_back" and events[4].reason == "canary looked worse" and events[4].who
