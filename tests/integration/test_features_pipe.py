"""ScriptPipe against a real Redis: queued calls run in the order sent and their replies come
back in that order; an error reply fails its own call only; a lost connection or a cancelled
read closes the connection, and the next call works on a new one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError, NoScriptError, ResponseError

from services.features.pipe import ScriptPipe
from shared.embedded import ServerProcess

# Appends ARGV[1] to the list KEYS[1] and returns the list's length (the order of execution);
# ARGV[1] == "boom" is an error reply, "slow" spins 300 ms first.
APPEND = """
if ARGV[1] == 'boom' then return redis.error_reply('boom') end
if ARGV[1] == 'slow' then
  local t = redis.call('TIME')
  repeat local n = redis.call('TIME') until (n[1] - t[1]) * 1e6 + n[2] - t[2] > 300000
end
return redis.call('RPUSH', KEYS[1], ARGV[1])
"""


@pytest.fixture
async def redis(redis_server: ServerProcess) -> AsyncIterator[Redis]:
    r = Redis.from_url(redis_server.url)
    yield r
    await r.aclose()


async def test_calls_run_in_the_order_sent_and_replies_come_back_in_order(redis: Redis) -> None:
    pipe = ScriptPipe(redis, redis.register_script(APPEND))
    for i in range(20):
        await pipe.send(["log"], [f"call-{i}"])
    assert pipe.unread == 20
    assert [await pipe.receive() for _ in range(20)] == list(range(1, 21))
    assert await redis.lrange("log", 0, -1) == [f"call-{i}".encode() for i in range(20)]
    await pipe.close()


async def test_an_error_reply_fails_its_call_only(redis: Redis) -> None:
    pipe = ScriptPipe(redis, redis.register_script(APPEND))
    for value in ("a", "boom", "b"):
        await pipe.send(["log"], [value])
    assert await pipe.receive() == 1
    with pytest.raises(ResponseError, match="boom"):
        await pipe.receive()
    assert await pipe.receive() == 2  # the connection kept going
    assert await redis.lrange("log", 0, -1) == [b"a", b"b"]
    await pipe.close()


async def test_a_flushed_script_fails_then_is_loaded_again(redis: Redis) -> None:
    pipe = ScriptPipe(redis, redis.register_script(APPEND))
    await pipe.send(["log"], ["a"])
    assert await pipe.receive() == 1
    await redis.script_flush()  # e.g. Redis restarted
    await pipe.send(["log"], ["lost"])
    with pytest.raises(NoScriptError):
        await pipe.receive()
    await pipe.send(["log"], ["b"])
    assert await pipe.receive() == 2
    await pipe.close()


async def test_a_killed_connection_fails_the_call_and_the_next_one_reconnects(redis: Redis) -> None:
    pipe = ScriptPipe(redis, redis.register_script(APPEND))
    await pipe.send(["log"], ["a"])
    assert await pipe.receive() == 1
    await redis.client_kill_filter(_type="normal", skipme=True)  # the pipe's connection
    with pytest.raises(ConnectionError):  # at the send or at the read of its reply
        await pipe.send(["log"], ["b"])
        await pipe.receive()
    assert pipe.unread == 0
    await pipe.send(["log"], ["c"])
    assert await pipe.receive() == 2
    assert await redis.lrange("log", 0, -1) == [b"a", b"c"]
    await pipe.close()


async def test_a_cancelled_read_closes_the_connection(redis: Redis) -> None:
    pipe = ScriptPipe(redis, redis.register_script(APPEND))
    await pipe.send(["log"], ["slow"])
    read = asyncio.ensure_future(pipe.receive())
    await asyncio.sleep(0.05)
    read.cancel()
    with pytest.raises(asyncio.CancelledError):
        await read
    assert pipe.unread == 0 and pipe.conn is not None and not pipe.conn.is_connected
    await asyncio.sleep(0.4)  # the slow call ran whole in Redis; its reply went with the connection
    await pipe.send(["log"], ["after"])
    assert await pipe.receive() == 2
    assert await redis.lrange("log", 0, -1) == [b"slow", b"after"]
    await pipe.close()


async def test_drain_reads_every_reply_and_close_releases_the_connection(redis: Redis) -> None:
    pipe = ScriptPipe(redis, redis.register_script(APPEND))
    for value in ("a", "boom", "b"):
        await pipe.send(["log"], [value])
    await pipe.drain()
    assert pipe.unread == 0
    assert await redis.lrange("log", 0, -1) == [b"a", b"b"]
    await pipe.close()
    assert pipe.conn is None
