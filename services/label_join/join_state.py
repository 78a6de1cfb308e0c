"""Join state in Redis (keys from ``shared.redis_keys``), bounded by a TTL.

Storing one side and reading the other happens in ONE Lua script, so when a prediction
and its label arrive at the same moment (even at two instances), exactly one of the two
scripts sees the other side: the pair is found once, never zero or two times.
The three keys of one prediction id are used together (not Redis Cluster safe; Rivulet
runs a single Redis).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from redis.asyncio import Redis

from services.label_join.handlers import Done, Step
from shared import redis_keys

# KEYS: own side, other side, done marker. ARGV: own JSON, ttl ms, "nx" to keep the first.
STORE_AND_FETCH = """
if ARGV[3] == 'nx' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX')
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return {redis.call('GET', KEYS[2]), redis.call('GET', KEYS[3])}
"""


def _keys(step: Step) -> list[str]:
    pid = step.prediction_id
    own, other = redis_keys.join_prediction(pid), redis_keys.join_label(pid)
    if step.kind == "label":
        own, other = other, own
    return [own, other, redis_keys.join_done(pid)]


class JoinState:
    def __init__(self, redis: Redis, ttl_s: float) -> None:
        self.redis = redis
        self.ttl_ms = int(ttl_s * 1000)
        self.script = redis.register_script(STORE_AND_FETCH)

    async def store_and_fetch(self, steps: Sequence[Step]) -> list[tuple[bytes | None, bytes | None]]:
        """Store each step's side and fetch (other side, done marker), in order, one round trip.

        A prediction is stored with NX (a republished prediction keeps the first copy); a
        label overwrites (the latest label is the one a late prediction joins with).
        """
        if not steps:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for step in steps:
            nx = "nx" if step.kind == "prediction" else ""
            await self.script(keys=_keys(step), args=[step.stored, self.ttl_ms, nx], client=pipe)
        return [(other, done) for other, done in await pipe.execute()]

    async def mark_done(self, done: Mapping[str, Done]) -> None:
        """Record what was emitted (call only after the broker acked it)."""
        if not done:
            return
        pipe = self.redis.pipeline(transaction=False)
        for pid, marker in done.items():
            pipe.set(redis_keys.join_done(pid), marker.encode(), px=self.ttl_ms)
        await pipe.execute()
