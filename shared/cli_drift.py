"""`rivulet drift ...`: the drift state from the command line."""

from __future__ import annotations

import typer

drift_app = typer.Typer(help="Inspect drift detection.", no_args_is_help=True)
