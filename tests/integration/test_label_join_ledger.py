"""The label ledger as a real process on a real broker and Redis: the maturity window
(label_missing), unmatched labels (unknown / expired), bounded state, and exactly-once
pairs across SIGKILLs at random moments and across a crash right after the pending MULTI."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from pathlib import Path

import redis
from redis.asyncio import Redis as AsyncRedis

from services.label_join import pending as pend
from services.label_join.handlers import Done, labeled
from services.label_join.join_state import JoinState
from shared import codec, redis_keys
from shared.contracts import (
    Label,
    LabeledPrediction,
    LabelMissing,
    PredictionRecord,
    UnmatchedLabel,
)
from shared.spec import default_spec_path
from shared.topics import (
    LABELS_MISSING,
    LABELS_UNMATCHED,
    LABELS_VALID,
    PREDICTIONS,
    PREDICTIONS_LABELED,
)
from tests.helpers import Stack, produce, produce_json, read_topic, wait_for

FAST = {"RIVULET_SESSION_TIMEOUT_MS": 3000, "RIVULET_EXPIRY_INTERVAL_S": 0.2}


def short_spec(tmp: Path, maturity: str = "2s", grace: str = "2s") -> str:
    text = default_spec_path().read_text().replace(
        'maturity = "1h"', f'maturity = "{maturity}"\nunmatched_grace = "{grace}"')
    path = tmp / "spec_short.toml"
    path.write_text(text)
    return str(path)


def pred(pid: str, i: int = 0) -> PredictionRecord:
    return PredictionRecord(prediction_id=pid, entity_id=f"card-{i % 7}", model_version=i % 2,
                            features={"amount": float(i), "channel": "pos"}, score=(i % 10) / 10,
                            label=i % 10 >= 5, threshold=0.5, served_at=time.time(), latency_ms=1.0)


def lab(pid: str, value: bool = True) -> Label:
    return Label(prediction_id=pid, label=value, event_time=time.time())


def send(stack: Stack, recs: list[PredictionRecord] | list[Label]) -> None:
    topic = PREDICTIONS.name if recs and isinstance(recs[0], PredictionRecord) else LABELS_VALID.name
    produce_json(stack.broker.url, topic, [(r.prediction_id, r.model_dump(mode="json")) for r in recs])


def read(stack: Stack, topic: str, model: type, count: int = 100_000, timeout: float = 2.0) -> list:
    return [model.model_validate(codec.loads(r.value)) for r in
            read_topic(stack.broker.url, topic, count=count, timeout=timeout)]


def test_maturity_window_missing_and_unmatched_labels(stack: Stack) -> None:
    stack.spawn("services.label_join", RIVULET_SPEC=short_spec(stack.tmp), **FAST)
    joined = [pred(f"a{i}", i) for i in range(10)]
    never = [pred(f"m{i}", i) for i in range(5)]
    late = [pred(f"x{i}", i) for i in range(3)]
    send(stack, joined + never + late)
    send(stack, [lab(p.prediction_id) for p in joined] + [lab(f"u{i}") for i in range(3)])
    missing = read(stack, LABELS_MISSING.name, LabelMissing, count=8, timeout=20)
    assert sorted(m.prediction_id for m in missing) == sorted(p.prediction_id for p in never + late)
    assert all(m.maturity_s == 2.0 and m.expired_at >= m.served_at + 2.0 for m in missing)

    send(stack, [lab(p.prediction_id, False) for p in late])          # after their window closed
    unmatched = read(stack, LABELS_UNMATCHED.name, UnmatchedLabel, count=6, timeout=20)
    reasons = {u.prediction_id: u.reason for u in unmatched}
    assert reasons == {"x0": "expired", "x1": "expired", "x2": "expired",
                       "u0": "unknown_prediction", "u1": "unknown_prediction", "u2": "unknown_prediction"}
    send(stack, [pred("u0", 1)])                   # its label was already declared unmatched: no pair
    wait_for(lambda: len(read(stack, LABELS_MISSING.name, LabelMissing, count=9, timeout=1)) == 9,
             timeout=20, what="u0 missing")
    out = read(stack, PREDICTIONS_LABELED.name, LabeledPrediction)
    assert Counter(o.prediction_id for o in out) == Counter({p.prediction_id: 1 for p in joined})

    r = redis.Redis.from_url(stack.redis.url)      # state is bounded: nothing left waiting
    wait_for(lambda: r.zcard(redis_keys.join_deadlines()) == 0, timeout=10, what="deadlines drained")
    assert r.hlen(redis_keys.join_claims()) == 0
    assert not list(r.scan_iter("rv:join:pending:*"))  # an emptied hash is deleted by Redis
    assert len(read(stack, LABELS_UNMATCHED.name, UnmatchedLabel)) == 6   # at-least-once, but no repeats here


def test_sigkill_at_random_moments_loses_and_repeats_no_pair(stack: Stack) -> None:
    rng = random.Random(5)
    preds = [pred(f"k{i}", i) for i in range(3000)]
    labels = {p.prediction_id: lab(p.prediction_id, i % 3 == 0) for i, p in enumerate(preds)}
    fixes = [lab(f"k{i}", i % 3 != 0) for i in range(0, 3000, 50)]      # 60 corrections
    chunks: list[list[PredictionRecord] | list[Label]] = []
    for i in range(0, 3000, 150):
        part = preds[i:i + 150]
        first, second = (part, [labels[p.prediction_id] for p in part])
        chunks += [second, first] if rng.random() < 0.5 else [first, second]
    chunks.append(fixes)

    def producer() -> None:
        for chunk in chunks:
            send(stack, chunk)
            time.sleep(0.15)

    def emitted() -> int:
        return len(read_topic(stack.broker.url, PREDICTIONS_LABELED.name, count=100_000, timeout=0.5))

    proc = stack.spawn("services.label_join", **FAST)
    thread = threading.Thread(target=producer)
    thread.start()
    seen = 0
    for _ in range(3):  # kill mid-stream: once the new process is emitting, at a random moment
        seen = wait_for(lambda prev=seen: (n := emitted()) > prev and n, timeout=30, what="progress")
        time.sleep(rng.uniform(0.0, 0.5))
        proc.kill()
        proc.wait()
        proc = stack.spawn("services.label_join", **FAST)
    thread.join()
    final = {f.prediction_id: f.label for f in fixes}
    final.update({pid: lb.label for pid, lb in labels.items() if pid not in final})

    def latest() -> dict[str, tuple[int, bool | float]]:
        best: dict[str, tuple[int, bool | float]] = {}
        for o in read(stack, PREDICTIONS_LABELED.name, LabeledPrediction, timeout=1):
            best[o.prediction_id] = max(best.get(o.prediction_id, (0, False)), (o.revision, o.actual))
        return best

    wait_for(lambda: {pid: v for pid, (_, v) in latest().items()} == final, timeout=45,
             what="every pair, with its latest label")
    time.sleep(1.5)
    out = read(stack, PREDICTIONS_LABELED.name, LabeledPrediction)
    pairs = Counter((o.prediction_id, o.revision) for o in out)
    assert max(pairs.values()) == 1, [k for k, n in pairs.items() if n > 1][:5]
    assert {pid for pid, rev in pairs if rev == 1} == set(labels)
    assert {pid for pid, rev in pairs if rev == 2} <= set(final) and max(rev for _, rev in pairs) <= 2
    assert proc.poll() is None


def test_restart_after_a_crash_between_pending_and_publish(stack: Stack) -> None:
    """The exact state a SIGKILL right after the pending MULTI leaves: done markers and
    pending outputs in Redis, one output reached the topic, one did not, input offsets
    not committed. The restarted ledger publishes the missing one, and nothing twice."""
    a, b = pred("pa", 1), pred("pb", 2)
    la, lb = lab("pa"), lab("pb", False)
    send(stack, [a, b])
    send(stack, [la, lb])
    out_a, out_b = labeled(a, la, 1, time.time()), labeled(b, lb, 1, time.time())
    src = {rec.key: rec.partition for rec in read_topic(stack.broker.url, LABELS_VALID.name, count=2)}

    async def crash_state() -> None:
        r = AsyncRedis.from_url(stack.redis.url)
        state = JoinState(r, 3600, 3600, 3600)
        entries: dict[str, dict[str, bytes]] = {}
        for out in (out_a, out_b):
            key = redis_keys.join_pending(LABELS_VALID.name, src[out.prediction_id.encode()])
            entries.setdefault(key, {})[pend.entry_field(out)] = pend.encode_entry(
                out, pend.output_partition(out.prediction_id.encode()), 0)
        await state.write_pending({"pa": Done(1, True), "pb": Done(1, False)}, entries)
        await r.aclose()
        await produce(stack.broker.url, PREDICTIONS_LABELED.name,          # only pa reached the topic
                      [(b"pa", codec.dumps(out_a.model_dump(mode="json")))])

    asyncio.run(crash_state())
    stack.spawn("services.label_join", **FAST)
    wait_for(lambda: len(read(stack, PREDICTIONS_LABELED.name, LabeledPrediction, timeout=1)) >= 2,
             timeout=20, what="pb republished")
    time.sleep(1.5)
    out = read(stack, PREDICTIONS_LABELED.name, LabeledPrediction)
    assert sorted((o.prediction_id, o.revision, o.actual) for o in out) == [("pa", 1, True), ("pb", 1, False)]
    assert next(o for o in out if o.prediction_id == "pb").labeled_at == out_b.labeled_at  # the planned record
    r = redis.Redis.from_url(stack.redis.url)
    assert not list(r.scan_iter("rv:join:pending:*"))
