"""Runs the whole loop on one machine: embedded servers (unless configured), topics, and
every service as its own supervised process with prefixed logs.

A crashed service is restarted with back-off; Ctrl-C (or SIGTERM) stops the services
first, then the servers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from shared.embedded import ServerProcess, free_port, start_broker, start_redis
from shared.kafka import ensure_topics

log = logging.getLogger("rivulet")

SERVICES: tuple[str, ...] = (
    "ingestion", "features", "serving", "prediction_log", "label_join", "performance", "drift", "retrain",
    "rollout",
)
COLOURS = ("cyan", "green", "magenta", "yellow", "blue", "red", "white", "bright_cyan")


@dataclass
class Environment:
    """Where the loop's servers are: started here (embedded) or given by the user."""

    kafka_bootstrap: str
    redis_url: str
    data_dir: Path
    serving_port: int
    servers: list[ServerProcess] = field(default_factory=list)

    def env(self, spec: Path | None) -> dict[str, str]:
        env = {
            **os.environ,
            "RIVULET_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "RIVULET_REDIS_URL": self.redis_url,
            "RIVULET_DATA_DIR": str(self.data_dir),
            "RIVULET_SERVING_PORT": str(self.serving_port),
            "RIVULET_PERFORMANCE_PORT": os.environ.get("RIVULET_PERFORMANCE_PORT") or str(_port_or_free(9464)),
            "PYTHONUNBUFFERED": "1",
        }
        if spec:
            env["RIVULET_SPEC"] = str(Path(spec).resolve())
        return env

    @property
    def serving_url(self) -> str:
        return f"http://127.0.0.1:{self.serving_port}"

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()


def prepare_environment(base_dir: Path, serving_port: int | None = None) -> Environment:
    """Use RIVULET_KAFKA_BOOTSTRAP / RIVULET_REDIS_URL when set; otherwise start Tansu and
    Redis from the wheels. Embedded runs get a fresh data dir (the broker is in memory, so
    an old offline store would not match its offsets)."""
    kafka = os.environ.get("RIVULET_KAFKA_BOOTSTRAP")
    redis = os.environ.get("RIVULET_REDIS_URL")
    port = serving_port or int(os.environ.get("RIVULET_SERVING_PORT") or _port_or_free(8000))
    servers: list[ServerProcess] = []
    data_dir = Path(os.environ.get("RIVULET_DATA_DIR") or base_dir)
    if not kafka or not redis:
        data_dir = base_dir / "runs" / time.strftime("%Y%m%d-%H%M%S")
        data_dir.mkdir(parents=True, exist_ok=True)
    if not kafka:
        broker = start_broker(log_file=data_dir / "tansu.log")
        servers.append(broker)
        kafka = broker.url
        log.info("started embedded Tansu broker on %s", kafka)
    if not redis:
        server = start_redis(workdir=data_dir)
        servers.append(server)
        redis = server.url
        log.info("started embedded Redis on %s", redis)
    return Environment(kafka, redis, data_dir, port, servers)


def _port_or_free(port: int) -> int:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return port
        except OSError:
            return free_port()


@dataclass
class Supervised:
    name: str
    colour: str
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0


class Supervisor:
    """Starts each service as ``python -m services.<name>`` and keeps it running."""

    def __init__(self, env: dict[str, str], services: tuple[str, ...] = SERVICES,
                 echo: TextIO | None = sys.stdout, log_dir: Path | None = None,
                 quiet: bool = False) -> None:
        self.env = env
        self.children = [Supervised(n, COLOURS[i % len(COLOURS)]) for i, n in enumerate(services)]
        self.echo = echo
        self.log_dir = log_dir
        self.quiet = quiet
        self.stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for child in self.children:
            self._tasks.append(asyncio.create_task(self._keep_running(child)))

    async def _keep_running(self, child: Supervised) -> None:
        while not self.stopping:
            child.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", f"services.{child.name}", env=self.env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches only us; we stop children in order
            )
            await self._pump(child)
            code = await child.proc.wait()
            if self.stopping:
                return
            child.restarts += 1
            delay = min(30.0, 0.5 * 2 ** min(child.restarts, 6))
            self._print(child, f"exited with code {code}; restarting in {delay:.1f}s", force=True)
            await asyncio.sleep(delay)

    async def _pump(self, child: Supervised) -> None:
        assert child.proc and child.proc.stdout
        sink = open(self.log_dir / f"{child.name}.log", "a") if self.log_dir else None
        try:
            async for raw in child.proc.stdout:
                line = raw.decode(errors="replace").rstrip()
                if sink:
                    sink.write(line + "\n")
                    sink.flush()
                important = " ERROR " in line or " CRITICAL " in line or "Traceback" in line
                self._print(child, line, force=important)
        finally:
            if sink:
                sink.close()

    def _print(self, child: Supervised, line: str, force: bool = False) -> None:
        if self.echo is None or (self.quiet and not force):
            return
        self.echo.write(f"\x1b[1m{child.name:>15}\x1b[0m | {line}\n" if self.echo.isatty()
                        else f"{child.name:>15} | {line}\n")
        self.echo.flush()

    async def stop(self, timeout: float = 15.0) -> None:
        self.stopping = True
        for child in self.children:
            if child.proc and child.proc.returncode is None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in self.children:
            if child.proc and child.proc.returncode is None:
                try:
                    await asyncio.wait_for(child.proc.wait(), max(0.1, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    child.proc.kill()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def bootstrap(env: Environment) -> None:
    """Create the catalog's topics before any service starts."""
    await ensure_topics(env.kafka_bootstrap)
