"""Script calls queued on one Redis connection: each sent as soon as it is ready, replies read
in order, later.

Why: the applier's planner (Python, one thread) and Redis (another process) each take ~10 ms
per chunk. Sent only once the previous script had replied, a script waited for the planner
to yield, and the planner plans a chunk without yielding: Redis sat idle while the planner
ran, the planner while Redis ran the script (measured: the planner waited for writes half
its time). Redis runs one connection's commands in the order they were sent, so scripts can
be queued there and run back to back; the compare-and-set in each keeps a failed one from
taking a later one with it into a wrong state (see :mod:`services.features.store`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError, ResponseError


class ScriptPipe:
    """``send`` a script call now, ``receive`` its reply later (oldest first)."""

    def __init__(self, redis: Redis, script: AsyncScript) -> None:
        self.redis, self.script = redis, script
        self.conn: AbstractConnection | None = None
        self.unread = 0  # sent calls whose reply was not read yet
        self.loaded = False  # the script is known to be in Redis' script cache

    async def send(self, keys: Sequence[Any], args: Sequence[Any]) -> None:
        """Queue one call of the script (not waiting for any reply)."""
        if self.conn is None:
            self.conn = await self.redis.connection_pool.get_connection()
        if not self.loaded:  # e.g. a new or restarted Redis: EVALSHA would fail
            await self.redis.script_load(self.script.script)
            self.loaded = True
        command = self.conn.pack_command("EVALSHA", self.script.sha, len(keys), *keys, *args)
        try:
            await self.conn.send_packed_command(command, check_health=False)
        except BaseException:
            await self.reset()  # part of the command may have been written
            raise
        self.unread += 1

    async def receive(self) -> Any:
        """The oldest unread reply; an error reply is raised."""
        if not self.unread or self.conn is None:
            raise RuntimeError("no script call awaits a reply")
        try:
            reply = await self.conn.read_response()
        except ResponseError as exc:  # an error reply: the connection is fine
            self.unread -= 1
            if isinstance(exc, NoScriptError):
                self.loaded = False
            raise
        except BaseException:  # connection lost, timeout, or cancelled mid-read: out of step
            await self.reset()
            raise
        self.unread -= 1
        return reply

    async def drain(self) -> None:
        """Read and drop every unread reply: after it, no call of this pipe is in flight
        (or the connection was closed)."""
        while self.unread:
            try:
                await self.receive()
            except (RedisError, OSError):
                pass

    async def reset(self) -> None:
        """Close the connection (calls already sent may still run in Redis)."""
        self.unread, self.loaded = 0, False
        if self.conn is not None:
            await self.conn.disconnect(nowait=True)

    async def close(self) -> None:
        await self.drain()
        if self.conn is not None:
            conn, self.conn = self.conn, None
            await self.redis.connection_pool.release(conn)
