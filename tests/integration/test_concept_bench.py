"""Smoke test of the concept benchmark: a short SEA stream through the real services.

Checks the harness's plumbing (every event answered, every label sent, the loop's model
events read back, a serialisable report with a plot), not the loop's accuracy or timing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from loadtests.concept import run_stream
from loadtests.concept_plot import plot
from loadtests.concept_streams import CASES


def test_short_sea_stream_through_the_services(tmp_path: Path) -> None:
    args = argparse.Namespace(before=900, after=400, rate=100.0, label_delay=100, concurrency=8, window=200,
                              tolerance=0.02, seed=3, settle=3.0, no_arf=True)
    st = asyncio.run(run_stream(CASES["sea_abrupt"], args))
    assert st["events"] == 1300
    assert st["failed_requests"] == 0, st["errors_sample"]
    assert sum(st["versions_served"].values()) == 1300
    assert st["labels_sent"] == 1300
    # min_labels (150) labeled rows arrive long before the end: the bootstrap model v1 is
    # trained and promoted; the champion serving at the change is the static baseline (a)
    promoted = [m for m in st["models"] if m["event"] == "promoted"]
    assert promoted and promoted[0]["trigger"] == "bootstrap", st["models"]
    assert st["targets"]["static_is_rivulet_model"] is True
    assert st["accuracy"]["static"]["before"] > 0.9  # v1 learned the SEA concept
    report = {"streams": {"sea_abrupt": st}}
    json.dumps(report)
    assert plot(report, tmp_path / "c.png") is not None
