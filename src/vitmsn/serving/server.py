"""``vitmsn serve``: an HTTP server on the runtime's micro-batching Predictor.

Starlette (routing, requests, responses) on uvicorn (the ASGI server: HTTP parsing, keep-alive,
signal handling and graceful shutdown), both widely used and maintained; prometheus-client for
the metrics. Endpoints:

    POST /predict[?top_k=K]  body: one encoded image (JPEG, PNG, ...) -> 200 {"predictions": [...]}
    GET  /healthz            200 {"status": "ok", ...} once the model is loaded
    GET  /metrics            Prometheus text format (see vitmsn.serving.metrics)

Errors are JSON ``{"error": "..."}``: 400 empty, undecodable or corrupt image, bad ``top_k``;
413 body over ``max_body_bytes``; 404/405 unknown path or method; 503 queue full, or already
``max_queue`` requests being received and decoded (with ``Retry-After``); 504 no result within
``request_timeout_s``; 500 an inference failure. A bad
request fails only itself: decoding happens per request, before the image joins a batch.

Data path: the request body is read (bounded) on the event loop; ``MicroBatcher.submit`` decodes
and preprocesses it in a worker thread (Pillow releases the GIL), the image waits in the bounded
queue for a batch, and the handler awaits its future. On SIGTERM/SIGINT uvicorn stops accepting
connections and lets in-flight requests finish (up to ``shutdown_timeout_s``); then the batcher is
drained and closed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

import anyio.to_thread
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from vitmsn.errors import InputError
from vitmsn.runtime.batching import BatcherClosed, QueueFull

from .metrics import MetricsMiddleware, ServerMetrics

log = logging.getLogger("vitmsn.serve")

MAX_TOP_K = 100  # the most classes one response ranks


@dataclass(frozen=True)
class ServeOptions:
    top_k: int = 5  # predictions per image unless the request asks (?top_k=K)
    max_batch: int | None = None  # images per inference batch [default: the Predictor's batch size]
    max_wait_ms: float = 5.0  # how long a batch waits to fill after its first image
    max_queue: int = 64  # images waiting for a batch before requests get 503
    max_body_bytes: int = 10 * 1024 * 1024
    request_timeout_s: float = 30.0
    shutdown_timeout_s: float = 30.0
    decode_threads: int | None = None  # threads decoding request images [default: half the CPU cores]
    access_log: bool = False

    def __post_init__(self) -> None:
        checks = [("--top-k", self.top_k >= 1), ("--max-wait-ms", self.max_wait_ms >= 0),
                  ("--max-queue", self.max_queue >= 1), ("--max-body-bytes", self.max_body_bytes >= 1),
                  ("--max-batch", self.max_batch is None or self.max_batch >= 1),
                  ("--request-timeout", self.request_timeout_s > 0), ("--shutdown-timeout", self.shutdown_timeout_s >= 0),
                  ("--decode-threads", self.decode_threads is None or self.decode_threads >= 1)]
        for option, ok in checks:
            if not ok:
                raise InputError(f"{option}: out of range ({self})")


class RequestError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.headers = status, headers


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing more than ``limit`` bytes with 413.

    An oversized body is still read and discarded (up to 4x the limit) before answering, so an
    ordinary client that sends it all before reading the response gets the 413 and not a reset
    connection; beyond that the connection is closed.
    """
    declared = request.headers.get("content-length")
    too_big = f"request body over the {limit}-byte limit; send one encoded image of at most {limit} bytes"
    close = {"Connection": "close"}
    drain_cap = 4 * limit + (1 << 20)
    if declared is not None:
        if not declared.isdigit():
            raise RequestError(400, f"Content-Length {declared!r} is not a number", close)
        if int(declared) > drain_cap:
            raise RequestError(413, too_big, close)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > drain_cap:
            break
        if size <= limit:
            chunks.append(chunk)
    if size > limit:
        raise RequestError(413, too_big, close)
    if size == 0:
        raise RequestError(400, "empty request body; send the encoded image (JPEG, PNG, ...) as the body")
    return b"".join(chunks)


def _top_k(request: Request, default: int, most: int) -> int:
    raw = request.query_params.get("top_k")
    if raw is None:
        return min(default, most)
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise RequestError(400, f"top_k={raw!r}: must be an integer from 1 to {most}")
    return int(raw)


