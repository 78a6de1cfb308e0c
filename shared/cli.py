"""The ``rivulet`` command: run the loop, run the demo, inspect dead letters and models."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from shared.cli_drift import drift_app
from shared.cli_models import models_app
from shared.cli_retrain import retrain_app
from shared.supervisor import SERVICES, Environment, Supervisor, bootstrap, prepare_environment

app = typer.Typer(add_completion=False, help="Rivulet: a streaming MLOps loop on Kafka + Redis.")
app.add_typer(models_app, name="models")
app.add_typer(drift_app, name="drift")
app.add_typer(retrain_app, name="retrain")
console = Console()
DEFAULT_DIR = Path(".rivulet")


def _signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


async def _run_loop(env: Environment, spec: Optional[Path], stop: asyncio.Event, quiet: bool,
                    services: tuple[str, ...] = SERVICES) -> Supervisor:
    await bootstrap(env)
    log_dir = env.data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    supervisor = Supervisor(env.env(spec), services, log_dir=log_dir, quiet=quiet)
    await supervisor.start()
    return supervisor


@app.command()
def up(spec: Optional[Path] = typer.Option(None, help="use-case spec (default: shipped card-fraud)"),
       data_dir: Path = typer.Option(DEFAULT_DIR, help="where runs keep logs, offline store, registry")) -> None:
    """Start the broker and Redis (unless RIVULET_KAFKA_BOOTSTRAP/RIVULET_REDIS_URL are set),
    create the topics, and run every service, supervised, with prefixed logs. Ctrl-C stops."""
    logging.basicConfig(level="INFO", format="%(asctime)s rivulet: %(message)s")
    env = prepare_environment(data_dir)

    async def main() -> None:
        stop = asyncio.Event()
        _signals(stop)
        supervisor = await _run_loop(env, spec, stop, quiet=False)
        console.print(f"[bold]Rivulet is up[/]: Kafka {env.kafka_bootstrap}, Redis {env.redis_url}, "
                      f"POST {env.serving_url}/predict, data in {env.data_dir}")
        await stop.wait()
        console.print("stopping services...")
        await supervisor.stop()

    try:
        asyncio.run(main())
    finally:
        env.stop()


def _status_table(stats: Any, rates: dict[str, float]) -> Table:
    snap = stats.snapshot()
    table = Table(title="Rivulet demo (Ctrl-C to stop)", show_header=True, header_style="bold")
    for col in ("phase", "events/s", "predictions/s", "p50 ms", "p99 ms", "labeled acc.",
                "model", "alerts", "last drift alert"):
        table.add_column(col)
    alert = snap["last_alert"]
    alert_txt = f"{alert['kind']} {alert.get('feature') or ''} (v{alert['model_version']})" if alert else "-"
    acc = snap["accuracy"]
    table.add_row(snap["phase"], f"{rates['events']:.0f}", f"{rates['predictions']:.0f}",
                  f"{snap['p50_ms']:.1f}", f"{snap['p99_ms']:.1f}",
                  f"{acc:.3f}" if acc is not None else "-", f"v{snap['model_version']}"
                  if snap["model_version"] is not None else "-", str(snap["alerts"]), alert_txt)
    return table


class _Rates:
    """events/s and predictions/s over the last refresh interval."""

    def __init__(self) -> None:
        self.last = (time.monotonic(), 0, 0)
        self.value = {"events": 0.0, "predictions": 0.0}

    def update(self, stats: Any) -> dict[str, float]:
        now = time.monotonic()
        t0, e0, p0 = self.last
        if now - t0 >= 1.0:
            self.value = {"events": (stats.events - e0) / (now - t0),
                          "predictions": (stats.predictions - p0) / (now - t0)}
            self.last = (now, stats.events, stats.predictions)
        return self.value


@app.command()
def demo(spec: Optional[Path] = typer.Option(None, help="use-case spec (default: shipped card-fraud)"),
         data_dir: Path = typer.Option(DEFAULT_DIR),
         rate: float = typer.Option(150.0, help="transactions per second"),
         cards: int = typer.Option(1000, help="number of simulated cards"),
         shift_after: int = typer.Option(6000, help="predictions before the shift (0: never)"),
         duration: float = typer.Option(0.0, help="seconds of live traffic (0: until Ctrl-C)")) -> None:
    """`up` plus a simulator: card traffic, predictions over HTTP, delayed labels, and a
    covariate shift + concept change after --shift-after predictions. Shows a live table."""
    from services.simulator.app import create_app as create_simulator
    from services.simulator.settings import SimulatorSettings

    logging.basicConfig(level="WARNING", format="%(asctime)s rivulet: %(message)s")
    env = prepare_environment(data_dir)

    async def main() -> None:
        stop = asyncio.Event()
        _signals(stop)
        supervisor = await _run_loop(env, spec, stop, quiet=True)
        console.print(f"Rivulet up: Kafka {env.kafka_bootstrap}, Redis {env.redis_url}, "
                      f"serving {env.serving_url}; service logs in {env.data_dir / 'logs'}")
        sim_settings = SimulatorSettings(
            kafka_bootstrap=env.kafka_bootstrap, redis_url=env.redis_url,
            serving_url=env.serving_url, sim_rate=rate, sim_cards=cards,
            sim_shift_after=shift_after, sim_duration_s=duration)
        rates = _Rates()
        with Live(console=console, refresh_per_second=2, transient=False) as live:
            sim = create_simulator(sim_settings, on_tick=lambda st: live.update(
                _status_table(st, rates.update(st))))
            try:
                await sim.run(stop)
                live.update(_status_table(sim.stats, rates.update(sim.stats)))
            finally:
                await supervisor.stop()
        _print_summary(sim.stats)

    try:
        asyncio.run(main())
    finally:
        env.stop()


def _print_summary(stats: Any) -> None:
    console.print(f"predictions: {stats.predictions}, failed requests: {stats.failed_requests}, "
                  f"labels: {stats.labels}, drift alerts: {stats.alerts}")
    for (version, phase), hits in sorted(stats.accuracy_by_version.items(), key=lambda kv: (kv[0][1] != "before shift", kv[0][0])):
        console.print(f"  model v{version}, {phase}: {len(hits)} labeled, accuracy {sum(hits) / len(hits):.3f}")


@app.command()
def dlq(topic: str = typer.Option("events.dlq", help="events.dlq, labels.dlq or events.late"),
        limit: int = typer.Option(1000, help="most recent records to read"),
        bootstrap_servers: Optional[str] = typer.Option(None, envvar="RIVULET_KAFKA_BOOTSTRAP")) -> None:
    """Show recent dead letters (events.dlq, labels.dlq, events.late) grouped by reason and field."""
    from shared.dlq import read_dead_letters

    if not bootstrap_servers:
        console.print("set RIVULET_KAFKA_BOOTSTRAP (or pass --bootstrap-servers)")
        raise typer.Exit(2)
    letters = asyncio.run(read_dead_letters(bootstrap_servers, topic, limit))
    groups = Counter((d.reason, d.field or "-") for d, _ in letters)
    table = Table(title=f"{topic}: last {len(letters)} dead letters")
    for col in ("reason", "field", "count", "example"):
        table.add_column(col)
    for (reason, field), count in groups.most_common():
        example = next(d.message for d, _ in letters if d.reason == reason and (d.field or "-") == field)
        table.add_row(reason, field, str(count), example[:80])
    console.print(table)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(ctx: typer.Context, name: str = typer.Argument(..., help="a module of loadtests/, e.g. features")) -> None:
    """Run a benchmark from loadtests/ (it writes a JSON report to loadtests/reports/)."""
    import subprocess

    raise typer.Exit(subprocess.call([sys.executable, "-m", f"loadtests.{name}", *ctx.args]))


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
