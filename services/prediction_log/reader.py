"""Read the offline prediction store (pure pyarrow; no Kafka, no service needed).

The store is a plain Hive-partitioned Parquet dataset, so other tools read it too::

    pyarrow.dataset.dataset(root, format="parquet", partitioning="hive")
    duckdb.sql(f"SELECT * FROM read_parquet('{root}/**/*.parquet', hive_partitioning=true)")

:func:`training_set` is the point-in-time read: predictions served in ``[start, end)``
joined with the labels AS THEY WERE KNOWN at ``as_of`` (label revisions with
``labeled_at <= as_of``; the latest such revision wins). A label that arrived later, or
a correction made later, is invisible, so a model trained "as of" a past moment sees
exactly what a model trained at that moment would have seen.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from services.prediction_log.handlers import from_row, labels_root, store_root
from services.prediction_log.store import LABEL_SCHEMA, PARTITIONS, SCHEMA


def open_dataset(data_dir: Path | str, labels: bool = False) -> ds.Dataset:
    """The whole store (or the labels store) as one dataset (``date`` and
    ``model_version`` from the paths)."""
    root = (labels_root if labels else store_root)(Path(data_dir))
    partitioning = ds.partitioning(PARTITIONS, flavor="hive")
    schema = pa.unify_schemas([LABEL_SCHEMA if labels else SCHEMA, PARTITIONS])
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
    return datetime.fromtimestamp(epoch_s, tz=UTC).date().isoformat()


def _read(data_dir: Path | str, expr: ds.Expression | None, attempts: int = 5, labels: bool = False) -> pa.Table:
    """Retry when a listed file vanished: the service deletes the files of a flush that
    a crash left incomplete (their records are being written again)."""
    for attempt in range(attempts):
        try:
            return open_dataset(data_dir, labels).to_table(filter=expr)
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


def read_labels(
    data_dir: Path | str,
    as_of: float | None = None,
    start: float | None = None,
    end: float | None = None,
    model_version: int | None = None,
) -> dict[str, dict[str, Any]]:
    """prediction_id -> its label as known at ``as_of`` (latest revision with
    ``labeled_at <= as_of``; None: all). ``start``/``end`` bound the prediction's served_at."""
    if not labels_root(Path(data_dir)).is_dir():
        return {}
    expr = _filter(start, end, model_version)
    if as_of is not None:
        known = ds.field("labeled_at") <= as_of
        expr = known if expr is None else expr & known
    table = _read(data_dir, expr, labels=True)
    order = pc.sort_indices(table, [("revision", "ascending"), ("kafka_offset", "descending")])
    latest: dict[str, dict[str, Any]] = {}
    for row in table.take(order).to_pylist():  # later (higher) revisions overwrite earlier ones
        actual = bool(row["actual"]) if row["actual_is_bool"] else row["actual"]
        latest[row["prediction_id"]] = {"actual": actual, "label_revision": row["revision"],
                                        "labeled_at": row["labeled_at"], "label_event_time": row["label_event_time"]}
    return latest


def training_set(
    data_dir: Path | str,
    start: float,
    end: float,
    as_of: float | None = None,
    model_version: int | None = None,
    roles: tuple[str, ...] | None = None,
    include_unlabeled: bool = False,
) -> list[dict[str, Any]]:
    """Point-in-time training rows: predictions served in ``[start, min(end, as_of))`` (a
    prediction served after ``as_of`` did not exist yet) with their exact served features,
    joined with the label known at ``as_of`` (``actual``, ``label_revision``, ``labeled_at``,
    ``label_event_time``). ``roles``: keep only these (e.g. ``("champion",)``; default all,
    shadow predictions included). Unlabeled rows only with ``include_unlabeled``
    (their label fields are None)."""
    stop = end if as_of is None else min(end, as_of)
    labels = read_labels(data_dir, as_of, start, stop, model_version)
    rows = []
    empty = {"actual": None, "label_revision": None, "labeled_at": None, "label_event_time": None}
    for rec in read_predictions(data_dir, start, stop, model_version):
        if roles is not None and rec["role"] not in roles:
            continue
        label = labels.get(rec["prediction_id"])
        if label is not None or include_unlabeled:
            rows.append({**rec, **(label or empty)})
    return rows
