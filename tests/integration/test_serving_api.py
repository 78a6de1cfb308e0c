"""The HTTP API of a real serving process: /predict/batch, API keys, stale features, and a
schemathesis run over the OpenAPI spec (no 5xx for anything the spec allows or not)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from hypothesis import strategies as st

from services.serving.handlers import STALE_FEATURES
from shared.embedded import free_port
from tests.helpers import Stack, wait_for
from tests.integration.test_serving import SECRET, sample, write_features

KEY = "k-test-1"


def _spawn(stack: Stack, **env: Any) -> str:
    port = free_port()
    stack.spawn("services.serving", RIVULET_SERVING_PORT=port, RIVULET_SERVING_REDIS_TIMEOUT_S=2,
                RIVULET_MODEL_SECRET=SECRET, **env)
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: _status(base + "/ready") == 200, timeout=30, what="serving /ready")
    return base


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0


def test_batch_auth_and_stale_features(stack: Stack) -> None:
    now = time.time()
    write_features(stack.redis.url, "fresh", {"txn_count_5m": 2.0}, now - 5)
    write_features(stack.redis.url, "stale", {"txn_count_5m": 9.0}, now - 3600)
    base = _spawn(stack, RIVULET_SERVING_API_KEYS=f"{KEY}, other-key", RIVULET_SERVING_MAX_FEATURE_AGE_S=600,
                  RIVULET_SERVING_BATCH_MAX_ITEMS=50)
    one = {"entity_id": "fresh", "features": {"amount": 40.0}}
    with httpx.Client(base_url=base, timeout=10) as anon:
        assert anon.get("/health").status_code == 200
        for headers in ({}, {"x-api-key": "wrong"}, {"authorization": f"Basic {KEY}"}):
            resp = anon.post("/predict", json=one, headers=headers)
            assert resp.status_code == 401 and resp.json()["detail"][0]["loc"] == ["header", "x-api-key"]
        assert anon.get("/models").status_code == 401 and anon.get("/metrics").status_code == 401
        assert anon.post("/predict", json=one, headers={"authorization": "Bearer other-key"}).status_code == 200
        spec = anon.get("/openapi.json").json()
        assert spec["components"]["securitySchemes"]["ApiKey"]["name"] == "x-api-key"

    with httpx.Client(base_url=base, timeout=10, headers={"x-api-key": KEY}) as client:
        singles = [client.post("/predict", json={"entity_id": e, "features": {"amount": 40.0}}).json()
                   for e in ("fresh", "stale", "unknown")]
        assert singles[0]["degraded"] == [] and 4 < singles[0]["feature_age_s"] < 120
        assert singles[1]["degraded"] == [STALE_FEATURES] and singles[1]["feature_age_s"] > 3500
        assert singles[2]["degraded"] == [] and singles[2]["feature_age_s"] is None

        items = [{"entity_id": e, "features": {"amount": 40.0}} for e in ("fresh", "stale", "unknown")]
        batch = client.post("/predict/batch", json={"items": items})
        assert batch.status_code == 200, batch.text
        results = batch.json()["items"]
        assert [r["entity_id"] for r in results] == ["fresh", "stale", "unknown"]
        for single, result in zip(singles, results):  # same inputs, same model: same answer
            assert result["score"] == single["score"] and result["degraded"] == single["degraded"]
            assert result["prediction_id"] != single["prediction_id"]

        bad = client.post("/predict/batch", json={"items": [items[0], {"entity_id": "x", "features": {"amount": -3}}]})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["items", 1, "features", "amount"]
        too_many = client.post("/predict/batch", json={"items": [items[0]] * 51})
        assert too_many.status_code == 422 and too_many.json()["detail"][0]["loc"] == ["items"]

        metrics = client.get("/metrics").text
        assert sample(metrics, "rivulet_serving_feature_fetch_latency_seconds_count") == 4.0 + 1.0
        assert sample(metrics, "rivulet_serving_degraded_total", reason=STALE_FEATURES) == 2.0
        assert sample(metrics, "rivulet_serving_event_loop_lag_seconds_count") > 0  # the ticker runs
        assert sample(metrics, "rivulet_serving_requests_total", endpoint="/predict/batch", method="POST",
                      status="200", model_version="0") == 1.0


def test_schemathesis_finds_no_server_errors(stack: Stack) -> None:
    """Generated requests (valid and invalid) against every operation of the OpenAPI spec."""
    base = _spawn(stack, RIVULET_SERVING_API_KEYS=KEY, RIVULET_SERVING_BATCH_MAX_ITEMS=20)
    schema = schemathesis.openapi.from_dict(httpx.get(base + "/openapi.json", timeout=5).json())
    operations = [op.ok() for op in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/predict", "/predict/batch", "/models", "/health"}
    seen: dict[int, int] = {}
    per_case = max(4, int(os.environ.get("RIVULET_SCHEMATHESIS_EXAMPLES", "60")) // len(operations))

    def run(op: Any, mode: Any) -> None:
        """Every operation in both modes (valid and invalid data), so none is left out by chance."""
        @settings(max_examples=per_case, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=op.as_strategy(generation_mode=mode), anonymous=st.integers(0, 4))
        def check(case: Any, anonymous: int) -> None:
            headers = {} if anonymous == 4 else {"x-api-key": KEY}
            response = case.call(base_url=base, headers=headers)
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            assert response.status_code < 500, (op.path, case.body, response.text[:300])

        try:
            check()
        except Unsatisfiable:  # no invalid request exists for an operation without inputs
            assert mode == schemathesis.GenerationMode.NEGATIVE and op.method.upper() == "GET", op.path

    for op in operations:
        for mode in schemathesis.GenerationMode:
            run(op, mode)
    print("schemathesis statuses:", seen)
    assert {200, 401, 422} <= set(seen), seen  # valid, invalid and unauthenticated were all tried
    for proc in stack.procs:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, stack.logs()
