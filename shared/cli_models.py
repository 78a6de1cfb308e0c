"""`rivulet models ...`: the model registry from the command line."""

from __future__ import annotations

import asyncio
import getpass
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

models_app = typer.Typer(help="Inspect and steer model versions.", no_args_is_help=True)
console = Console()


@models_app.command("list")
def list_models(data_dir: Path = typer.Option(Path(".rivulet"), envvar="RIVULET_DATA_DIR")) -> None:
    """Every registered version with its status, parent, trigger and holdout metrics."""
    from services.retrain.registry import list_versions

    table = Table(title=f"models in {data_dir / 'registry'}")
    for col in ("version", "status", "champion", "parent", "policy", "trigger", "rows", "accuracy", "log_loss",
                "sha256"):
        table.add_column(col)
    for meta in list_versions(data_dir):
        metrics, window = meta.get("metrics", {}), meta.get("trained_on") or {}
        table.add_row(str(meta.get("version")), str(meta.get("status", "")), "*" if meta.get("champion") else "",
                      str(meta.get("parent")), str(meta.get("policy") or ""), str(meta.get("trigger", ""))[:40],
                      str(window.get("count", "")), f"{metrics.get('accuracy', float('nan')):.3f}",
                      f"{metrics.get('log_loss', float('nan')):.3f}", str(meta.get("artifact_sha256") or "")[:12])
    console.print(table)


@models_app.command("show")
def show_model(version: int = typer.Argument(..., help="a registered version"),
               data_dir: Path = typer.Option(Path(".rivulet"), envvar="RIVULET_DATA_DIR"),
               profile: bool = typer.Option(False, help="include the reference profile")) -> None:
    """The full lineage of one version as JSON: artifact sha256, spec and feature-set version,
    training window (times and offsets), parent, trigger, policy, parameters, seed, code
    version, validation (holdout, replay, slices, sanity), gate reasons and its history."""
    import json

    from services.retrain.registry import show_version

    meta = show_version(data_dir, version)
    if meta is None:
        console.print(f"version {version} is not in {data_dir / 'registry'}")
        raise typer.Exit(1)
    if not profile and meta.get("reference_profile") is not None:
        meta["reference_profile"] = f"<{meta['reference_profile'].get('count', '?')} rows; --profile shows it>"
    typer.echo(json.dumps(meta, indent=2, sort_keys=True))


STRATEGIES = ("full", "shadow", "canary")


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - containers may have no user entry
        return "unknown"


def _bootstrap(value: Optional[str]) -> str:
    if not value:
        console.print("set RIVULET_KAFKA_BOOTSTRAP (or pass --bootstrap-servers)")
        raise typer.Exit(2)
    return value


async def read_model_events(bootstrap: str, timeout: float = 10.0) -> list[Any]:
    """Every event on ``models``, oldest first (the topic is the registry's source of truth)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from shared.contracts import ModelEvent, parse_record
    from shared.errors import RejectedRecord
    from shared.topics import MODELS

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                max_partition_fetch_bytes=64 << 20, fetch_max_bytes=64 << 20)
    await consumer.start()
    events: list[ModelEvent] = []
    try:
        await consumer.topics()  # refresh metadata so the partitions are known
        tps = [TopicPartition(MODELS.name, p) for p in sorted(consumer.partitions_for_topic(MODELS.name) or [])]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any([await consumer.position(tp) < end[tp] for tp in tps]):
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    try:
                        events.append(parse_record(ModelEvent, record.value))
                    except RejectedRecord:
                        continue
    finally:
        await consumer.stop()
    return events


async def publish_model_event(bootstrap: str, event: Any) -> None:
    from aiokafka import AIOKafkaProducer

    from shared import codec

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=8 << 20)
    await producer.start()
    try:
        await (await producer.send("models", codec.dumps(event.model_dump(mode="json")),
                                   key=str(event.version).encode()))
    finally:
        await producer.stop()


@models_app.command("rollback")
def rollback(to: Optional[int] = typer.Option(None, help="serve this version (default: the previous one)"),
             why: str = typer.Option("manual rollback", "--why", "--reason", help="recorded on the event"),
             who: str = typer.Option("", help="recorded on the event (default: your user name)"),
             bootstrap_servers: Optional[str] = typer.Option(None, envvar="RIVULET_KAFKA_BOOTSTRAP")) -> None:
    """Publish `rolled_back`: during a shadow/canary rollout, drop the challenger; otherwise
    serve the champion before the current one again (or --to VERSION). Serving swaps in < 2 s."""
    from services.serving.rollout import fold, rollback_target
    from shared.contracts import ModelEvent

    bootstrap = _bootstrap(bootstrap_servers)
    who = who or _user()
    state = fold(asyncio.run(read_model_events(bootstrap)))
    target = to if to is not None else rollback_target(state)
    if target is None:
        console.print(f"nothing to roll back: version {state.champion} is the first champion")
        raise typer.Exit(1)
    event = ModelEvent(event="rolled_back", version=target, parent=state.champion, created_at=time.time(),
                       trigger="cli", reason=why, who=who)
    asyncio.run(publish_model_event(bootstrap, event))
    dropped = f", challenger v{state.challenger} dropped" if state.challenger is not None else ""
    console.print(f"rolled back: v{state.champion} -> v{target}{dropped} (by {who}: {why})")


@models_app.command("promote")
def promote(version: int = typer.Argument(..., help="a version registered on the models topic"),
            strategy: str = typer.Option("full", help="full | shadow | canary"),
            share: float = typer.Option(0.1, min=0.0, max=1.0, help="canary: share of entities answered"),
            why: str = typer.Option("manual promotion", "--why", "--reason", help="recorded on the event"),
            who: str = typer.Option("", help="recorded on the event (default: your user name)"),
            bootstrap_servers: Optional[str] = typer.Option(None, envvar="RIVULET_KAFKA_BOOTSTRAP")) -> None:
    """Re-announce VERSION's signed artifact as `promoted` with a rollout strategy."""
    if strategy not in STRATEGIES:
        console.print(f"--strategy must be one of {', '.join(STRATEGIES)}")
        raise typer.Exit(2)
    bootstrap = _bootstrap(bootstrap_servers)
    who = who or _user()
    found = [e for e in asyncio.run(read_model_events(bootstrap)) if e.version == version and e.artifact_b64]
    if not found:
        console.print(f"no signed artifact for version {version} on the models topic"
                      + (" (version 0 is the baseline: use `rollback --to 0`)" if version == 0 else ""))
        raise typer.Exit(1)
    event = found[-1].model_copy(update=dict(
        event="promoted", created_at=time.time(), trigger="cli", reason=why, who=who, strategy=strategy,
        share=share if strategy == "canary" else None))
    asyncio.run(publish_model_event(bootstrap, event))
    console.print(f"promoted v{version} ({strategy}{f', share {share}' if strategy == 'canary' else ''})")
