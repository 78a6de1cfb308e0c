"""The offline labels store and the point-in-time training-set reader (real files in
tmp_path, no Kafka): labels known after ``as_of`` never leak into a training set."""

from __future__ import annotations

from pathlib import Path

from services.prediction_log import store
from services.prediction_log.handlers import (
    FlushBuffer,
    label_row,
    labels_root,
    store_root,
)
from services.prediction_log.reader import read_labels, training_set
from shared import codec
from shared.contracts import LabeledPrediction, PredictionRecord

DAY1 = 1714521600.0  # 2024-05-01T00:00:00Z


def pred(i: int, role: str = "champion") -> PredictionRecord:
    return PredictionRecord(prediction_id=f"p{i}", entity_id="card-1", model_version=1 + i % 2, role=role,  # type: ignore[arg-type]
                            features={"amount": float(i), "channel": "pos"}, score=0.1 * i, label=i >= 5,
                            threshold=0.5, served_at=DAY1 + 100 * i, latency_ms=1.5, feature_age_s=3.0 + i,
                            feature_set_version=2)


def lab(p: PredictionRecord, actual: bool | float, labeled_at: float, revision: int = 1) -> bytes:
    lp = LabeledPrediction(**p.model_dump(), actual=actual, label_event_time=labeled_at - 1, labeled_at=labeled_at,
                           revision=revision)
    return codec.dumps(lp.model_dump(mode="json"))


def write(tmp_path: Path, preds: list[PredictionRecord], labels: list[bytes]) -> None:
    buf = FlushBuffer()
    for off, p in enumerate(preds):
        buf.add(0, off, codec.dumps(p.model_dump(mode="json")), now=1.0)
    store.write_flush(store_root(tmp_path), buf.plan())
    lbuf = FlushBuffer(row_of=label_row)
    for off, raw in enumerate(labels):
        lbuf.add(0, off, raw, now=1.0)
    lbuf.add(0, len(labels), labels[0], now=1.0)  # a redelivered revision: kept once
    lbuf.add(0, len(labels) + 1, b"junk", now=1.0)
    assert lbuf.stats["duplicate"] == 1 and lbuf.stats["invalid"] == 1
    store.write_flush(labels_root(tmp_path), lbuf.plan(), store.LABEL_SCHEMA)


def test_training_set_is_point_in_time_correct(tmp_path: Path) -> None:
    preds = [pred(i) for i in range(8)] + [pred(8, role="shadow")]
    t = DAY1 + 5000
    labels = [
        lab(preds[0], True, t),                   # known early
        lab(preds[0], False, t + 500, revision=2),  # a correction made later
        lab(preds[1], False, t + 100),
        lab(preds[2], True, t + 900),             # arrives after the as_of below
        lab(preds[3], 0.25, t),                   # a numeric label keeps its type
        lab(preds[8], True, t),
    ]
    write(tmp_path, preds, labels)
    rows = training_set(tmp_path, DAY1, DAY1 + 86400, as_of=t + 200)
    got = {r["prediction_id"]: (r["actual"], r["label_revision"]) for r in rows}
    assert got == {"p0": (True, 1), "p1": (False, 1), "p3": (0.25, 1), "p8": (True, 1)}
    now = {r["prediction_id"]: r["actual"] for r in training_set(tmp_path, DAY1, DAY1 + 86400)}
    assert now["p0"] is False and now["p2"] is True and len(now) == 5
    first = next(r for r in rows if r["prediction_id"] == "p0")
    assert PredictionRecord.model_validate(first) == preds[0]   # exact served features, ages, versions
    assert (first["feature_age_s"], first["feature_set_version"], first["latency_ms"]) == (3.0, 2, 1.5)


def test_as_of_hides_predictions_served_later_and_filters_apply(tmp_path: Path) -> None:
    preds = [pred(i) for i in range(8)] + [pred(8, role="shadow")]
    write(tmp_path, preds, [lab(p, True, DAY1 + 5000) for p in preds])
    as_of = DAY1 + 350                                       # p0..p3 served by then, no label known yet
    rows = training_set(tmp_path, DAY1, DAY1 + 86400, as_of=as_of, include_unlabeled=True)
    assert [r["prediction_id"] for r in rows] == ["p0", "p1", "p2", "p3"]
    assert all(r["actual"] is None for r in rows)
    assert training_set(tmp_path, DAY1, DAY1 + 86400, as_of=as_of) == []
    champ = training_set(tmp_path, DAY1, DAY1 + 86400, roles=("champion",), model_version=1)
    assert [r["prediction_id"] for r in champ] == ["p0", "p2", "p4", "p6"]
    assert len(read_labels(tmp_path, as_of=DAY1 + 4999)) == 0 and len(read_labels(tmp_path)) == 9
    assert training_set(tmp_path / "nowhere", DAY1, DAY1 + 10) == []
