"""``vitmsn serve ARTIFACTS --host H --port P``: HTTP serving with micro-batching.

A thin layer: load the Predictor (bad artifacts exit 2 before anything listens), bind the socket,
run :func:`vitmsn.serving.server.serve` until SIGTERM/SIGINT, release the model.
"""

from __future__ import annotations

import logging
import signal
import socket
from pathlib import Path

import click

from vitmsn.runtime.images.read import DEFAULT_MAX_DECODE_BYTES

from .common import artifacts_argument, handle_errors, need_artifacts, choice_notes


@click.command("serve")
@artifacts_argument()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="TCP port; 0 picks a free one (printed on startup).")
@click.option("--backend", type=click.Choice(["auto", "tensorrt", "onnxruntime", "openvino"]), default="auto", show_default=True)
@click.option("--precision", default=None, help="fp32, fp16, bf16 or int8 [default: chosen for this machine].")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime intra-op threads.")
@click.option("--draft", is_flag=True, help="Faster, inexact JPEG decoding (libjpeg DCT scaling to at least the model's input size): about 35% less preprocessing time, pixels no longer match transformers to 1e-5 (see README, measured speed).")
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True,
              help="Predictions per image unless a request asks for ?top_k=K.")
@click.option("--max-batch", type=click.IntRange(min=1), default=None,
              help="Images per inference batch [default: the export's optimal batch].")
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="How long a batch waits to fill after its first image.")
@click.option("--max-queue", type=click.IntRange(min=1), default=64, show_default=True,
              help="Images waiting for a batch (and requests being received) before requests get 503.")
@click.option("--max-body-bytes", type=click.IntRange(min=1), default=10 * 1024 * 1024, show_default=True,
              help="Largest request body (413 above).")
@click.option("--request-timeout", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              help="Seconds a request may wait for its result (504 after).")
@click.option("--shutdown-timeout", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Seconds in-flight requests get to finish after SIGTERM/SIGINT.")
@click.option("--decode-threads", type=click.IntRange(min=1), default=None,
              help="Threads decoding request images [default: half the CPU cores].")
@click.option("--header-timeout", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="Seconds a connection gets to send a request's line and headers (408 and closed after).")
@click.option("--body-timeout", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              help="Seconds a request gets to send its whole body once its headers arrived (408 after); "
                   "also bounds how long a stalled upload can hold a SIGTERM shutdown.")
@click.option("--max-receiving-bytes", type=click.IntRange(min=1), default=256 * 1024 * 1024, show_default=True,
              help="Bytes of request bodies still arriving, all uploads together (503 above).")
@click.option("--max-decode-mb", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_MAX_DECODE_BYTES / 2**20,
              show_default=True, help="Decode budget per image in MiB: width x height x bands x bytes per sample, "
              "read from the header; larger images get 400 before any pixel is decoded.")
@click.option("--access-log", is_flag=True, help="Log every request.")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info",
              show_default=True)
@click.option("-v", "--verbose", is_flag=True, help="Also print the notes on what was not used and why (engines, flavours).")
@handle_errors
def command(artifacts: Path | None, host: str, port: int, backend: str, precision: str | None, threads: int | None,
            draft: bool, top_k: int, max_batch: int | None, max_wait_ms: float, max_queue: int, max_body_bytes: int,
            request_timeout: float, shutdown_timeout: float, decode_threads: int | None, header_timeout: float,
            body_timeout: float, max_receiving_bytes: int, max_decode_mb: float, access_log: bool,
            log_level: str, verbose: bool) -> None:
    """Serve ARTIFACTS over HTTP: POST /predict (image bytes in, JSON out), GET /healthz, GET /metrics.

    Stops gracefully on SIGTERM or Ctrl-C: in-flight requests are answered first (a stalled upload
    gets 408 at --body-timeout). Exit codes:
    0 stopped normally; 2 bad usage or input (artifacts, address).
    """
    artifacts = need_artifacts(artifacts)
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    from vitmsn.runtime import Predictor
    from vitmsn.serving.server import ServeOptions, bind_socket, create_app, serve

    options = ServeOptions(top_k=top_k, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
                           max_body_bytes=max_body_bytes, request_timeout_s=request_timeout,
                           shutdown_timeout_s=shutdown_timeout, decode_threads=decode_threads,
                           access_log=access_log, header_timeout_s=header_timeout, body_timeout_s=body_timeout,
                           max_receiving_bytes=max_receiving_bytes, max_decode_bytes=int(max_decode_mb * 2**20))
    with Predictor.from_artifacts(artifacts, backend=backend, precision=precision and precision.lower(),
                                  threads=threads, draft=draft) as predictor:
        for note in choice_notes(predictor.choice, verbose, backend != "auto" or bool(precision)):
            click.echo(f"note: {note}", err=True)  # e.g. an engine that cannot start here
        sock = bind_socket(host, port)
        bound_host, bound_port = sock.getsockname()[:2]
        url = f"http://{f'[{bound_host}]' if sock.family == socket.AF_INET6 else bound_host}:{bound_port}"

        def ready() -> None:
            click.echo(f"vitmsn serve: listening on {url} ({predictor.describe()}); "
                       "POST /predict, GET /healthz, GET /metrics", err=False)

        received = serve(create_app(predictor, options), sock, options, log_level=log_level, on_ready=ready)
    names = ", ".join(signal.Signals(s).name for s in received) or "server exit"
    click.echo(f"vitmsn serve: stopped ({names}); in-flight requests were answered")
