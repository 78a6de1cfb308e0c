"""The rollout controller as a real process, with real serving and label_join processes, a real
broker and Redis: traffic goes through POST /predict, labels through ``labels.valid``.

A good candidate goes shadow -> canary -> full; a bad one is rolled back in shadow, and a bad
canary started by hand is rolled back too; a controller started late and killed mid-rollout
neither repeats nor loses a step."""

from __future__ import annotations

import asyncio
import base64
import random
import re
import signal
import time
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer

from shared import codec, modeling
from shared.contracts import ModelEvent
from shared.embedded import free_port
from shared.spec import default_spec_path, load_spec
from tests.helpers import Stack, consume_all, produce

SECRET = "rollout-secret"
SPEC = load_spec()
ROWS = [({"amount": float(a), "channel": "online" if a % 2 else "pos"}, a > 500) for a in range(0, 1000, 7)]
ROLLOUT = """
[rollout]
enabled = true
shadow_predictions = 40
shadow_min_labels = 20
canary_share = 0.5
canary_min_labels = 25
tolerance = 0.02
stage_timeout = "2m"
"""


def _spec(tmp: Path) -> Path:
    """The demo spec with a small, fast [rollout] policy (any [rollout] section replaced)."""
    text = re.split(r"^\[rollout\]", default_spec_path().read_text(), flags=re.MULTILINE)[0]
    path = tmp / "rollout_spec.toml"
    path.write_text(text + ROLLOUT)
    return path


def _good() -> Any:
    return modeling.train(SPEC, ROWS)


def _bad() -> Any:
    return modeling.train(SPEC, [(x, not y) for x, y in ROWS])


def _announce(version: int, model: Any, strategy: str, share: float | None = None) -> ModelEvent:
    artifact = modeling.serialize(model)
    return ModelEvent(event="promoted", version=version, parent=0, created_at=time.time(), threshold=0.3,
                      metrics={"accuracy": 0.85, "log_loss": 0.2}, trigger=f"test:{version}",
                      artifact_b64=base64.b64encode(artifact).decode(), artifact_sha256=modeling.sha256(artifact),
                      signature=modeling.sign(artifact, SECRET), strategy=strategy, share=share, who="tester",
                      reason="candidate passed the gate", reference_profile={"rows": 1})


async def _publish(stack: Stack, event: ModelEvent) -> None:
    await produce(stack.broker.url, "models", [(str(event.version).encode(), codec.dumps(event.model_dump(mode="json")))])


async def _events(stack: Stack, until: Any, timeout: float) -> list[ModelEvent]:
    def parse(recs: list[Any]) -> list[ModelEvent]:
        return [ModelEvent.model_validate(codec.loads(r.value)) for r in recs]
    return parse(await consume_all(stack.broker.url, "models", until=lambda rs: until(parse(rs)), timeout=timeout))


def _by_rollout(events: list[ModelEvent]) -> list[tuple[str, str | None, int]]:
    return [(e.event, e.strategy, e.version) for e in events if e.who == "rollout"]


class Traffic:
    """Requests to serving for fresh entities (amount > 500 is fraud), each answer labeled
    at once on ``labels.valid`` (what ingestion would produce)."""

    def __init__(self, stack: Stack, base_url: str) -> None:
        self.stack, self.base_url = stack, base_url
        self.answers: list[dict[str, Any]] = []
        self.rng = random.Random(7)
        self.stop = asyncio.Event()

    async def burst(self, client: httpx.AsyncClient, producer: AIOKafkaProducer, n: int) -> None:
        amounts = [round(self.rng.uniform(0, 1000), 2) for _ in range(n)]
        bodies = [{"entity_id": f"card-{len(self.answers) + i}",
                   "features": {"amount": a, "merchant_category": "grocery", "country": "US", "channel": "online"}}
                  for i, a in enumerate(amounts)]
        resps = await asyncio.gather(*(client.post("/predict", json=b) for b in bodies))
        futures = []
        for resp, amount in zip(resps, amounts, strict=True):
            assert resp.status_code == 200, resp.text
            answer = resp.json()
            self.answers.append(answer)
            label = {"prediction_id": answer["prediction_id"], "label": amount > 500, "event_time": time.time()}
            futures.append(await producer.send("labels.valid", codec.dumps(label), key=answer["prediction_id"].encode()))
        await asyncio.gather(*futures)

    async def run(self, requests: int | None = None) -> None:
        """Bursts until ``stop`` (or until ``requests`` more were answered)."""
        goal = None if requests is None else len(self.answers) + requests
        producer = AIOKafkaProducer(bootstrap_servers=self.stack.broker.url, acks="all")
        await producer.start()
        try:
            async with httpx.AsyncClient(base_url=self.base_url, timeout=10) as client:
                while not self.stop.is_set() and (goal is None or len(self.answers) < goal):
                    await self.burst(client, producer, 10)
                    await asyncio.sleep(0.05)
        finally:
            await producer.stop()


async def _start(stack: Stack, spec: Path, rollout: bool = True) -> str:
    port = free_port()
    env = {"RIVULET_SPEC": spec, "RIVULET_MODEL_SECRET": SECRET}
    stack.spawn("services.serving", RIVULET_SERVING_PORT=port, **env)
    stack.spawn("services.label_join", **env)
    if rollout:
        stack.spawn("services.rollout", **env)
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base, timeout=5) as client:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if (await client.get("/ready")).status_code == 200:
                    return base
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError("serving not ready:\n" + stack.logs())


