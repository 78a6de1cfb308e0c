"""`rivulet drift ...`: the drift state from the command line."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from shared import redis_keys

drift_app = typer.Typer(help="Inspect drift detection.", no_args_is_help=True)


def parse_state(raw: dict[bytes, bytes]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``rv:drift:state:{model}`` -> (meta, one row per test, drifted first then by name)."""
    meta: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for key, value in raw.items():
        data = json.loads(value)
        if key.decode() == "_meta":
            meta = data
        else:
            rows.append(data)
    rows.sort(key=lambda r: (not r.get("drifted"), r.get("feature") or "~", r.get("test", "")))
    return meta, rows


def _num(v: Any) -> str:
    return "-" if v is None else f"{v:.4g}"


def _time(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S")


def state_table(version: int, meta: dict[str, Any], rows: list[dict[str, Any]]) -> Table:
    w = meta.get("window") or {}
    title = (f"model v{version}: window of {w.get('count', '?')} predictions "
             f"served {_time(w.get('start', 0))}..{_time(w.get('end', 0))} UTC; per-test alpha "
             f"{_num(meta.get('threshold'))}; incident {meta.get('incident_id') or 'none'}")
    table = Table(title=title, title_justify="left")
    for col in ("feature", "test", "statistic", "critical", "p-value", "threshold", "PSI", "W/σ", "JS", "drifted"):
        table.add_column(col, justify="left" if col in ("feature", "test") else "right")
    for r in rows:
        e = r.get("effects") or {}
        table.add_row(r.get("feature") or "(score)" if r.get("kind") == "prediction_drift" else r.get("feature") or "-",
                      r.get("test", ""), _num(r.get("statistic")), _num(r.get("critical")), _num(r.get("p_value")),
                      _num(r.get("threshold")), _num(e.get("psi")), _num(e.get("wasserstein_sigma")),
                      _num(e.get("js")), "[bold red]yes[/]" if r.get("drifted") else "no")
    return table


@drift_app.command("report")
def report(
    redis_url: str = typer.Option("redis://127.0.0.1:6379/0", envvar="RIVULET_REDIS_URL", help="Redis URL"),
    model: int | None = typer.Option(None, help="only this model version"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of tables"),
) -> None:
    """Print the latest drift state per feature (statistic, threshold, window) per model version."""
    import redis

    client = redis.Redis.from_url(redis_url)
    if model is not None:
        versions = [model]
    else:
        versions = sorted(int(k.decode().rsplit(":", 1)[1]) for k in client.scan_iter(redis_keys.drift_state_pattern()))
    console = Console()
    if not versions:
        console.print("no drift state yet (the drift service writes it after its first full window)")
        raise typer.Exit(1)
    out = {}
    for v in versions:
        meta, rows = parse_state(client.hgetall(redis_keys.drift_state(v)))
        out[v] = {"meta": meta, "tests": rows}
        if not as_json:
            console.print(state_table(v, meta, rows))
    if as_json:
        console.print_json(json.dumps(out))
