"""Read the offline prediction store (pure pyarrow; no Kafka, no service needed).

The store is a plain Hive-partitioned Parquet dataset, so other tools read it too::

    pyarrow.dataset.dataset(root, format="parquet", partitioning="hive")
    duckdb.sql(f"SELECT * FROM read_parquet('{root}/**/*.parquet', hive_partitioning=true)")
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from services.prediction_log.handlers import from_row, store_root
from services.prediction_log.store import PARTITIONS, SCHEMA


def open_dataset(data_dir: Path | str) -> ds.Dataset:
    """The whole store as one dataset (``date`` and ``model_version`` from the paths)."""
    root = store_root(Path(data_dir))
    partitioning = ds.partitioning(PARTITIONS, flavor="hive")
    schema = pa.unify_schemas([SCHEMA, PARTITIONS])
    return ds.dataset(root, format="parquet", partitioning=partitioning, schema=schema)


def _filter(start: float | None, end: float | None, model_version: int | None) -> ds.Expression | None:
    """served_at in [start, end); the date bounds let pyarrow skip whole directories."""
    conditions: list[ds.Expression] = []
    if start is not None:
        conditions += [ds.field("served_at") >= start, ds.field("date") >= _date(start)]
    if end is not None:
        conditions += [ds.field("served_at") < end, ds.field("date") <= _date(end)]
    if model_version is not None:
        conditions.append(ds.field("model_version") == model_version)
    expr = None
    for cond in conditions:
        expr = cond if expr is None else expr & cond
    return expr


def _date(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, tz=timezone.utc).date().isoformat()


def _read(data_dir: Path | str, expr: ds.Expression | None, attempts: int = 5) -> pa.Table:
    """Retry when a listed file vanished: the service deletes the files of a flush that
    a crash left incomplete (their records are being written again)."""
    for attempt in range(attempts):
        try:
            return open_dataset(data_dir).to_table(filter=expr)
        except FileNotFoundError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


def read_predictions(
    data_dir: Path | str,
    start: float | None = None,
    end: float | None = None,
    model_version: int | None = None,
) -> list[dict[str, Any]]:
    """Stored predictions (``features`` decoded), one per prediction_id, by served_at.

    A prediction_id stored twice (republished by serving in different flushes) is
    returned once: the earliest stored copy.
    """
    if not store_root(Path(data_dir)).is_dir():
        return []
    table = _read(data_dir, _filter(start, end, model_version))
    if table.num_rows == 0:
        return []
    order = pc.sort_indices(table, [("served_at", "ascending"), ("kafka_partition", "ascending"),
                                    ("kafka_offset", "ascending")])
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    for row in table.take(order).to_pylist():
        if row["prediction_id"] not in seen:
            seen.add(row["prediction_id"])
            out.append(from_row(row))
    return out
