"""Prometheus metrics for serving, on a registry per app (tests run several apps in one process).

Labels stay bounded: the endpoint label is the route template (unknown paths -> "unmatched"),
the model version is whatever served the request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

Scope = dict[str, Any]
ASGIApp = Callable[..., Any]

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LAG_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("endpoint", "method", "status", "model_version")
        self.requests = Counter("rivulet_serving_requests", "HTTP requests served", labels,
                                registry=self.registry)
        self.latency = Histogram("rivulet_serving_request_latency_seconds", "HTTP request latency",
                                 ("endpoint", "model_version"), buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.queue_depth = Gauge("rivulet_serving_prediction_log_queue_depth",
                                 "prediction records not yet acknowledged by Kafka (queued + in flight)", registry=self.registry)
        self.dropped = Counter("rivulet_serving_prediction_log_dropped",
                               "prediction records dropped (queue_full / shutdown)", ("reason",),
                               registry=self.registry)
        self.degraded = Counter("rivulet_serving_degraded", "predictions answered degraded", ("reason",),
                                registry=self.registry)
        self.fetch_latency = Histogram("rivulet_serving_feature_fetch_latency_seconds",
                                       "online feature read (one Redis round trip per request)",
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        self.loop_lag = Histogram("rivulet_serving_event_loop_lag_seconds",
                                  "how late a 10 ms ticker on the event loop wakes up: time every request "
                                  "waiting on the loop lost to other work (GC, CPU starvation, long callbacks)",
                                  buckets=LAG_BUCKETS, registry=self.registry)
        self.gc_pause = Histogram("rivulet_serving_gc_pause_seconds", "cyclic garbage-collector pauses",
                                  ("generation",), buckets=LAG_BUCKETS, registry=self.registry)
        self.model_version = Gauge("rivulet_serving_model_version", "champion version being served",
                                   registry=self.registry)

    def observe(self, endpoint: str, method: str, status: int, version: int, seconds: float) -> None:
        v = str(version)
        self.requests.labels(endpoint, method, str(status), v).inc()
        self.latency.labels(endpoint, v).observe(seconds)


class MetricsMiddleware:
    """Pure ASGI (cheaper than BaseHTTPMiddleware): times every HTTP request.

    The model version is the one the handler stored in ``scope["state"]["model_version"]``
    (what actually scored), else the current champion's.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, current_version: Callable[[], int]) -> None:
        self.app = app
        self.metrics = metrics
        self.current_version = current_version

    async def __call__(self, scope: Scope, receive: ASGIApp, send: ASGIApp) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            version = scope.get("state", {}).get("model_version", self.current_version())
            self.metrics.observe(endpoint, scope.get("method", ""), status, version,
                                 time.perf_counter() - started)