async def _models(base: str, check: Any) -> dict[str, Any]:
    """Serving's GET /models once ``check`` holds (serving applies ``models`` events in < 1 s)."""
    async with httpx.AsyncClient(base_url=base, timeout=5) as client:
        deadline = time.monotonic() + 10
        while True:
            body = (await client.get("/models")).json()
            if check(body) or time.monotonic() > deadline:
                return body
            await asyncio.sleep(0.1)


async def test_good_candidate_goes_shadow_canary_full(stack: Stack) -> None:
    base = await _start(stack, _spec(stack.tmp))
    shadow = _announce(1, _good(), "shadow")
    await _publish(stack, shadow)
    traffic = Traffic(stack, base)
    task = asyncio.create_task(traffic.run())
    try:
        events = await _events(stack, lambda es: len(_by_rollout(es)) >= 2, timeout=45)
    finally:
        traffic.stop.set()
        await task
    assert _by_rollout(events) == [("promoted", "canary", 1), ("promoted", "full", 1)], stack.logs()
    canary, full = [e for e in events if e.who == "rollout"]
    assert canary.share == 0.5 and canary.reason.startswith("v1 shadow not worse than champion v0")
    for key in ("artifact_b64", "artifact_sha256", "signature", "threshold", "metrics", "reference_profile", "trigger"):
        assert getattr(canary, key) == getattr(shadow, key) == getattr(full, key), key
    ch, cp = canary.evidence["challenger"], canary.evidence["champion"]
    assert ch["count"] == cp["count"] >= 20 and ch["log_loss"] < cp["log_loss"]  # paired shadow evidence
    assert "canary better than champion v0" in full.reason and "log_loss challenger=" in full.reason
    assert min(full.evidence["challenger"]["count"], full.evidence["champion"]["count"]) >= 25
    assert full.evidence["challenger"]["log_loss"] < full.evidence["champion"]["log_loss"]
    served = {(a["model_version"], a["role"]) for a in traffic.answers}
    assert {(0, "champion"), (1, "challenger")} <= served  # the canary really answered
    body = await _models(base, lambda b: b["champion"]["version"] == 1)
    assert body["champion"]["version"] == 1 and body["challenger"] is None, body


async def test_bad_candidates_are_rolled_back_in_shadow_and_in_canary(stack: Stack) -> None:
    base = await _start(stack, _spec(stack.tmp))
    await _publish(stack, _announce(1, _bad(), "shadow"))
    traffic = Traffic(stack, base)
    task = asyncio.create_task(traffic.run())
    try:
        events = await _events(stack, lambda es: len(_by_rollout(es)) >= 1, timeout=30)
        assert _by_rollout(events) == [("rolled_back", None, 0)], stack.logs()
        await _publish(stack, _announce(2, _bad(), "canary", share=0.5))  # a canary started by hand
        events = await _events(stack, lambda es: len(_by_rollout(es)) >= 2, timeout=30)
    finally:
        traffic.stop.set()
        await task
    assert _by_rollout(events) == [("rolled_back", None, 0), ("rolled_back", None, 0)], stack.logs()
    shadow_back, canary_back = [e for e in events if e.who == "rollout"]
    assert shadow_back.withdrawn == 1 and "v1 shadow worse than champion v0 beyond tolerance" in shadow_back.reason
    assert canary_back.withdrawn == 2 and "v2 canary worse than champion v0 beyond tolerance" in canary_back.reason
    assert canary_back.evidence["challenger"]["log_loss"] > canary_back.evidence["champion"]["log_loss"] + 0.02
    body = await _models(base, lambda b: b["challenger"] is None)
    assert body["champion"]["version"] == 0 and body["challenger"] is None, body
    traffic.stop.clear()
    await traffic.run(requests=10)
    assert {(a["model_version"], a["role"]) for a in traffic.answers[-10:]} == {(0, "champion")}


async def test_restarts_neither_repeat_nor_lose_a_step(stack: Stack) -> None:
    spec = _spec(stack.tmp)
    base = await _start(stack, spec, rollout=False)
    await _publish(stack, _announce(1, _good(), "shadow"))
    traffic = Traffic(stack, base)
    await traffic.run(requests=60)  # the whole shadow stage happens while no controller runs
    first = stack.spawn("services.rollout", RIVULET_SPEC=spec, RIVULET_MODEL_SECRET=SECRET)
    events = await _events(stack, lambda es: len(_by_rollout(es)) >= 1, timeout=30)
    assert _by_rollout(events) == [("promoted", "canary", 1)], stack.logs()
    assert events[-1].evidence["challenger"]["count"] >= 20  # rebuilt from the topics
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    await traffic.run(requests=80)  # canary labels arrive while the controller is down
    await asyncio.sleep(1.0)
    stack.spawn("services.rollout", RIVULET_SPEC=spec, RIVULET_MODEL_SECRET=SECRET)
    events = await _events(stack, lambda es: len(_by_rollout(es)) >= 2, timeout=30)
    await asyncio.sleep(2.0)  # time enough for a wrongly repeated step to show up
    events = await _events(stack, lambda es: False, timeout=2)
    assert _by_rollout(events) == [("promoted", "canary", 1), ("promoted", "full", 1)], stack.logs()
    full = events[-1]
    assert full.evidence["challenger"]["count"] >= 25 and full.evidence["champion"]["count"] >= 25
    assert (await _models(base, lambda b: b["champion"]["version"] == 1))["champion"]["version"] == 1
