"""prediction_log as a real process against a real broker: every prediction lands in
the Parquet store exactly once, also across a SIGKILL in the middle of the stream."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pyarrow.dataset as ds

from services.prediction_log import store
from services.prediction_log.handlers import FlushBuffer, store_root
from services.prediction_log.reader import read_predictions
from shared.contracts import PredictionRecord
from shared.topics import PREDICTIONS
from tests.helpers import Stack, produce_json, read_topic, wait_for

DAY1 = 1714521600.0  # 2024-05-01T00:00:00Z
FAST = {"RIVULET_FLUSH_RECORDS": 500, "RIVULET_FLUSH_INTERVAL_S": 0.3, "RIVULET_SESSION_TIMEOUT_MS": 3000}


def make(i: int, prefix: str = "p") -> PredictionRecord:
    return PredictionRecord(
        prediction_id=f"{prefix}{i:05d}", entity_id=f"card-{i % 97}", model_version=1 + i % 2,
        features={"amount": round(i * 1.25, 2), "txn_count_5m": i % 7, "channel": "pos", "country": None},
        score=(i % 100) / 100, label=i % 100 >= 50, threshold=0.5,
        served_at=DAY1 + (i % 2) * 86400 + i, latency_ms=0.5 + i % 3, feature_age_s=float(i % 11),
        degraded=("no_features",) if i % 13 == 0 else (),
    )


def items(recs: list[PredictionRecord]) -> list[tuple[str | None, object]]:
    return [(r.prediction_id, r.model_dump(mode="json")) for r in recs]


def stored_table(data_dir: Path) -> object:
    return ds.dataset(store_root(data_dir), format="parquet", partitioning="hive").to_table()


def assert_each_once(data_dir: Path, expected: dict[str, PredictionRecord], max_rows: int) -> None:
    got = read_predictions(data_dir)
    assert len(got) == len(expected)
    assert {r["prediction_id"]: PredictionRecord.model_validate(r) for r in got} == expected
    assert [r["served_at"] for r in got] == sorted(r["served_at"] for r in got)
    table = stored_table(data_dir)
    offsets = list(zip(table["kafka_partition"].to_pylist(), table["kafka_offset"].to_pylist()))
    assert len(offsets) == len(set(offsets)), "a Kafka record was stored twice"
    assert len(expected) <= table.num_rows <= max_rows
    assert not [p for p in store_root(data_dir).rglob("*") if p.name.startswith(".")], "temp files left"


def test_stores_each_prediction_once(stack: Stack) -> None:
    data_dir = stack.tmp / "data"
    proc = stack.spawn("services.prediction_log", **FAST)
    recs = [make(i) for i in range(3000)]
    dups = recs[::100]  # 30 predictions republished by serving
    batch = items(recs[:1500]) + [("bad", b"{not json"), ("bad2", b'{"prediction_id": 1}')]
    produce_json(stack.broker.url, PREDICTIONS.name, batch + items(dups) + items(recs[1500:]))
    expected = {r.prediction_id: r for r in recs}
    wait_for(lambda: len(read_predictions(data_dir)) == len(expected), timeout=30, what="3000 stored")
    time.sleep(1.0)  # anything still in flight would show up as an extra row below
    assert_each_once(data_dir, expected, max_rows=len(recs) + len(dups))
    table = stored_table(data_dir)
    assert set(table["date"].to_pylist()) == {"2024-05-01", "2024-05-02"}
    assert set(table["model_version"].to_pylist()) == {1, 2}
    assert [r["prediction_id"] for r in read_predictions(data_dir, model_version=2)][:2] == ["p00001", "p00003"]
    day2 = read_predictions(data_dir, start=DAY1 + 86400, end=DAY1 + 2 * 86400)
    assert {r["prediction_id"] for r in day2} == {r.prediction_id for r in recs if r.served_at >= DAY1 + 86400}
    assert proc.poll() is None, "invalid records must not stop the service"


def test_sigkill_mid_stream_then_restart_stores_each_once(stack: Stack) -> None:
    data_dir = stack.tmp / "data"
    proc = stack.spawn("services.prediction_log", **FAST)
    warmup = [make(i, "w") for i in range(200)]
    produce_json(stack.broker.url, PREDICTIONS.name, items(warmup))
    wait_for(lambda: len(read_predictions(data_dir)) == len(warmup), timeout=30, what="warm-up stored")

    stream = [make(i, "s") for i in range(4000)]
    chunks = [stream[i:i + 200] for i in range(0, len(stream), 200)]

    def producer() -> None:
        for chunk in chunks:
            produce_json(stack.broker.url, PREDICTIONS.name, items(chunk))
            time.sleep(0.05)

    thread = threading.Thread(target=producer)
    thread.start()
    wait_for(lambda: len(read_predictions(data_dir)) > len(warmup), timeout=30, what="stream being stored")
    proc.kill()
    proc.wait()
    stack.spawn("services.prediction_log", **FAST)
    thread.join()
    expected = {r.prediction_id: r for r in warmup + stream}
    wait_for(lambda: len(read_predictions(data_dir)) == len(expected), timeout=40, what="all stored after restart")
    time.sleep(1.0)
    assert_each_once(data_dir, expected, max_rows=len(expected))


def test_restart_repairs_a_flush_cut_short_by_a_crash(stack: Stack) -> None:
    """The state a SIGKILL inside a flush leaves: some files of the flush renamed, one
    missing, a temp file, offsets not committed. The service must end with each once."""
    data_dir = stack.tmp / "data"
    recs = [make(i, "c") for i in range(400)]
    produce_json(stack.broker.url, PREDICTIONS.name, items(recs))
    consumed = read_topic(stack.broker.url, PREDICTIONS.name, count=len(recs))
    buf = FlushBuffer()
    for r in consumed:
        buf.add(r.partition, r.offset, r.value, now=time.time())
    specs = buf.plan()
    assert any(s.group_size > 1 for s in specs)
    cut = next(i for i, s in enumerate(specs) if s.group_size > 1)
    root = store_root(data_dir)
    for spec in specs[:cut + 1]:                       # the crash hits before file cut + 1
        store.write_file(root, spec)
    nxt = specs[cut + 1]
    (root / nxt.directory).mkdir(parents=True, exist_ok=True)
    (root / nxt.directory / f".{nxt.name}.tmp").write_bytes(b"PAR1 half")
    assert len(read_predictions(data_dir)) < len(recs)

    stack.spawn("services.prediction_log", **FAST)
    expected = {r.prediction_id: r for r in recs}
    wait_for(lambda: len(read_predictions(data_dir)) == len(expected), timeout=30, what="all stored")
    time.sleep(1.0)
    assert_each_once(data_dir, expected, max_rows=len(expected))
