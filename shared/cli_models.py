"""`rivulet models ...`: the model registry from the command line."""

from __future__ import annotations

from pathlib import Path

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
    for col in ("version", "status", "parent", "trigger", "accuracy", "log_loss"):
        table.add_column(col)
    for meta in list_versions(data_dir):
        metrics = meta.get("metrics", {})
        table.add_row(str(meta.get("version")), str(meta.get("status", "")), str(meta.get("parent")),
                      str(meta.get("trigger", ""))[:40], f"{metrics.get('accuracy', float('nan')):.3f}",
                      f"{metrics.get('log_loss', float('nan')):.3f}")
    console.print(table)
