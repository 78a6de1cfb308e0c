"""The `rivulet` command as a user runs it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from shared.cli import app
from shared.embedded import free_port
from shared.errors import Reason, RejectedRecord
from shared.kafka import dead_letter, make_producer, publish
from shared.supervisor import SERVICES
from tests.helpers import ROOT, Stack


def _children(pid: int) -> set[int]:
    """All descendants of pid (by /proc parent links)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def test_dlq_groups_recent_dead_letters_by_reason(stack: Stack) -> None:
    from aiokafka.structs import ConsumerRecord

    async def fill() -> None:
        producer = make_producer(stack.settings())
        await producer.start()
        outs = []
        for i, (reason, field) in enumerate([(Reason.WRONG_TYPE, "amount")] * 3 + [(Reason.INVALID_JSON, None)]):
            record = ConsumerRecord("events.raw", 0, i, 0, 0, b"k", b"bad-%d" % i, None, 1, 5, [])
            outs.append(dead_letter(record, "events.dlq", RejectedRecord(reason, f"{field}: nope", field)))
        await publish(producer, outs)
        await producer.stop()

    asyncio.run(fill())
    result = CliRunner().invoke(app, ["dlq", "--bootstrap-servers", stack.broker.url], terminal_width=200)
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") >= 4}
    assert "wrong_type" in rows and "invalid_json" in rows
    assert re.search(r"│\s*amount\s*│\s*3\s*│", rows["wrong_type"])
    assert re.search(r"│\s*-\s*│\s*1\s*│", rows["invalid_json"])


def test_up_starts_everything_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIVULET_")}
    env["RIVULET_SERVING_PORT"] = str(free_port())
    env["RIVULET_PERFORMANCE_PORT"] = str(free_port())
    log = tmp_path / "up.log"
    proc = subprocess.Popen([sys.executable, "-m", "shared.cli", "up", "--data-dir", str(tmp_path)],
                            cwd=ROOT, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "Rivulet is up" not in log.read_text(errors="replace"):
            time.sleep(0.2)
        assert "Rivulet is up" in log.read_text(errors="replace")
        time.sleep(3)
        started = _children(proc.pid)
        names = {Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                 for p in started if Path(f"/proc/{p}").exists()}
        for service in SERVICES:
            assert any(f"services.{service}" in n for n in names), (service, names)
        assert any("tansu" in n for n in names) and any("redis-server" in n for n in names)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
        time.sleep(0.5)
        alive = [p for p in started if Path(f"/proc/{p}").exists()
                 and Path(f"/proc/{p}/stat").read_text().split(") ")[1][0] != "Z"]
        assert alive == [], log.read_text(errors="replace")[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
