"""JSON-schema snapshots of every topic contract.

A change to a contract changes its schema; this test makes that change visible in review.
Regenerate deliberately with ``RIVULET_UPDATE_SNAPSHOTS=1 python3 run.py test tests/contract``.
Public topics must only ever gain optional fields (backward compatible for consumers).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from shared.contracts import event_model
from shared.spec import load_spec
from shared.topics import CATALOG, Topic

SNAPSHOTS = Path(__file__).parent / "schemas"


def schema_of(topic: Topic) -> dict:
    model = topic.contract or event_model(load_spec())
    return model.model_json_schema()


@pytest.mark.parametrize("topic", CATALOG, ids=[t.name for t in CATALOG])
def test_contract_matches_snapshot(topic: Topic) -> None:
    path = SNAPSHOTS / f"{topic.name}.json"
    current = schema_of(topic)
    if os.environ.get("RIVULET_UPDATE_SNAPSHOTS") == "1" or not path.exists():
        path.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    assert json.loads(path.read_text()) == current, f"{topic.name} contract changed; see module docstring"


@pytest.mark.parametrize("topic", CATALOG, ids=[t.name for t in CATALOG])
def test_every_contract_has_schema_version(topic: Topic) -> None:
    assert "schema_version" in schema_of(topic)["properties"]


def test_public_required_fields_are_stable() -> None:
    """The v1 public contract from the README: these required fields never go away."""
    required = {
        "events.raw": {"event_id", "entity_id", "event_time", "amount", "merchant_category", "country", "channel"},
        "labels.raw": {"prediction_id", "label", "event_time"},
        "drift.alerts": {"alert_id", "kind", "model_version", "feature", "test", "statistic", "threshold",
                         "window", "detected_at"},
    }
    by_name = {t.name: t for t in CATALOG}
    for name, fields in required.items():
        assert fields <= set(schema_of(by_name[name]).get("required", [])), name
