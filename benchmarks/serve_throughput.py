"""`vitmsn serve` throughput against the in-process Predictor on the same model and images.

    python benchmarks/serve_throughput.py [--artifacts DIR] [--requests 400] [--concurrency 16] [--out FILE.md]

In-process: ``Predictor.predict(all JPEG bytes)`` in batches of ``--max-batch`` (decode and
preprocessing of the next batch overlap inference, the runtime's best case). Server: ``vitmsn
serve`` in a subprocess on 127.0.0.1, ``--concurrency`` HTTP clients (httpx, asyncio) each POSTing
one JPEG per request; throughput is requests answered per second of wall time. Both paths run
the same images, backend, precision, batch size and threads, in interleaved rounds (in-process,
server, in-process, ...) so that load from other processes lands on both alike; the ratio is the
median of the per-round ratios. The load generator shares this machine's cores with the server,
which the in-process path does not pay: the ratio is a conservative one.

Without ``--artifacts`` the demo checkpoint is exported (FP32) into a temporary directory; without
``--images`` the demo's held-out shapes are rendered as JPEGs. Every server answer is checked
against the in-process top-1. Prints Markdown (and writes it with ``--out``); with ``--min-ratio``
exits 1 when server/in-process throughput is below it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import httpx
import numpy as np


def _artifacts(tmp: Path) -> Path:
    from vitmsn.export.pipeline import ExportOptions, run_export

    out = tmp / "demo"
    run_export(ExportOptions(model="demo", out=out, engine="skip"))
    return out


def _images(folder: Path | None, tmp: Path, count: int) -> list[bytes]:
    if folder is None:
        from vitmsn.export.demo import LABELS, write_dataset

        folder = tmp / "images"
        write_dataset(folder, per_class=-(-count // len(LABELS)), split="heldout", formats=("jpg",))
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    if not paths:
        raise SystemExit(f"{folder}: no JPEG files")
    return [paths[i % len(paths)].read_bytes() for i in range(count)]


def _start_server(artifacts: Path, args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-c", "from vitmsn.cli import main; main()", "serve", str(artifacts), "--host", "127.0.0.1",
               "--port", "0", "--backend", "onnxruntime", "--precision", "fp32", "--max-batch", str(args.max_batch),
               "--max-wait-ms", str(args.max_wait_ms), "--max-queue", str(max(64, 2 * args.concurrency)),
               "--log-level", "warning"] + (["--threads", str(args.threads)] if args.threads else []) \
        + (["--decode-threads", str(args.decode_threads)] if args.decode_threads else [])
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        match = re.search(r"listening on (http://\S+)", line)
        if match:
            return proc, match.group(1)
    raise SystemExit("vitmsn serve did not start: " + (proc.stdout.read() or ""))


async def _server_round(url: str, bodies: list[bytes], concurrency: int) -> tuple[float, list[float], list[str]]:
    """(images/s, per-request latencies in ms, top-1 labels in input order)."""
    top1: list[str] = [""] * len(bodies)
    latencies: list[float] = []
    next_index = iter(range(len(bodies)))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def worker() -> None:
            for i in next_index:
                start = time.perf_counter()
                r = await client.post("/predict", content=bodies[i], params={"top_k": 1})
                latencies.append((time.perf_counter() - start) * 1000)
                r.raise_for_status()
                top1[i] = r.json()["predictions"][0]["label"]

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return len(bodies) / wall, latencies, top1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, help="artifacts directory [default: export the demo]")
    parser.add_argument("--images", type=Path, help="folder of JPEGs [default: render the demo's held-out shapes]")
    parser.add_argument("--requests", type=int, default=400, help="images per round and path")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent HTTP clients")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (both paths)")
    parser.add_argument("--decode-threads", type=int, help="the server's image-decoding threads [default: its own]")
    parser.add_argument("--min-ratio", type=float, default=0.0, help="exit 1 when server/in-process is below this")
    parser.add_argument("--out", type=Path, help="also write the Markdown here")
    args = parser.parse_args()

    from vitmsn.runtime import Predictor

    with tempfile.TemporaryDirectory(prefix="vitmsn-serve-bench-") as tmp_name:
        tmp = Path(tmp_name)
        artifacts = args.artifacts or _artifacts(tmp)
        bodies = _images(args.images, tmp, args.requests)
        predictor = Predictor.from_artifacts(artifacts, backend="onnxruntime", precision="fp32",
                                             batch_size=args.max_batch, threads=args.threads)
        proc, url = _start_server(artifacts, args)
        try:
            expected = [p[0].label for p in predictor.predict(bodies, top_k=1)]  # also the in-process warm-up
            asyncio.run(_server_round(url, bodies[: 4 * args.concurrency], args.concurrency))  # server warm-up
            local, remote, latencies, mismatches = [], [], [], 0
            for _ in range(args.rounds):
                start = time.perf_counter()
                predictor.predict(bodies, top_k=1)
                local.append(len(bodies) / (time.perf_counter() - start))
                rate, lat, top1 = asyncio.run(_server_round(url, bodies, args.concurrency))
                remote.append(rate)
                latencies += lat
                mismatches += sum(a != b for a, b in zip(top1, expected))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=60)
            predictor.close()
        describe = predictor.describe()

    # Each server round runs right after an in-process round: the median of those paired ratios is
    # steadier than the ratio of the medians when other load on the machine comes and goes.
    pairs = [server / inproc for server, inproc in zip(remote, local)]
    ratio = median(pairs)
    lat = np.asarray(latencies)
    lines = [
        "## vitmsn serve vs in-process Predictor",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        f"- model: {artifacts} ({describe}), {args.requests} JPEGs per round, {args.rounds} interleaved rounds",
        f"- batching: max batch {args.max_batch}, max wait {args.max_wait_ms:g} ms; server clients: {args.concurrency} "
        "concurrent HTTP/1.1 keep-alive connections on 127.0.0.1",
        "",
        "| path | throughput (img/s, median of rounds) | rounds | latency p50 / p90 / p99 (ms) |",
        "|---|---:|---|---|",
        f"| in-process `Predictor.predict` (batches of {args.max_batch}) | {median(local):.1f} | "
        f"{', '.join(f'{x:.1f}' for x in local)} | - |",
        f"| `vitmsn serve` over HTTP | {median(remote):.1f} | {', '.join(f'{x:.1f}' for x in remote)} | "
        f"{np.percentile(lat, 50):.0f} / {np.percentile(lat, 90):.0f} / {np.percentile(lat, 99):.0f} |",
        "",
        f"**server / in-process throughput: {ratio:.2f}x** (median of the per-round ratios "
        f"{', '.join(f'{x:.2f}' for x in pairs)}; target >= 0.8x); ratio of the medians "
        f"{median(remote) / median(local):.2f}x; top-1 disagreements with in-process: {mismatches} of "
        f"{args.rounds * len(bodies)}",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    if mismatches or ratio < args.min_ratio:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
