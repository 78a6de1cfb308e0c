"""Pure pieces of the prediction log: store layout, record -> row, and the flush buffer.

Layout (Hive-style, readable by pyarrow.dataset / DuckDB / pandas)::

    {data_dir}/offline/predictions/date=YYYY-MM-DD/model_version=N/
        part-p{partition}-{first:012d}-{last:012d}.parquet

``first``/``last`` are the offsets of the first and last record that ONE flush stored for
that Kafka partition (the same in every file the flush wrote for it), so the file names alone tell where the store
is up to, and the files of one flush can be recognised as a group after a crash.
The partition columns (``date``, ``model_version``) live in the path only, as Hive
readers expect; :func:`from_row` puts ``model_version`` back.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared import codec
from shared.contracts import LabeledPrediction, PredictionRecord, parse_record
from shared.errors import Reason, RejectedRecord

log = logging.getLogger(__name__)

FILE_RE = re.compile(r"^part-p(\d+)-(\d{12,})-(\d{12,})\.parquet$")
TMP_PREFIX = "."  # pyarrow.dataset and DuckDB globs skip dot files: a temp file is never read
TMP_SUFFIX = ".tmp"
KAFKA_COLUMNS = ("kafka_partition", "kafka_offset")


def store_root(data_dir: Path) -> Path:
    return Path(data_dir) / "offline" / "predictions"


def labels_root(data_dir: Path) -> Path:
    """Labels (``predictions.labeled``, every revision) live next to the predictions,
    in the same layout, so a training set can be read point-in-time (see ``reader``)."""
    return Path(data_dir) / "offline" / "labels"


def utc_date(epoch_s: float) -> str:
    """UTC calendar date of an epoch time; raises RejectedRecord if it is not a real date."""
    try:
        return datetime.fromtimestamp(epoch_s, tz=UTC).date().isoformat()
    except (OverflowError, OSError, ValueError) as exc:
        raise RejectedRecord(Reason.OUT_OF_RANGE, f"served_at {epoch_s!r} is not a date", "served_at") from exc


def partition_dir(date: str, model_version: int) -> str:
    return f"date={date}/model_version={model_version}"


def file_name(partition: int, first_offset: int, last_offset: int) -> str:
    return f"part-p{partition}-{first_offset:012d}-{last_offset:012d}.parquet"


def parse_file_name(name: str) -> tuple[int, int, int] | None:
    """``(partition, first, last)`` of a data file name, None for anything else."""
    match = FILE_RE.match(name)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def parse_prediction(value: bytes | None) -> PredictionRecord:
    """Validate raw bytes from ``predictions``; raises RejectedRecord (never anything else)."""
    return parse_record(PredictionRecord, value)


def to_row(rec: PredictionRecord, partition: int, offset: int) -> dict[str, Any]:
    """One Parquet row. Features go in as JSON (their set and types belong to the spec)."""
    row = rec.model_dump(exclude={"features", "model_version", "degraded"})
    row["features_json"] = codec.dumps(rec.features).decode()
    row["degraded"] = list(rec.degraded)
    row["kafka_partition"] = partition
    row["kafka_offset"] = offset
    return row


def from_row(row: dict[str, Any]) -> dict[str, Any]:
    """A stored row (read with Hive partitions) back to a PredictionRecord-shaped dict."""
    out = {k: v for k, v in row.items() if k not in (*KAFKA_COLUMNS, "date", "features_json")}
    out["features"] = codec.loads(row["features_json"])
    out["model_version"] = int(row["model_version"])
    out["degraded"] = tuple(row.get("degraded") or ())
    return out


# Raw value, Kafka partition, offset -> (dedupe key, row with its "_dir"); raises RejectedRecord.
RowBuilder = Callable[[bytes | None, int, int], tuple[str, dict[str, Any]]]


def prediction_row(value: bytes | None, partition: int, offset: int) -> tuple[str, dict[str, Any]]:
    rec = parse_prediction(value)
    row = to_row(rec, partition, offset)
    row["_dir"] = partition_dir(utc_date(rec.served_at), rec.model_version)
    return rec.prediction_id, row


def label_row(value: bytes | None, partition: int, offset: int) -> tuple[str, dict[str, Any]]:
    """One label revision: the label columns only (features live in the prediction row).
    Partitioned by the prediction's served date, so both sides of a time range prune alike."""
    rec = parse_record(LabeledPrediction, value)
    row: dict[str, Any] = {
        "schema_version": rec.schema_version, "prediction_id": rec.prediction_id, "role": rec.role,
        "revision": rec.revision, "actual": float(rec.actual), "actual_is_bool": isinstance(rec.actual, bool),
        "label_event_time": rec.label_event_time, "labeled_at": rec.labeled_at, "served_at": rec.served_at,
        "kafka_partition": partition, "kafka_offset": offset,
        "_dir": partition_dir(utc_date(rec.served_at), rec.model_version),
    }
    return f"{rec.prediction_id}#{rec.revision}", row


