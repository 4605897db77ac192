"""Prometheus metrics of the inference server, kept in a registry per app so tests can build many apps."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inference.bundle import BundleMetadata

# Request paths get their own label value; anything else is "other", so scanners cannot blow up cardinality.
KNOWN_PATHS = frozenset({"/predict", "/health", "/ready", "/metadata", "/metrics", "/docs", "/openapi.json"})
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class ServerMetrics:
    """Request counts and latencies, batch sizes and model time, plus the model's identity as an info gauge."""

    def __init__(self, metadata: BundleMetadata) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.requests = Counter(
            "flops_inference_requests", "HTTP requests by path and status", ["path", "status"], registry=self.registry
        )
        self.request_seconds = Histogram(
            "flops_inference_request_duration_seconds",
            "Time from request start to response end",
            ["path"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_rows = Histogram(
            "flops_inference_batch_rows",
            "Rows per accepted /predict request",
            buckets=_ROW_BUCKETS,
            registry=self.registry,
        )
        self.model_seconds = Histogram(
            "flops_inference_model_duration_seconds",
            "Time of the model's forward pass per request",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ready = Gauge("flops_inference_ready", "1 once the model is loaded", registry=self.registry)
        info = Gauge(
            "flops_inference_model_info",
            "The served model (value is always 1)",
            ["model_name", "model_version", "run_id", "source_commit"],
            registry=self.registry,
        )
        info.labels(
            metadata.model_name or "", metadata.model_version or "", metadata.run_id or "", metadata.source_commit or ""
        ).set(1)


class MetricsMiddleware:
    """Pure ASGI middleware (no per-request task like BaseHTTPMiddleware) counting every HTTP response."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"] if scope["path"] in KNOWN_PATHS else "other"
        started = time.perf_counter()
        status: dict[str, Any] = {"code": 500}

        async def send_recording_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_recording_status)
        finally:
            self.metrics.requests.labels(path, str(status["code"])).inc()
            self.metrics.request_seconds.labels(path).observe(time.perf_counter() - started)