def create_app(predictor: Any, options: ServeOptions = ServeOptions(),
               metrics: ServerMetrics | None = None) -> Starlette:
    """The ASGI app serving ``predictor`` (a :class:`vitmsn.runtime.Predictor`, not closed here)."""
    manifest = predictor.manifest
    logits = next((o for o in manifest.data["outputs"] if o["name"] == "logits"), None)
    if logits is None:
        raise InputError(f"{manifest.root}: a {manifest.task} model has no logits; vitmsn serve answers /predict "
                         "with class labels and needs an image-classification export")
    metrics = metrics or ServerMetrics()
    most = max(1, min(int(logits["shape"][-1]), MAX_TOP_K))
    metrics.model_info.labels(str(predictor.manifest.data["model"].get("source", predictor.manifest.root)),
                              predictor.backend, predictor.precision).set(1)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        batcher = predictor.batcher("predict", top_k=most, max_batch=options.max_batch,
                                    max_wait_ms=options.max_wait_ms, max_queue=options.max_queue)
        # Batch sizes and times for the metrics: the batcher calls its run_batch attribute per batch.
        batcher.run_batch = metrics.observe_batches(batcher.run_batch)
        metrics.queue_depth.set_function(lambda: batcher.queue_depth)
        # Decoding runs in its own small pool (half the cores by default), not anyio's 40-thread pool:
        # more decoders only contend with the inference threads (measured: benchmarks/serve_throughput.py).
        workers = options.decode_threads or max(1, (os.cpu_count() or 2) // 2)
        decoders = ThreadPoolExecutor(workers, thread_name_prefix="vitmsn-decode")
        app.state.batcher, app.state.decoders = batcher, decoders
        app.state.ready = True
        log.info("serving %s (%s), max batch %d, max wait %.1f ms", predictor.manifest.root, predictor.describe(),
                 batcher.max_batch, options.max_wait_ms)
        try:
            yield
        finally:
            app.state.ready = False
            # uvicorn has let in-flight requests finish; anything still queued is run, then the worker stops.
            await anyio.to_thread.run_sync(batcher.close)
            decoders.shutdown(wait=False)

    # Requests between arrival and joining the batcher's queue (reading the body, waiting for a
    # decoder). Bounded like the queue, so a flood of uploads cannot hold unbounded memory.
    admitted = 0

    async def predict(request: Request) -> Response:
        nonlocal admitted
        try:
            top_k = _top_k(request, options.top_k, most)
            if request.headers.get("content-type", "").lower().startswith("multipart/"):
                raise RequestError(400, "send the raw image bytes (Content-Type: image/*), not multipart/form-data; "
                                        "e.g. curl --data-binary @image.jpg -H 'Content-Type: image/jpeg' .../predict")
            if admitted >= options.max_queue:
                raise RequestError(503, f"{admitted} requests are already being received and decoded; retry later",
                                   {"Retry-After": "1"})
            admitted += 1
            try:
                body = await read_body(request, options.max_body_bytes)
                state = request.app.state
                future = await asyncio.get_running_loop().run_in_executor(state.decoders, state.batcher.submit, body)
            except QueueFull as exc:
                raise RequestError(503, str(exc), {"Retry-After": "1"}) from None
            except BatcherClosed:
                raise RequestError(503, "the server is shutting down; retry on another instance") from None
            finally:
                admitted -= 1
            try:
                ranked = await asyncio.wait_for(asyncio.wrap_future(future), options.request_timeout_s)
            except InputError as exc:  # ImageError: undecodable, corrupt or refused image
                raise RequestError(400, str(exc)) from None
            except asyncio.TimeoutError:
                raise RequestError(504, f"no result within {options.request_timeout_s:g} s; the server is overloaded") from None
        except RequestError as exc:
            return error_response(exc.status, str(exc), exc.headers)
        except Exception as exc:  # an inference failure: this batch's requests get 500, the server keeps serving
            log.exception("inference failed")
            return error_response(500, f"inference failed: {type(exc).__name__}: {exc}")
        return JSONResponse({"predictions": [p.to_dict() for p in ranked[:top_k]]})

    async def healthz(request: Request) -> Response:
        if not getattr(request.app.state, "ready", False):
            return JSONResponse({"status": "unavailable"}, status_code=503)
        batcher = request.app.state.batcher
        return JSONResponse({"status": "ok", "model": str(predictor.manifest.root), "backend": predictor.backend,
                             "precision": predictor.precision, "max_batch": batcher.max_batch,
                             "queue_depth": batcher.queue_depth})

    async def metrics_endpoint(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return error_response(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(500, f"internal error: {type(exc).__name__}")

    routes = [Route("/predict", predict, methods=["POST"]), Route("/healthz", healthz, methods=["GET"]),
              Route("/metrics", metrics_endpoint, methods=["GET"])]
    app = Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(MetricsMiddleware, metrics=metrics)],
                    exception_handlers={HTTPException: http_error, Exception: server_error})
    app.state.metrics = metrics
    return app


def bind_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket (``port`` 0: an ephemeral port); uvicorn listens on it."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise InputError(f"--host {host}: cannot be resolved ({exc})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise InputError(f"--host {host} --port {port}: cannot listen there ({exc.strerror})") from None
    return sock


def serve(app: Starlette, sock: socket.socket, options: ServeOptions = ServeOptions(),
          log_level: str = "info", on_ready: Callable[[], None] | None = None) -> list[int]:
    """Run uvicorn on ``sock`` until SIGTERM/SIGINT; return after the graceful shutdown.

    Returns the stop signals received. (uvicorn re-raises a captured signal after its shutdown so
    that the default action runs; here the handlers installed around it record it instead, so the
    caller can release the model and exit normally.)
    """
    import uvicorn

    config = uvicorn.Config(app, lifespan="on", log_level=log_level, access_log=options.access_log,
                            timeout_graceful_shutdown=options.shutdown_timeout_s, server_header=False)
    server = uvicorn.Server(config)

    async def run() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.02)
        if server.started and on_ready is not None:
            on_ready()
        await task

    received: list[int] = []
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, lambda s, _f: received.append(s)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        asyncio.run(run())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return received
