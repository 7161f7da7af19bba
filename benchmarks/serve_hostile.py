"""`vitmsn serve` under hostile clients: peak memory and the latency of good requests.

Starts a real server on 127.0.0.1 for each scenario and reports:

* ``bombs``: the server's peak RSS (``VmHWM`` of /proc/PID/status, the kernel's high-water mark)
  while four 8000x8000 16-bit PNGs (124 KB each, 122 MiB of raster each) and a body declaring
  1 GB (really sent, 1 MiB at a time, until the server closes) arrive at once. Run with the
  default decode budget (the PNGs are refused from their header) and with the budget raised to
  130 MiB (they are decoded), to show what the budget saves. Target: < 600 MB.
* ``stalled``: latency of sequential good requests (a real JPEG) with no other client, then with
  70 uploads open that announced a body and stalled (interleaved rounds, same server).

    python benchmarks/serve_hostile.py ARTIFACTS [--rounds 3] [--requests 20] [--json out.json]

Figures from one shared 2-core machine are noisy; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image


class Server:
    def __init__(self, artifacts: Path, *extra: str) -> None:
        command = [sys.executable, "-c", "from vitmsn.cli import main; main()", "serve", str(artifacts),
                   "--backend", "onnxruntime", "--host", "127.0.0.1", "--port", "0", "--log-level", "error", *extra]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.url = ""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
            if match:
                self.url = match.group(1)
                break
        if not self.url:
            raise SystemExit("vitmsn serve did not start")
        threading.Thread(target=lambda: [None for _ in self.proc.stdout or ()], daemon=True).start()
        host, port = self.url.removeprefix("http://").split(":")
        self.address = (host, int(port))

    def rss_mb(self, field: str) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(rf"{field}:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _png16() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8000, 8000), dtype=np.uint16)).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _huge_upload(address: tuple[str, int], declared: int) -> str:
    """Declare ``declared`` bytes and send them until the server answers or closes."""
    with socket.create_connection(address, timeout=60) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % declared)
        block, sent = b"\0" * (1 << 20), 0
        try:
            while sent < declared:
                sock.sendall(block)
                sent += len(block)
        except OSError:
            pass
        try:
            return sock.recv(200).decode("latin-1").split("\r\n")[0] + f" after {sent >> 20} MiB sent"
        except OSError as exc:
            return f"connection closed ({exc.strerror}) after {sent >> 20} MiB sent"


def bombs(artifacts: Path, decode_mb: float | None) -> dict[str, Any]:
    extra = ["--max-decode-mb", str(decode_mb)] if decode_mb else []
    server = Server(artifacts, *extra)
    try:
        baseline = server.rss_mb("VmRSS")
        png = _png16()
        results: list[str] = []

        def post_png() -> None:
            r = httpx.post(f"{server.url}/predict", content=png, timeout=120)
            results.append(f"{r.status_code}")

        threads = [threading.Thread(target=post_png) for _ in range(4)]
        threads.append(threading.Thread(target=lambda: results.append(_huge_upload(server.address, 10**9))))
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        return {"decode_budget_mb": decode_mb or "default (96)", "png_bytes": len(png), "baseline_rss_mb": round(baseline),
                "peak_rss_mb": round(server.rss_mb("VmHWM")), "answers": sorted(results)}
    finally:
        server.stop()


def _latencies(url: str, body: bytes, count: int) -> list[float]:
    out = []
    with httpx.Client(timeout=30) as client:
        for _ in range(count):
            start = time.perf_counter()
            r = client.post(f"{url}/predict", content=body)
            out.append(time.perf_counter() - start)
            assert r.status_code == 200, r.text
    return out


def stalled(artifacts: Path, rounds: int, requests: int, stalled_count: int = 70) -> dict[str, Any]:
    server = Server(artifacts, "--body-timeout", "600", "--header-timeout", "600")
    body = _jpeg()
    quiet: list[float] = []
    attacked: list[float] = []
    try:
        _latencies(server.url, body, 5)  # warm-up
        for _ in range(rounds):
            quiet += _latencies(server.url, body, requests)
            socks = []
            for _ in range(stalled_count):
                s = socket.create_connection(server.address, timeout=30)
                s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + body[:100])
                socks.append(s)
            time.sleep(0.5)  # let the server parse every head
            attacked += _latencies(server.url, body, requests)
            for s in socks:
                s.close()
            time.sleep(0.5)
        peak = server.rss_mb("VmHWM")
    finally:
        server.stop()

    def summary(xs: list[float]) -> dict[str, float]:
        xs = sorted(xs)
        return {"n": len(xs), "median_ms": round(1000 * statistics.median(xs), 1),
                "p90_ms": round(1000 * xs[int(0.9 * (len(xs) - 1))], 1), "max_ms": round(1000 * xs[-1], 1)}

    return {"stalled_uploads": stalled_count, "quiet": summary(quiet), "under_attack": summary(attacked),
            "peak_rss_mb": round(peak)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifacts", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=20, help="good requests per round and condition")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    report = {"bombs": [bombs(args.artifacts, None), bombs(args.artifacts, 130)],
              "stalled": stalled(args.artifacts, args.rounds, args.requests)}
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
