"""Prometheus metrics of ``vitmsn serve`` (prometheus-client), one registry per app.

    vitmsn_http_requests_total{method, path, status}     every response, by status code
    vitmsn_http_request_duration_seconds{path}           latency histogram, request in -> response sent
    vitmsn_http_requests_in_flight                       requests being handled now
    vitmsn_batch_size                                    images per inference batch (histogram)
    vitmsn_batch_duration_seconds                        inference time per batch (histogram)
    vitmsn_queue_depth                                   images waiting for a batch
    vitmsn_model_info{model, backend, precision}         1, labelled with what is served
    vitmsn_http_incomplete_requests_total{reason}        requests whose head or body never fully arrived:
        header_timeout (408 or closed), body_timeout (408), aborted (client disconnected; 400)

The HTTP figures come from an ASGI middleware, so 404s, 405s and 413s are counted as well.
"""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PATHS = ("/predict", "/healthz", "/metrics")  # any other path is counted as "other" (bounded label set)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("vitmsn_http_requests", "HTTP responses by method, path and status code.",
                                ["method", "path", "status"], registry=r)
        self.latency = Histogram("vitmsn_http_request_duration_seconds", "HTTP request latency (request in to response sent).",
                                 ["path"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("vitmsn_http_requests_in_flight", "HTTP requests being handled.", registry=r)
        self.batch_size = Histogram("vitmsn_batch_size", "Images per inference batch.", buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("vitmsn_batch_duration_seconds", "Inference time per batch.",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("vitmsn_queue_depth", "Images waiting in the micro-batcher's queue.", registry=r)
        self.incomplete = Counter("vitmsn_http_incomplete_requests",
                                  "Requests whose head or body never fully arrived, by reason "
                                  "(header_timeout, body_timeout, aborted).", ["reason"], registry=r)
        for reason in ("header_timeout", "body_timeout", "aborted"):
            self.incomplete.labels(reason)  # exported at 0 from the start
        self.model_info = Gauge("vitmsn_model_info", "The model being served (value 1).",
                                ["model", "backend", "precision"], registry=r)

    def observe_batches(self, run_batch: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """``run_batch`` wrapped to record each batch's size and inference time."""
        def observed(x: Any) -> Any:
            start = time.perf_counter()
            try:
                return run_batch(x)
            finally:
                self.batch_seconds.observe(time.perf_counter() - start)
                self.batch_size.observe(len(x))

        return observed


Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class MetricsMiddleware:
    """Pure ASGI middleware (no per-request task or body buffering) counting every HTTP response."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], metrics: ServerMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"] if scope["path"] in PATHS else "other"
        status = 500  # what the client gets when the app raises before starting a response
        start = time.perf_counter()

        async def send_observed(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_observed)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(scope["method"], path, str(status)).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - start)
