"""The concept benchmark's pure parts: streams, prequential accounting, recovery, report shape."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from loadtests import concept_metrics as cm
from loadtests.concept import parse
from loadtests.concept_plot import plot
from loadtests.concept_report import analyse, gradual_recovery, summary_lines, targets
from loadtests.concept_streams import CASES, rows, sea_label
from shared import modeling
from shared.spec import load_spec


# -- streams ------------------------------------------------------------------------------------
def test_sea_abrupt_changes_concept_exactly_at_the_index() -> None:
    data = rows(CASES["sea_abrupt"], 700, 500, seed=3)
    assert len(data) == 1200
    assert all(y == sea_label(x, 9.5) for x, y in data[:700])  # variant 3
    assert all(y == sea_label(x, 7.0) for x, y in data[700:])  # variant 2
    assert sum(y != sea_label(x, 9.5) for x, y in data[700:]) > 50  # the change matters
    assert set(data[0][0]) == {"x0", "x1", "x2"}


def test_agrawal_abrupt_switches_function_at_the_index() -> None:
    before = rows(CASES["agrawal_abrupt"], 400, 0, seed=3)
    data = rows(CASES["agrawal_abrupt"], 400, 400, seed=3)
    assert data[:400] == before  # the prefix does not depend on what follows
    spec = load_spec(CASES["agrawal_abrupt"].spec)
    assert set(data[0][0]) == set(spec.model.numeric)
    old = modeling.train(spec, data[:400])  # a tree for function 0 ...
    acc = modeling.evaluate(old, data[400:], spec, 0.5)["accuracy"]
    assert acc < 0.75  # ... is wrong on function 2


def test_gradual_stream_mixes_concepts_around_the_centre() -> None:
    case = CASES["sea_gradual"]
    data = rows(case, 3000, 3000, seed=3)
    new = [y == sea_label(x, 9.5) and y != sea_label(x, 8.0) for x, y in data]
    assert sum(new[:1500]) <= 2 and sum(new[-1000:]) > 80  # old concept first, new one at the end
    assert case.transition(3000) == (2000, 4000)
    assert rows(case, 3000, 3000, seed=3) == data  # seeded


def test_specs_load_and_have_no_online_features() -> None:
    for case in CASES.values():
        spec = load_spec(case.spec)
        assert spec.features == () and spec.rollout.enabled is False
        assert spec.retrain.primary_metric == "accuracy"


# -- prequential accounting --------------------------------------------------------------------
class _Memory:
    """Predicts the last label it learned; records what it learned when."""

    def __init__(self) -> None:
        self.last: bool | None = None
        self.learned: list[int] = []

    def predict_one(self, x: dict[str, float]) -> bool | None:
        return self.last

    def learn_one(self, x: dict[str, float], y: bool) -> None:
        self.last = y
        self.learned.append(int(x["i"]))


def test_prequential_learns_each_label_delay_events_late() -> None:
    data = [({"i": float(i)}, i >= 5) for i in range(10)]
    learner = _Memory()
    correct = cm.prequential(learner, data, delay=3)
    # event i is predicted having learned labels up to i - 3: right except the untrained
    # start (None counts as False: right for labels False) and events 5..7 after the flip
    assert correct == [True, True, True, True, True, False, False, False, True, True]
    assert learner.learned == list(range(8))  # the last delay - 1 labels are never needed


def test_rolling_and_accuracy_skip_unanswered_events() -> None:
    correct = [True, False, None, True, True]
    assert cm.accuracy(correct) == 0.75
    assert cm.accuracy(correct, 2, 5) == 1.0
    assert cm.rolling(correct, 2) == [1.0, 0.5, 0.0, 1.0, 1.0]
    assert cm.accuracy([None, None]) is None


def test_recovery_counts_until_back_and_staying_within_tolerance() -> None:
    pre = [True] * 100
    dip = [False] * 30
    back = [True] * 200
    correct = pre + dip + back
    # window 20: the trailing window ending at event 149 (130..149) is the first clean one
    assert cm.recovery(correct, 100, 1.0, 20, 0.02) == 30 + 20 - 1
    assert cm.recovery(pre + back, 100, 1.0, 20, 0.02) == 0  # never left
    assert cm.recovery(pre + dip, 100, 1.0, 20, 0.02) is None  # never came back
    assert cm.recovery(correct, 100, None, 20, 0.02) is None


def test_phases_split_before_transition_after() -> None:
    correct = [True] * 10 + [False] * 4 + [True, False] * 3
    ph = cm.phases(correct, 10, 14, pre=5, steady=4)
    assert ph == {"before": 1.0, "after": 0.5, "transition": 0.0, "after_last": 0.5}


# -- incidents and swaps -----------------------------------------------------------------------
def _served() -> list[cm.Served]:
    out = []
    for i in range(100):
        t = 100.0 + i * 0.1
        version = 1 if t < 106.0 else 2
        ok = i != 70
        out.append(cm.Served(i, t, t + 0.01, version if ok else None, True if ok else None))
    return out


def test_incident_to_serving_uses_the_promotion_named_by_the_trigger() -> None:
    alerts = [{"alert_id": "a1", "incident_id": "inc1", "kind": "concept_drift", "model_version": 1,
               "detected_at": 103.0, "status": "opened"},
              {"alert_id": "a2", "incident_id": "inc1", "kind": "concept_drift", "model_version": 1,
               "detected_at": 104.0, "status": "updated"}]
    models = [{"event": "registered", "version": 2, "created_at": 105.9, "trigger": "drift:inc1"},
              {"event": "promoted", "version": 2, "created_at": 105.9, "trigger": "drift:inc1"}]
    [inc] = cm.incidents(alerts, models, _served())
    assert inc["answered_by_trigger"] and inc["promoted_version"] == 2
    assert inc["first_served_index"] == 60
    assert inc["detect_to_serving_s"] == pytest.approx(106.0 + 0.01 - 103.0)


def test_swaps_list_each_new_version_with_nearby_failures() -> None:
    [swap] = cm.swaps(_served(), around_s=2.0)
    assert (swap["from"], swap["to"], swap["index"]) == (1, 2, 60)
    assert swap["failed_nearby"] == 1  # request 70, sent 1 s after the swap
    assert cm.swaps(_served(), around_s=0.5)[0]["failed_nearby"] == 0
    assert cm.served_correct(_served(), [True] * 100)[70] is None


# -- report shape ------------------------------------------------------------------------------
def test_analyse_report_shape_and_plot(tmp_path: Path) -> None:
    case = CASES["sea_abrupt"]
    data = rows(case, 600, 600, seed=1)
    spec = load_spec(case.spec)
    args = argparse.Namespace(before=600, label_delay=50, seed=1, no_arf=True, window=100, tolerance=0.02)
    # (c): v1 (trained on the old concept) until event 900, then v2 trained on the new one
    v1 = modeling.train(spec, data[:300])
    v2 = modeling.train(spec, data[600:900])
    served = []
    for i, (x, _) in enumerate(data):
        m, v = (v1, 1) if i < 900 else (v2, 2)
        served.append(cm.Served(i, 1000.0 + i / 100, 1000.0 + i / 100 + 0.005, v, modeling.score(m, x, spec) >= 0.5))
    alerts = [{"alert_id": "a", "incident_id": "i1", "kind": "concept_drift", "model_version": 1,
               "detected_at": 1007.5, "status": "opened"}]
    models = [{"event": "promoted", "version": 1, "created_at": 999.0, "trigger": "bootstrap", "artifact_b64": "v1"},
              {"event": "promoted", "version": 2, "created_at": 1008.95, "trigger": "drift:i1", "artifact_b64": "v2"}]
    st = analyse(case, data, served, alerts, models, args, load=lambda ev: {"v1": v1, "v2": v2}[ev["artifact_b64"]])
    assert st["static_model"] == "Rivulet v1 (champion at the change, never retrained)"
    assert st["accuracy"]["static"]["before"] == st["accuracy"]["rivulet"]["before"]  # same model, same answers
    assert set(st["accuracy"]) == {"static", "online_hat", "rivulet"}
    assert st["accuracy"]["rivulet"]["after"] > st["accuracy"]["static"]["after"] + 0.05
    assert st["targets"]["c_far_above_static"] is True
    assert st["first_new_model_event_after_change"] == 300
    assert st["incident_to_serving_s"] == pytest.approx(1009.005 - 1007.5)
    assert st["targets"]["incident_to_serving_le_30s"] and st["targets"]["zero_failed_during_swaps"]
    assert st["recovery_events"]["rivulet"] is not None and st["recovery_events"]["rivulet"] >= 300
    assert len(st["series"]["rivulet"]) == 1200 // st["series_step"]
    report = {"streams": {"sea_abrupt": st}}
    json.dumps(report)  # serialisable
    assert any("sea_abrupt" in line for line in summary_lines(report))
    png = plot(report, tmp_path / "c.png")
    assert png is not None and png.stat().st_size > 10_000


def test_gradual_recovery_counts_from_the_end_too_and_reports_the_oracle() -> None:
    case = CASES["sea_gradual"]
    data = rows(case, 3000, 3000, seed=3)
    start, end = case.transition(3000)
    args = argparse.Namespace(window=500, tolerance=0.02, label_delay=200)
    assert case.concepts is not None
    oracle = [case.concepts(x, i >= 3000) == y for i, (x, y) in enumerate(data)]
    acc = {"rivulet": cm.phases(oracle, start, end, 1000, 2000)}
    out = gradual_recovery(case, data, {"rivulet": oracle}, acc, start, end, args)
    assert out is not None
    ref = out["majority_oracle"]
    # even the oracle's trailing accuracy needs most of the transition to be back ...
    assert ref["recovery_events_from_start"] > (end - start) // 2
    assert ref["recovery_events_from_end"] == ref["recovery_events_from_start"] - (end - start)
    # ... and a series identical to it recovers exactly as it does
    assert out["from_transition_end_events"]["rivulet"] == ref["recovery_events_from_end"]
    assert out["from_transition_end_labels"]["rivulet"] == max(0, ref["recovery_events_from_end"] - 200)
    abrupt = CASES["sea_abrupt"]
    assert gradual_recovery(abrupt, data, {"rivulet": oracle}, acc, 3000, 3000, args) is None


def test_gradual_recovery_from_the_centre_sits_between_start_and_end_readings() -> None:
    case = CASES["sea_gradual"]
    data = rows(case, 3000, 3000, seed=3)
    start, end = case.transition(3000)
    centre = (start + end) // 2
    assert centre == 3000  # River's ConceptDriftStream ``position``
    args = argparse.Namespace(window=500, tolerance=0.02, label_delay=200)
    assert case.concepts is not None
    oracle = [case.concepts(x, i >= centre) == y for i, (x, y) in enumerate(data)]
    acc = {"rivulet": cm.phases(oracle, start, end, 1000, 2000)}
    out = gradual_recovery(case, data, {"rivulet": oracle}, acc, start, end, args)
    assert out is not None
    ref = out["majority_oracle"]
    # same method, counted from a point half a transition later than the start
    assert ref["recovery_events_from_centre"] == ref["recovery_events_from_start"] - (centre - start)
    assert out["from_transition_centre_events"]["rivulet"] == ref["recovery_events_from_centre"]
    assert out["from_transition_centre_labels"]["rivulet"] == max(0, ref["recovery_events_from_centre"] - 200)
    # a series that never recovers has no reading from the centre either
    never = [i < start for i in range(len(data))]
    miss = gradual_recovery(case, data, {"rivulet": never}, {"rivulet": cm.phases(never, start, end, 1000, 2000)},
                            start, end, args)
    assert miss is not None and miss["from_transition_centre_labels"]["rivulet"] is None


def test_quick_flag_shortens_the_run() -> None:
    args = parse(["--quick", "--streams", "sea_abrupt"])
    assert (args.before, args.after) == (3000, 3000)
    assert parse([]).before == 6000


def _section(centre_labels: int | None, end_labels: int | None) -> dict:
    acc = {"before": 0.99, "after": 0.98, "transition": 0.93, "after_last": 0.99}
    return {"accuracy": {"static": dict(acc, after=0.88), "online_arf": acc, "rivulet": acc},
            "recovery_labels": {"rivulet": 3400}, "incident_to_serving_s": None, "swaps": [], "failed_requests": 0,
            "recovery_gradual": {"from_transition_end_labels": {"rivulet": end_labels},
                                 "from_transition_centre_labels": {"rivulet": centre_labels}}}


def test_targets_read_the_gradual_recovery_from_the_centre() -> None:
    ok = targets(_section(1999, 999), 3)
    assert ok["recovery_labels_from_transition_centre_le_2000"] is True
    assert ok["recovery_labels_le_2000"] is False  # the strict (start) reading is kept as is
    assert targets(_section(2438, 1438), 3)["recovery_labels_from_transition_centre_le_2000"] is False
    assert targets(_section(None, None), 3)["recovery_labels_from_transition_centre_le_2000"] is False
    abrupt = dict(_section(None, None), recovery_gradual=None)
    assert targets(abrupt, 3)["recovery_labels_from_transition_centre_le_2000"] is None
