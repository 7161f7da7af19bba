"""`vitmsn serve`: a real server on 127.0.0.1 (ephemeral port), real JPEG/PNG bodies, faults mixed in.

Bounded: one load run of ~220 requests from 20 concurrent clients, a graceful-shutdown run with
12 requests in flight, and in-process (TestClient) checks of overload and inference failures.
Answers are compared with the in-process Predictor on the same model and bytes. No timing is
asserted (throughput is measured by benchmarks/serve_throughput.py).
"""

from __future__ import annotations

import asyncio
import io
import random
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from vitmsn.runtime import Predictor
from vitmsn.serving.server import ServeOptions, create_app

from serving_fixtures import ServerProcess, serve_process  # noqa: F401  (fixture)

CLIENTS = 20
BODY_LIMIT = 1_000_000
TOP_K = 3


def _images(folder: Path, count: int) -> list[tuple[str, bytes]]:
    """``count`` held-out images as (name, bytes): nine JPEGs to one PNG."""
    jpegs, pngs = sorted(folder.glob("*/*.jpg")), sorted(folder.glob("*/*.png"))
    paths = jpegs[: count - count // 10] + pngs[: count // 10]
    assert len(paths) == count
    return [(p.name, p.read_bytes()) for p in paths]


@pytest.fixture(scope="module")
def reference(demo_artifacts: Path, heldout_images: Path) -> dict[str, Any]:
    """The held-out images and the in-process Predictor's answers for them (same model, same bytes)."""
    images = _images(heldout_images, 100)
    with Predictor.from_artifacts(demo_artifacts, backend="onnxruntime", precision="fp32") as predictor:
        answers = predictor.predict([b for _, b in images], top_k=TOP_K)
    return {"images": images, "answers": {name: [p.to_dict() for p in a] for (name, _), a in zip(images, answers)}}


def _assert_same(got: list[dict[str, Any]], want: list[dict[str, Any]], name: str) -> None:
    assert [(p["label"], p["index"]) for p in got] == [(p["label"], p["index"]) for p in want], name
    np.testing.assert_allclose([p["score"] for p in got], [p["score"] for p in want], atol=1e-5, err_msg=name)


def _metrics(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _bomb_png() -> bytes:
    """A 8200x8200 PNG (67 megapixels, over the 64 MP decode limit) that compresses to ~70 KB."""
    buf = io.BytesIO()
    Image.new("1", (8200, 8200)).save(buf, format="PNG")
    return buf.getvalue()


def _bad_requests(good: bytes) -> list[dict[str, Any]]:
    """Malformed requests and the status each must get."""
    rng = random.Random(7)
    junk = bytes(rng.getrandbits(8) for _ in range(2048))
    return [
        {"kind": "empty", "content": b"", "status": 400},
        {"kind": "random bytes", "content": junk, "status": 400},
        {"kind": "truncated jpeg", "content": good[: len(good) // 2], "status": 400},
        {"kind": "text", "content": b"hello, this is not an image", "status": 400},
        {"kind": "json", "content": b'{"image": "aGVsbG8="}', "status": 400},
        {"kind": "png header only", "content": b"\x89PNG\r\n\x1a\n" + junk[:64], "status": 400},
        {"kind": "oversized", "content": good + b"\0" * BODY_LIMIT, "status": 413},
        {"kind": "bad top_k", "content": good, "params": {"top_k": "zero"}, "status": 400},
        {"kind": "top_k too big", "content": good, "params": {"top_k": "1000"}, "status": 400},
        {"kind": "wrong method", "method": "GET", "status": 405},
        {"kind": "unknown path", "path": "/v1/predict", "content": good, "status": 404},
    ]


async def _fire(url: str, requests: list[dict[str, Any]], clients: int) -> list[tuple[dict[str, Any], int, Any]]:
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for r in requests:
        queue.put_nowait(r)
    results: list[tuple[dict[str, Any], int, Any]] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        async def worker() -> None:
            while not queue.empty():
                r = queue.get_nowait()
                response = await client.request(r.get("method", "POST"), r.get("path", "/predict"),
                                                 content=r.get("content"), params=r.get("params"),
                                                 headers={"Content-Type": "application/octet-stream"})
                results.append((r, response.status_code, response.json()))

        await asyncio.gather(*(worker() for _ in range(clients)))
    return results


def test_load_with_faults(demo_artifacts: Path, reference: dict[str, Any], serve_process: type[ServerProcess]) -> None:
    server = serve_process([str(demo_artifacts), "--backend", "onnxruntime", "--precision", "fp32", "--top-k", str(TOP_K),
                            "--max-batch", "8", "--max-wait-ms", "10", "--max-queue", "256",
                            "--max-body-bytes", str(BODY_LIMIT)])
    images = reference["images"]
    good = [{"kind": "good", "name": n, "content": b} for n, b in images] * 2  # 200 good requests
    bad = _bad_requests(images[0][1]) * 2 + [{"kind": "bomb", "content": _bomb_png(), "status": 400}]
    requests = good + bad
    random.Random(0).shuffle(requests)
    results = asyncio.run(_fire(server.url, requests, CLIENTS))

    assert len(results) == len(requests)  # nothing lost
    for r, status, body in results:
        if r["kind"] == "good":
            assert status == 200, (r["name"], body)
            _assert_same(body["predictions"], reference["answers"][r["name"]], r["name"])
        else:
            assert status == r["status"], (r["kind"], status, body)
            assert isinstance(body.get("error"), str) and body["error"], r["kind"]
    bomb = next(body for r, _, body in results if r["kind"] == "bomb")
    assert "megapixels" in bomb["error"]

    health = httpx.get(f"{server.url}/healthz", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    after = httpx.post(f"{server.url}/predict", content=images[5][1], timeout=30)  # still serving correctly
    _assert_same(after.json()["predictions"], reference["answers"][images[5][0]], "after")

    m = _metrics(server.url)
    def requests_total(method: str, path: str, status: int) -> float:
        return m.get(("vitmsn_http_requests_total", (("method", method), ("path", path), ("status", str(status)))), 0.0)
    n_good = len(good) + 1
    assert requests_total("POST", "/predict", 200) == n_good
    assert requests_total("POST", "/predict", 400) == sum(r.get("status") == 400 for r in bad)
    assert requests_total("POST", "/predict", 413) == 2 and requests_total("GET", "/predict", 405) == 2
    assert requests_total("POST", "other", 404) == 2
    assert m[("vitmsn_batch_size_sum", ())] == n_good  # every good image was inferred exactly once
    assert m[("vitmsn_batch_size_count", ())] < n_good  # ... in batches of more than one
    assert m[("vitmsn_http_request_duration_seconds_count", (("path", "/predict"),))] == len(requests) - 2 + 1
    assert m[("vitmsn_queue_depth", ())] == 0

    code, output = server.stop()
    assert code == 0 and "stopped (SIGTERM)" in output, output


def test_huge_declared_body_is_refused_without_reading_it(demo_artifacts: Path,
                                                          serve_process: type[ServerProcess]) -> None:
    server = serve_process([str(demo_artifacts), "--backend", "onnxruntime", "--max-body-bytes", "1000"])
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):  # the server answers, then closes the connection
            data += chunk
    reply = data.decode()
    assert reply.startswith("HTTP/1.1 413") and '"error"' in reply, reply
    assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200


def test_graceful_shutdown_answers_in_flight(demo_artifacts: Path, reference: dict[str, Any],
                                             serve_process: type[ServerProcess]) -> None:
    # A long batch window holds 12 requests in flight while SIGTERM arrives.
    server = serve_process([str(demo_artifacts), "--backend", "onnxruntime", "--top-k", str(TOP_K),
                            "--max-batch", "32", "--max-wait-ms", "4000"])
    images = reference["images"][:12]
    done: list[tuple[str, int, Any, float]] = []

    def client(name: str, content: bytes) -> None:
        r = httpx.post(f"{server.url}/predict", content=content, timeout=60)
        done.append((name, r.status_code, r.json(), time.monotonic()))

    threads = [threading.Thread(target=client, args=image) for image in images]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while _metrics(server.url)[("vitmsn_http_requests_in_flight", ())] < len(images) + 1:  # +1: this /metrics
        assert time.monotonic() < deadline, "requests did not arrive"
        time.sleep(0.02)
    sigterm_at = time.monotonic()
    code, output = server.stop()
    for t in threads:
        t.join(30)
    assert code == 0 and "stopped (SIGTERM)" in output, output
    assert "note: fp32 on CPU: using model.fp32.ort.onnx" in output  # the runtime's choice is said, as predict says it
    assert len(done) == len(images)
    for name, status, body, at in done:
        assert status == 200 and at > sigterm_at, (name, status, body)
        _assert_same(body["predictions"], reference["answers"][name], name)


# ---- in-process (Starlette TestClient on the same app): overload and inference failure ----------
def test_queue_full_is_503_and_a_failed_batch_is_500(demo_artifacts: Path, reference: dict[str, Any]) -> None:
    name, content = reference["images"][0]
    with Predictor.from_artifacts(demo_artifacts, backend="onnxruntime") as predictor:
        app = create_app(predictor, ServeOptions(top_k=TOP_K, max_batch=1, max_wait_ms=0, max_queue=1))
        with TestClient(app) as client:
            batcher = app.state.batcher
            run, gate, entered = batcher.run_batch, threading.Event(), threading.Event()

            def held(x: Any) -> Any:  # the worker blocks in its batch until the test releases it
                entered.set()
                assert gate.wait(30)
                return run(x)

            batcher.run_batch = held
            statuses: list[int] = []
            first = threading.Thread(target=lambda: statuses.append(client.post("/predict", content=content).status_code))
            first.start()
            assert entered.wait(30)  # request 1 is in the worker's batch
            second = threading.Thread(target=lambda: statuses.append(client.post("/predict", content=content).status_code))
            second.start()
            deadline = time.monotonic() + 30
            while batcher.queue_depth < 1:  # request 2 waits in the (full) queue
                assert time.monotonic() < deadline
                time.sleep(0.01)
            health = client.get("/healthz")  # not ready while the queue cannot take another image
            assert health.status_code == 503 and "queue is full" in health.json()["reason"], health.text
            refused = client.post("/predict", content=content)
            assert refused.status_code == 503 and "queue is full" in refused.json()["error"]
            assert refused.headers["retry-after"] == "1"
            gate.set()
            first.join(30)
            second.join(30)
            assert statuses == [200, 200]

            def broken(x: Any) -> Any:
                raise RuntimeError("device lost")

            batcher.run_batch = broken
            failed = client.post("/predict", content=content)
            assert failed.status_code == 500 and "device lost" in failed.json()["error"]
            batcher.run_batch = run
            ok = client.post("/predict", content=content)
            assert ok.status_code == 200
            _assert_same(ok.json()["predictions"], reference["answers"][name], name)
            assert client.get("/healthz").status_code == 200


def test_bad_usage_exits_2(demo_artifacts: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from vitmsn.cli import group

    missing = CliRunner().invoke(group, ["serve", str(tmp_path / "nope"), "--port", "0"])
    assert missing.exit_code == 2 and "not an artifacts directory" in missing.output, missing.output
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = CliRunner().invoke(group, ["serve", str(demo_artifacts), "--backend", "onnxruntime", "--port", str(port)])
    assert taken.exit_code == 2 and f"--port {port}: cannot listen there" in taken.output, taken.output
