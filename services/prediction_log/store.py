"""The Parquet files on disk: atomic writes and crash recovery (blocking; run in a thread).

Why recovery is needed: a flush writes several files (one per date/model version) and
only then commits the Kafka offsets. A crash in between leaves some files of the flush
visible and others not, while Kafka will redeliver the whole flush. Every file records
how many files its flush wrote (``rivulet.group_size`` in the Parquet metadata); on
(re)assignment, the newest group of a partition with missing files is deleted, so its
records are written exactly once when they come back. Complete groups set the high
water below which redelivered records are skipped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from services.prediction_log.handlers import (
    TMP_PREFIX,
    TMP_SUFFIX,
    FileSpec,
    parse_file_name,
)

log = logging.getLogger(__name__)
GROUP_SIZE_KEY = b"rivulet.group_size"

SCHEMA = pa.schema([
    ("schema_version", pa.int32()),
    ("prediction_id", pa.string()),
    ("entity_id", pa.string()),
    ("role", pa.string()),
    ("features_json", pa.string()),
    ("score", pa.float64()),
    ("label", pa.bool_()),
    ("threshold", pa.float64()),
    ("served_at", pa.float64()),
    ("latency_ms", pa.float64()),
    ("feature_set_version", pa.int64()),
    ("feature_event_time", pa.float64()),
    ("feature_age_s", pa.float64()),
    ("degraded", pa.list_(pa.string())),
    ("kafka_partition", pa.int32()),
    ("kafka_offset", pa.int64()),
])
LABEL_SCHEMA = pa.schema([
    ("schema_version", pa.int32()),
    ("prediction_id", pa.string()),
    ("role", pa.string()),
    ("revision", pa.int64()),
    ("actual", pa.float64()),
    ("actual_is_bool", pa.bool_()),
    ("label_event_time", pa.float64()),
    ("labeled_at", pa.float64()),  # when the label became known to Rivulet: the as-of clock
    ("served_at", pa.float64()),
    ("kafka_partition", pa.int32()),
    ("kafka_offset", pa.int64()),
])
# Hive partition columns: in the path, not in the files.
PARTITIONS = pa.schema([("date", pa.string()), ("model_version", pa.int64())])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ensure_dir(root: Path, directory: Path) -> None:
    """Create ``directory`` and make the new entries durable (fsync each new parent)."""
    if directory.is_dir():
        return
    directory.mkdir(parents=True, exist_ok=True)
    path = directory
    while path != root.parent and path != path.parent:
        _fsync_dir(path.parent)
        path = path.parent


def write_file(root: Path, spec: FileSpec, schema: pa.Schema = SCHEMA) -> Path:
    """Write to a dot-named temp file, fsync, rename: readers never see half a file."""
    directory = root / spec.directory
    _ensure_dir(root, directory)
    final = directory / spec.name
    tmp = directory / f"{TMP_PREFIX}{spec.name}{TMP_SUFFIX}"
    table = pa.Table.from_pylist(spec.rows, schema=schema)
    table = table.replace_schema_metadata({GROUP_SIZE_KEY: str(spec.group_size).encode()})
    pq.write_table(table, tmp, compression="zstd")
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    _fsync_dir(directory)
    return final


def write_flush(root: Path, specs: Iterable[FileSpec], schema: pa.Schema = SCHEMA) -> int:
    """Write every file of one flush; returns the number of files written."""
    count = 0
    for spec in specs:
        write_file(root, spec, schema)
        count += 1
    return count


def _scan(root: Path, partitions: set[int]) -> dict[int, dict[tuple[int, int], list[Path]]]:
    """partition -> (first, last) -> files; removes leftover temp files on the way."""
    groups: dict[int, dict[tuple[int, int], list[Path]]] = {p: {} for p in partitions}
    if not root.is_dir():
        return groups
    for path in root.glob("date=*/model_version=*/*"):
        name = path.name
        if name.startswith(TMP_PREFIX) and name.endswith(TMP_SUFFIX):
            parsed = parse_file_name(name[len(TMP_PREFIX):-len(TMP_SUFFIX)])
            if parsed and parsed[0] in partitions:
                path.unlink(missing_ok=True)
            continue
        parsed = parse_file_name(name)
        if parsed and parsed[0] in partitions:
            groups[parsed[0]].setdefault(parsed[1:], []).append(path)
    return groups


def _complete(files: list[Path]) -> bool:
    meta = pq.read_schema(files[0]).metadata or {}
    return len(files) >= int(meta.get(GROUP_SIZE_KEY, b"1"))


def recover(root: Path, partitions: Iterable[int]) -> dict[int, int]:
    """Repair the given partitions and return their high water (last offset stored)."""
    high_water: dict[int, int] = {}
    for partition, groups in _scan(root, set(partitions)).items():
        if not groups:
            continue
        newest = max(groups, key=lambda r: r[1])
        if not _complete(groups[newest]):
            log.warning("p%d: deleting %d file(s) of an incomplete flush %s", partition, len(groups[newest]), newest)
            for path in groups.pop(newest):
                path.unlink(missing_ok=True)
        if groups:
            high_water[partition] = max(last for _, last in groups)
    return high_water
