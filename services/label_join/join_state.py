"""Join state in Redis (keys from ``shared.redis_keys``), bounded by TTLs and deadlines.

Storing one side and reading the other happens in ONE Lua script, so when a prediction
and its label arrive at the same moment (even at two instances), exactly one of the two
scripts sees the other side: the pair is found once, never zero or two times. The same
script registers the waiting side's deadline (``rv:join:deadlines``) or, when the pair is
found, removes the other side's deadline: from then on the expiry scan cannot claim it.
Claiming an expired deadline is atomic too (:data:`CLAIM`), so a late label and the
expiry of its prediction can never both win.
The keys of one prediction id are used together (not Redis Cluster safe; Rivulet runs a
single Redis).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from redis.asyncio import Redis

from services.label_join.handlers import MISSING, Done, Step
from shared import redis_keys

# KEYS: own side, other side, done marker, deadlines.
# ARGV: own JSON, ttl ms, "nx" to keep the first, own member, other member, own deadline.
STORE_AND_FETCH = """
if ARGV[3] == 'nx' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX')
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
local other = redis.call('GET', KEYS[2])
local done = redis.call('GET', KEYS[3])
if not other then
  if not done then redis.call('ZADD', KEYS[4], 'NX', ARGV[6], ARGV[4]) end
elseif not done then
  redis.call('ZREM', KEYS[4], ARGV[5])
end
return {other, done}
"""

# KEYS: deadlines, claims, waiting side, done marker.
# ARGV: member, now, lease-until, kind ("p"|"l"), missing marker, ttl ms.
# Returns the payload to publish, or false (not due, joined meanwhile, or gone).
CLAIM = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if (not score) or tonumber(score) > tonumber(ARGV[2]) then return false end
local payload = redis.call('HGET', KEYS[2], ARGV[1])
if not payload then
  payload = redis.call('GET', KEYS[3])
  if redis.call('EXISTS', KEYS[4]) == 1 or not payload then
    redis.call('ZREM', KEYS[1], ARGV[1])
    return false
  end
  redis.call('HSET', KEYS[2], ARGV[1], payload)
  if ARGV[4] == 'p' then
    redis.call('SET', KEYS[4], ARGV[5], 'PX', ARGV[6])
  else
    redis.call('DEL', KEYS[3])
  end
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return payload
"""


def member(kind: str, prediction_id: str) -> str:
    return f"{'p' if kind == 'prediction' else 'l'}:{prediction_id}"


def _keys(step: Step) -> list[str]:
    pid = step.prediction_id
    own, other = redis_keys.join_prediction(pid), redis_keys.join_label(pid)
    if step.kind == "label":
        own, other = other, own
    return [own, other, redis_keys.join_done(pid), redis_keys.join_deadlines()]


class JoinState:
    def __init__(self, redis: Redis, ttl_s: float, maturity_s: float, grace_s: float) -> None:
        self.redis = redis
        self.ttl_ms = int(ttl_s * 1000)
        self.maturity_s, self.grace_s = maturity_s, grace_s
        self.script = redis.register_script(STORE_AND_FETCH)
        self.claim_script = redis.register_script(CLAIM)

    async def store_and_fetch(self, steps: Sequence[Step], now: float) -> list[tuple[bytes | None, bytes | None]]:
        """Store each step's side and fetch (other side, done marker), in order, one round trip.

        A prediction is stored with NX (a republished prediction keeps the first copy); a
        label overwrites (the latest label is the one a late prediction joins with).
        """
        if not steps:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for step in steps:
            nx = "nx" if step.kind == "prediction" else ""
            own = member(step.kind, step.prediction_id)
            other = member("label" if step.kind == "prediction" else "prediction", step.prediction_id)
            deadline = now + (self.maturity_s if step.kind == "prediction" else self.grace_s)
            args = [step.stored, self.ttl_ms, nx, own, other, deadline]
            await self.script(keys=_keys(step), args=args, client=pipe)
        return [(other, done) for other, done in await pipe.execute()]

    async def write_pending(self, done: Mapping[str, Done], pending: Mapping[str, Mapping[str, bytes]]) -> None:
        """Done markers + the planned outputs, in one MULTI, BEFORE publishing: a crash
        after this point is repaired by :meth:`read_pending` + reconciliation."""
        pipe = self.redis.pipeline(transaction=True)
        for pid, marker in done.items():
            pipe.set(redis_keys.join_done(pid), marker.encode(), px=self.ttl_ms)
        for key, entries in pending.items():
            pipe.hset(key, mapping=dict(entries))
        await pipe.execute()

    async def clear_pending(self, pending: Mapping[str, Mapping[str, bytes]]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for key, entries in pending.items():
            pipe.hdel(key, *entries)
        await pipe.execute()

    async def read_pending(self, key: str) -> dict[str, bytes]:
        return {k.decode(): v for k, v in (await self.redis.hgetall(key)).items()}

    async def claim_expired(self, now: float, lease_s: float, limit: int) -> tuple[int, list[tuple[str, bytes]]]:
        """Look at up to ``limit`` due deadlines; returns how many were due and the claimed
        (member, payload) pairs to publish, then :meth:`confirm`."""
        due = await self.redis.zrangebyscore(redis_keys.join_deadlines(), "-inf", now, start=0, num=limit)
        if not due:
            return 0, []
        members = [m.decode() for m in due]
        pipe = self.redis.pipeline(transaction=False)
        for m in members:
            kind, pid = m.split(":", 1)
            side = redis_keys.join_prediction(pid) if kind == "p" else redis_keys.join_label(pid)
            keys = [redis_keys.join_deadlines(), redis_keys.join_claims(), side, redis_keys.join_done(pid)]
            await self.claim_script(keys=keys, args=[m, now, now + lease_s, kind, MISSING.encode(), self.ttl_ms],
                                    client=pipe)
        return len(members), [(m, p) for m, p in zip(members, await pipe.execute()) if p]

    async def confirm(self, members: Sequence[str]) -> None:
        """The claimed outputs were acked: forget the deadlines and the claim payloads."""
        if members:
            pipe = self.redis.pipeline(transaction=True)
            pipe.zrem(redis_keys.join_deadlines(), *members)
            pipe.hdel(redis_keys.join_claims(), *members)
            await pipe.execute()
