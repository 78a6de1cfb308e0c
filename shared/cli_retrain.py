"""`rivulet retrain ...`: ask for a retrain, and read why the controller did (or didn't) retrain."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

retrain_app = typer.Typer(help="Ask for a retrain (`rivulet retrain --reason ...`) or read its decisions.",
                          invoke_without_command=True)
console = Console()


def parse_since(value: Optional[str], now: float) -> Optional[float]:
    """Epoch seconds, an RFC 3339 time, or a duration ago ("30m": now - 30 minutes)."""
    if value is None:
        return None
    from shared.contracts import to_epoch
    from shared.spec import parse_duration

    try:
        return now - parse_duration(value) if value[-1:].isalpha() else to_epoch(float(value))
    except ValueError:
        pass
    try:
        return float(to_epoch(value))
    except ValueError as exc:
        raise typer.BadParameter(f"{value!r}: use epoch seconds, an RFC 3339 time or a duration like 30m") from exc


async def _send(bootstrap: str, topic: str, key: bytes, value: bytes) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await (await producer.send(topic, value, key=key))
    finally:
        await producer.stop()


@retrain_app.callback()
def retrain(ctx: typer.Context,
            reason: str = typer.Option("manual", help="why (recorded on the request and the new version)"),
            since: Optional[str] = typer.Option(None, help="train only on rows served from then: epoch, "
                                                "RFC 3339 or a duration ago (30m)"),
            mode: Optional[str] = typer.Option(None, help="stateless | stateful (default: the spec's on_request)"),
            who: str = typer.Option("", help="recorded on the request (default: your user name)"),
            bootstrap_servers: Optional[str] = typer.Option(None, envvar="RIVULET_KAFKA_BOOTSTRAP")) -> None:
    """Publish a RetrainRequest to retrain.requests; the controller answers it once, on
    retrain.decisions and with a model version whose trigger is request:<id>."""
    if ctx.invoked_subcommand is not None:
        return
    from shared import codec
    from shared.cli_models import _bootstrap, _user
    from shared.contracts import RetrainRequest
    from shared.topics import RETRAIN_REQUESTS

    if mode not in (None, "stateless", "stateful"):
        raise typer.BadParameter("--mode must be stateless or stateful")
    bootstrap, now = _bootstrap(bootstrap_servers), time.time()
    req = RetrainRequest(request_id=f"cli-{uuid.uuid4().hex[:12]}", reason=reason, requested_at=now,
                         since=parse_since(since, now), mode=mode, who=who or _user())  # type: ignore[arg-type]
    asyncio.run(_send(bootstrap, RETRAIN_REQUESTS.name, req.request_id.encode(),
                      codec.dumps(req.model_dump(mode="json"))))
    console.print(f"requested retrain request:{req.request_id} (reason {reason!r}, since {req.since}, "
                  f"mode {mode or 'spec default'}); follow it with `rivulet retrain decisions`")


async def read_decisions(bootstrap: str, limit: int, timeout: float = 10.0) -> list[Any]:
    """The last ``limit`` records of retrain.decisions, oldest first."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from shared.contracts import RetrainDecision, parse_record
    from shared.errors import RejectedRecord
    from shared.topics import RETRAIN_DECISIONS

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    out: list[RetrainDecision] = []
    try:
        await consumer.topics()
        tps = [TopicPartition(RETRAIN_DECISIONS.name, p)
               for p in sorted(consumer.partitions_for_topic(RETRAIN_DECISIONS.name) or [])]
        consumer.assign(tps)
        begin, end = await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
        for tp in tps:
            consumer.seek(tp, max(begin[tp], end[tp] - limit))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any([await consumer.position(tp) < end[tp] for tp in tps]):
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    try:
                        out.append(parse_record(RetrainDecision, record.value))
                    except RejectedRecord:
                        continue
    finally:
        await consumer.stop()
    return out[-limit:]


@retrain_app.command("decisions")
def decisions(limit: int = typer.Option(50, help="most recent records"),
              progress: bool = typer.Option(False, help="also show per-epoch progress records"),
              bootstrap_servers: Optional[str] = typer.Option(None, envvar="RIVULET_KAFKA_BOOTSTRAP")) -> None:
    """What the retrain controller decided, and why (retrain.decisions)."""
    from shared.cli_models import _bootstrap

    rows = asyncio.run(read_decisions(_bootstrap(bootstrap_servers), limit))
    table = Table(title=f"retrain.decisions: last {len(rows)}")
    for col in ("at", "action", "code", "trigger", "version", "policy"):
        table.add_column(col, no_wrap=True)
    table.add_column("message", overflow="fold")
    for d in rows:
        if d.action == "progress" and not progress:
            continue
        table.add_row(time.strftime("%H:%M:%S", time.localtime(d.decided_at)), d.action, d.code, d.trigger[:32],
                      "" if d.version is None else str(d.version), d.policy or "", d.message[:100])
    console.print(table)