@dataclass(frozen=True)
class FileSpec:
    """One file of a flush: where it goes, its rows, and how many files its group has."""

    directory: str
    partition: int
    first_offset: int
    last_offset: int
    rows: list[dict[str, Any]]
    group_size: int

    @property
    def name(self) -> str:
        return file_name(self.partition, self.first_offset, self.last_offset)


@dataclass
class FlushBuffer:
    """Records consumed since the last flush; skips what the store already holds.

    ``high_water``: partition -> last offset already durable in the store. Records at or
    below it are redeliveries and are skipped; duplicates of a prediction_id inside one
    flush are kept once (the first seen).
    """

    high_water: dict[int, int] = field(default_factory=dict)
    row_of: RowBuilder = prediction_row
    rows: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    next_offsets: dict[int, int] = field(default_factory=dict)
    seen_ids: set[str] = field(default_factory=set)
    started_at: float | None = None
    consumed: int = 0
    stats: dict[str, int] = field(default_factory=lambda: {"written": 0, "skipped": 0, "duplicate": 0, "invalid": 0})

    def add(self, partition: int, offset: int, value: bytes | None, now: float) -> None:
        if self.started_at is None:
            self.started_at = now
        self.consumed += 1
        self.next_offsets[partition] = max(self.next_offsets.get(partition, 0), offset + 1)
        if offset <= self.high_water.get(partition, -1):
            self.stats["skipped"] += 1
            return
        try:
            dedupe, row = self.row_of(value, partition, offset)
        except RejectedRecord as exc:
            self.stats["invalid"] += 1
            log.warning("skipping invalid record p%d@%d: %s", partition, offset, exc.as_dict())
            return
        if dedupe in self.seen_ids:
            self.stats["duplicate"] += 1
            return
        self.seen_ids.add(dedupe)
        self.rows.setdefault(partition, []).append(row)

    def due(self, now: float, max_records: int, interval_s: float) -> bool:
        if self.started_at is None:
            return False
        return self.consumed >= max_records or now - self.started_at >= interval_s

    def plan(self) -> list[FileSpec]:
        """The files this flush writes: per partition, one per (date, model_version)."""
        specs: list[FileSpec] = []
        for partition, rows in sorted(self.rows.items()):
            first, last = rows[0]["kafka_offset"], rows[-1]["kafka_offset"]
            by_dir: dict[str, list[dict[str, Any]]] = {}
            for row in rows:
                by_dir.setdefault(row["_dir"], []).append({k: v for k, v in row.items() if k != "_dir"})
            for directory, dir_rows in sorted(by_dir.items()):
                specs.append(FileSpec(directory, partition, first, last, dir_rows, len(by_dir)))
        return specs

    def discard(self) -> None:
        """Forget the buffered records (they were not written and will be redelivered)."""
        self.rows, self.next_offsets, self.seen_ids = {}, {}, set()
        self.started_at, self.consumed = None, 0

    def flushed(self) -> None:
        """The planned files are durable: advance the high water and start afresh."""
        for partition, rows in self.rows.items():
            self.high_water[partition] = rows[-1]["kafka_offset"]
            self.stats["written"] += len(rows)
        self.discard()
