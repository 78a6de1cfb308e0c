"""Pure pieces of the prediction log: layout, file names, rows, the flush buffer, and
the on-disk recovery (real files in tmp_path, no Kafka)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.dataset as ds
import pytest

from services.prediction_log import store
from services.prediction_log.handlers import (
    FlushBuffer,
    file_name,
    from_row,
    parse_file_name,
    parse_prediction,
    partition_dir,
    store_root,
    to_row,
    utc_date,
)
from services.prediction_log.reader import read_predictions
from shared import codec
from shared.contracts import PredictionRecord
from shared.errors import Reason, RejectedRecord

DAY1 = 1714521600.0  # 2024-05-01T00:00:00Z


def pred(pid: str, served_at: float = DAY1 + 10, version: int = 1, **extra: object) -> PredictionRecord:
    return PredictionRecord(
        prediction_id=pid, entity_id="card-1", model_version=version,
        features={"amount": 12.5, "txn_count_5m": 3, "country": "FR", "missing": None},
        score=0.25, label=False, threshold=0.5, served_at=served_at, latency_ms=1.5,
        feature_age_s=2.0, degraded=("stale_features",), **extra,  # type: ignore[arg-type]
    )


def raw(rec: PredictionRecord) -> bytes:
    return codec.dumps(rec.model_dump(mode="json"))


def test_layout_names_round_trip() -> None:
    assert utc_date(DAY1 - 0.001) == "2024-04-30"
    assert utc_date(DAY1) == "2024-05-01"
    assert partition_dir("2024-05-01", 3) == "date=2024-05-01/model_version=3"
    name = file_name(2, 7, 12345)
    assert name == "part-p2-000000000007-000000012345.parquet"
    assert parse_file_name(name) == (2, 7, 12345)
    for other in ("part-p2-7-12.parquet", ".part-p2-000000000007-000000012345.parquet.tmp", "x.parquet"):
        assert parse_file_name(other) is None


def test_row_round_trip_keeps_every_field() -> None:
    rec = pred("a", role="shadow", feature_event_time=DAY1)
    row = to_row(rec, partition=1, offset=42)
    assert row["kafka_partition"] == 1 and row["kafka_offset"] == 42
    assert codec.loads(row["features_json"]) == rec.features
    back = from_row({**row, "model_version": 1, "date": "2024-05-01"})
    assert PredictionRecord.model_validate(back) == rec


@pytest.mark.parametrize(("value", "reason"), [
    (b"{nope", Reason.INVALID_JSON),
    (b"[1]", Reason.NOT_AN_OBJECT),
    (b'{"schema_version": 9}', Reason.UNKNOWN_SCHEMA_VERSION),
    (b'{"prediction_id": "x"}', Reason.INVALID),
    (None, Reason.INVALID_JSON),
])
def test_parse_rejects_bad_records(value: bytes | None, reason: Reason) -> None:
    with pytest.raises(RejectedRecord) as err:
        parse_prediction(value)
    assert err.value.reason is reason


def test_buffer_skips_stored_offsets_invalid_and_duplicate_ids() -> None:
    buf = FlushBuffer(high_water={0: 4})
    buf.add(0, 4, raw(pred("old")), now=1.0)           # already stored
    buf.add(0, 5, raw(pred("a")), now=1.0)
    buf.add(0, 6, b"garbage", now=1.0)
    buf.add(0, 7, raw(pred("a")), now=1.0)              # same prediction republished
    buf.add(1, 0, raw(pred("b", version=2)), now=1.0)
    assert buf.stats == {"written": 0, "skipped": 1, "duplicate": 1, "invalid": 1}
    assert buf.next_offsets == {0: 8, 1: 1}
    assert [r["prediction_id"] for r in buf.rows[0]] == ["a"]


def test_buffer_due_on_size_or_time() -> None:
    buf = FlushBuffer()
    assert not buf.due(100.0, max_records=2, interval_s=5)
    buf.add(0, 0, raw(pred("a")), now=100.0)
    assert not buf.due(101.0, max_records=2, interval_s=5)
    assert buf.due(105.0, max_records=2, interval_s=5)
    buf.add(0, 1, raw(pred("b")), now=101.0)
    assert buf.due(101.0, max_records=2, interval_s=5)


def test_plan_groups_by_directory_and_names_files_by_flush_range() -> None:
    buf = FlushBuffer()
    buf.add(0, 10, raw(pred("a", served_at=DAY1 - 5)), now=1.0)    # 2024-04-30
    buf.add(0, 11, raw(pred("b")), now=1.0)
    buf.add(0, 12, raw(pred("c", version=2)), now=1.0)
    buf.add(3, 0, raw(pred("d")), now=1.0)
    specs = buf.plan()
    assert [(s.directory, s.name, len(s.rows), s.group_size) for s in specs] == [
        ("date=2024-04-30/model_version=1", file_name(0, 10, 12), 1, 3),
        ("date=2024-05-01/model_version=1", file_name(0, 10, 12), 1, 3),
        ("date=2024-05-01/model_version=2", file_name(0, 10, 12), 1, 3),
        ("date=2024-05-01/model_version=1", file_name(3, 0, 0), 1, 1),
    ]
    buf.flushed()
    assert buf.high_water == {0: 12, 3: 0} and buf.stats["written"] == 4
    assert buf.rows == {} and buf.started_at is None


def test_store_write_recover_and_read(tmp_path: Path) -> None:
    root = store_root(tmp_path)
    buf = FlushBuffer()
    for i in range(6):
        buf.add(i % 2, i, raw(pred(f"id{i}", served_at=DAY1 + 3600 * 20 * i, version=1 + i % 2)), now=1.0)
    assert store.write_flush(root, buf.plan()) == 6
    (root / "date=2024-05-01" / "model_version=1" / ".part-p0-000000000099-000000000100.parquet.tmp").write_bytes(b"x")
    assert store.recover(root, {0, 1}) == {0: 4, 1: 5}
    assert not list(root.rglob(".*.tmp"))
    got = read_predictions(tmp_path)
    assert [r["prediction_id"] for r in got] == [f"id{i}" for i in range(6)]
    assert PredictionRecord.model_validate(got[0]) == pred("id0", served_at=DAY1)
    assert [r["prediction_id"] for r in read_predictions(tmp_path, model_version=2)] == ["id1", "id3", "id5"]
    window = read_predictions(tmp_path, start=DAY1 + 3600 * 20, end=DAY1 + 3600 * 60)
    assert [r["prediction_id"] for r in window] == ["id1", "id2"]
    table = ds.dataset(root, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 6 and {"date", "model_version"} <= set(table.column_names)


def test_recover_deletes_an_incomplete_newest_flush(tmp_path: Path) -> None:
    root = store_root(tmp_path)
    first = FlushBuffer()
    first.add(0, 0, raw(pred("a")), now=1.0)
    store.write_flush(root, first.plan())
    second = FlushBuffer()
    second.add(0, 1, raw(pred("b")), now=1.0)
    second.add(0, 2, raw(pred("c", version=2)), now=1.0)
    store.write_file(root, second.plan()[0])    # crash before the 2nd file of the flush
    assert store.recover(root, {0}) == {0: 0}
    assert [r["prediction_id"] for r in read_predictions(tmp_path)] == ["a"]
    assert store.recover(root, {1}) == {}
    assert read_predictions(tmp_path / "nowhere") == []
