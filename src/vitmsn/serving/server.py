"""``vitmsn serve``: an HTTP server on the runtime's micro-batching Predictor.

Starlette (routing, requests, responses) on uvicorn (the ASGI server: HTTP parsing, keep-alive,
signal handling and graceful shutdown), both widely used and maintained; prometheus-client for
the metrics. Endpoints:

    POST /predict[?top_k=K]  body: one encoded image (JPEG, PNG, ...) -> 200 {"predictions": [...]}
    GET  /healthz            200 {"status": "ok", ...} once the model is loaded
    GET  /metrics            Prometheus text format (see vitmsn.serving.metrics)

Errors are JSON ``{"error": "..."}``: 400 empty, undecodable, corrupt or over-budget image, bad
``top_k``, upload aborted by the client; 408 request head not received within
``header_timeout_s`` or body not received within ``body_timeout_s``; 413 body over
``max_body_bytes``; 404/405 unknown path or method; 503 queue full, ``max_queue`` requests already
being decoded, or the bytes of bodies still arriving over ``max_receiving_bytes`` (with
``Retry-After``); 504 no result within ``request_timeout_s``; 500 an inference failure. A bad
request fails only itself: decoding happens per request, before the image joins a batch.

Slow and hostile clients: a request is admitted (counted against ``max_queue``) only once its
whole body has arrived, so clients that announce a body and stall hold no admission slot; they
hold only the bytes they really sent (bounded by ``max_receiving_bytes`` across all uploads) and
only until ``body_timeout_s``, when they get 408. A client that disconnects mid-upload is counted
as 400. Both are logged on one line, without a traceback, and counted in
``vitmsn_http_incomplete_requests_total{reason}``. ``/healthz`` answers 503 while a new request
would be refused for load.

Data path: the request body is read (bounded in size and time) on the event loop;
``MicroBatcher.submit`` decodes and preprocesses it in a worker thread (Pillow releases the GIL;
images whose decoded raster would exceed ``max_decode_bytes`` are refused from their header), the
image waits in the bounded queue for a batch, and the handler awaits its future. On SIGTERM/SIGINT
uvicorn stops accepting connections, closes idle ones and lets in-flight requests finish (up to
``shutdown_timeout_s``; a stalled upload ends at its body timeout); then the batcher is drained and
closed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
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
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from vitmsn.core.errors import InputError
from vitmsn.runtime.batching import BatcherClosed, QueueFull
from vitmsn.runtime.images.read import DEFAULT_MAX_DECODE_BYTES

from .http_timeouts import header_timeout_protocol
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
    header_timeout_s: float = 10.0  # request line and headers must arrive within this (408 after)
    body_timeout_s: float = 30.0  # the whole body must arrive within this once the headers have (408 after)
    max_receiving_bytes: int = 256 * 1024 * 1024  # bytes of bodies still arriving, all uploads together (503 above)
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES  # decoded raster per image, from its header (400 above)

    def __post_init__(self) -> None:
        checks = [("--top-k", self.top_k >= 1), ("--max-wait-ms", self.max_wait_ms >= 0),
                  ("--max-queue", self.max_queue >= 1), ("--max-body-bytes", self.max_body_bytes >= 1),
                  ("--max-batch", self.max_batch is None or self.max_batch >= 1),
                  ("--request-timeout", self.request_timeout_s > 0), ("--shutdown-timeout", self.shutdown_timeout_s >= 0),
                  ("--decode-threads", self.decode_threads is None or self.decode_threads >= 1),
                  ("--header-timeout", self.header_timeout_s > 0), ("--body-timeout", self.body_timeout_s > 0),
                  ("--max-receiving-bytes (must be at least --max-body-bytes)", self.max_receiving_bytes >= self.max_body_bytes),
                  ("--max-decode-mb", self.max_decode_bytes >= 1)]
        for option, ok in checks:
            if not ok:
                raise InputError(f"{option}: out of range ({self})")


class RequestError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.headers = status, headers


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class ReceiveBudget:
    """Bytes of request bodies still arriving, over all uploads (the event loop's only: no lock)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.held = limit, 0

    def take(self, n: int) -> bool:
        if self.held + n > self.limit:
            return False
        self.held += n
        return True

    def release(self, n: int) -> None:
        self.held -= n


async def read_body(request: Request, limit: int, timeout_s: float, budget: ReceiveBudget) -> bytes:
    """The whole body, within ``timeout_s`` (408), at most ``limit`` bytes (413).

    An oversized body is still read and discarded (up to 4x the limit) before answering, so an
    ordinary client that sends it all before reading the response gets the 413 and not a reset
    connection; beyond that the connection is closed. A client that disconnects mid-body raises
    :class:`UploadAborted`.
    """
    declared = request.headers.get("content-length")
    too_big = f"request body over the {limit}-byte limit; send one encoded image of at most {limit} bytes"
    close = {"Connection": "close"}
    drain_cap = 4 * limit + (1 << 20)
    if declared is not None:
        if re.fullmatch(r"[0-9]{1,19}", declared, re.ASCII) is None:
            raise RequestError(400, f"Content-Length {declared[:40]!r} is not a number", close)
        if int(declared) > drain_cap:
            raise RequestError(413, too_big, close)
    chunks: list[bytes] = []
    size = held = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > drain_cap:
                    break
                if size <= limit:
                    if not budget.take(len(chunk)):
                        raise RequestError(503, f"the server is receiving {budget.held} bytes of uploads already "
                                                "(its limit); retry later", {**close, "Retry-After": "1"})
                    held += len(chunk)
                    chunks.append(chunk)
    except TimeoutError:
        of = f" of {declared}" if declared is not None else ""
        raise UploadStalled(f"request body not received within {timeout_s:g} s ({size}{of} bytes arrived); "
                            "send the whole body without pausing", size) from None
    except ClientDisconnect:
        of = f" of {declared}" if declared is not None else ""
        raise UploadAborted(f"upload aborted: the client disconnected after {size}{of} bytes", size) from None
    finally:
        budget.release(held)
    if size > limit:
        raise RequestError(413, too_big, close)
    if size == 0:
        raise RequestError(400, "empty request body; send the encoded image (JPEG, PNG, ...) as the body")
    return b"".join(chunks)


class UploadStalled(RequestError):
    def __init__(self, message: str, received: int) -> None:
        super().__init__(408, message, {"Connection": "close"})
        self.received = received


class UploadAborted(RequestError):
    def __init__(self, message: str, received: int) -> None:
        super().__init__(400, message, {"Connection": "close"})
        self.received = received


def _top_k(request: Request, default: int, most: int) -> int:
    """``?top_k=K``: 1 to ``most`` in ASCII digits (no sign, no '²', no 5000-digit numbers)."""
    raw = request.query_params.get("top_k")
    if raw is None:
        return min(default, most)
    if re.fullmatch(r"[0-9]{1,6}", raw, re.ASCII) is None or not 1 <= int(raw) <= most:
        raise RequestError(400, f"top_k={raw[:40]!r}{'...' if len(raw) > 40 else ''}: must be an integer from 1 to {most}")
    return int(raw)


def create_app(predictor: Any, options: ServeOptions = ServeOptions()) -> Starlette:
    """The ASGI app serving ``predictor`` (a :class:`vitmsn.runtime.Predictor`, not closed here)."""
    manifest = predictor.manifest
    logits = next((o for o in manifest.outputs if o.name == "logits"), None)
    if logits is None:
        raise InputError(f"{manifest.root}: a {manifest.task} model has no logits; vitmsn serve answers /predict "
                         "with class labels and needs an image-classification export")
    metrics = ServerMetrics()
    most = max(1, min(int(logits.shape[-1]), MAX_TOP_K))
    metrics.model_info.labels(str(predictor.manifest.model.source or predictor.manifest.root),
                              predictor.backend, predictor.precision).set(1)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        batcher = predictor.batcher("predict", top_k=most, max_batch=options.max_batch,
                                    max_wait_ms=options.max_wait_ms, max_queue=options.max_queue)
        # The decode budget of this server (the predictor's own preprocess stays as the caller set it).
        batcher.prepare = dataclasses.replace(predictor.preprocess, max_decode_bytes=options.max_decode_bytes,
                                              max_file_bytes=options.max_body_bytes)
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

    # Requests whose body has arrived, between then and joining the batcher's queue (waiting for a
    # decoder). Bounded like the queue; requests still receiving their body are not counted (they
    # are bounded by the receive budget and the body timeout instead), so slow senders cannot take
    # the slots of complete requests.
    admitted = 0
    receiving = ReceiveBudget(options.max_receiving_bytes)

    def refusal() -> str | None:
        """Why a new request would be refused for load now, or None."""
        state = app.state
        if not getattr(state, "ready", False):
            return "the model is not loaded or the server is stopping"
        if admitted >= options.max_queue:
            return f"{admitted} requests are already waiting for a decoder"
        if state.batcher.queue_depth >= state.batcher.max_queue:
            return f"the micro-batcher's queue is full ({state.batcher.max_queue} requests waiting)"
        if receiving.held >= receiving.limit:
            return f"the receive budget ({receiving.limit} bytes of uploads in progress) is spent"
        return None

    async def predict(request: Request) -> Response:
        nonlocal admitted
        try:
            top_k = _top_k(request, options.top_k, most)
            if request.headers.get("content-type", "").lower().startswith("multipart/"):
                raise RequestError(400, "send the raw image bytes (Content-Type: image/*), not multipart/form-data; "
                                        "e.g. curl --data-binary @image.jpg -H 'Content-Type: image/jpeg' .../predict")
            body = await read_body(request, options.max_body_bytes, options.body_timeout_s, receiving)
            if admitted >= options.max_queue:
                raise RequestError(503, f"{admitted} requests are already waiting for a decoder; retry later",
                                   {"Retry-After": "1"})
            admitted += 1
            try:
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
        except (UploadStalled, UploadAborted) as exc:
            reason = "body_timeout" if isinstance(exc, UploadStalled) else "aborted"
            metrics.incomplete.labels(reason).inc()
            client = "%s:%s" % request.client if request.client else "client"
            log.warning("%s: %s (%d)", client, exc, exc.status)
            return error_response(exc.status, str(exc), exc.headers)
        except RequestError as exc:
            return error_response(exc.status, str(exc), exc.headers)
        except Exception as exc:  # an inference failure: this batch's requests get 500, the server keeps serving
            log.exception("inference failed")
            return error_response(500, f"inference failed: {type(exc).__name__}: {exc}")
        return JSONResponse({"predictions": [p.to_dict() for p in ranked[:top_k]]})

    async def healthz(request: Request) -> Response:
        why = refusal()
        if why is not None:
            status = "saturated" if getattr(request.app.state, "ready", False) else "unavailable"
            return JSONResponse({"status": status, "reason": why}, status_code=503, headers={"Retry-After": "1"})
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

    metrics: ServerMetrics | None = getattr(app.state, "metrics", None)

    def header_timed_out(partial: bool) -> None:
        if metrics is not None:
            metrics.incomplete.labels("header_timeout").inc()

    config = uvicorn.Config(app, lifespan="on", log_level=log_level, access_log=options.access_log,
                            timeout_graceful_shutdown=options.shutdown_timeout_s, server_header=False,
                            http=header_timeout_protocol(options.header_timeout_s, header_timed_out))
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
